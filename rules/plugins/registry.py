"""One registry mechanism for every plugin kind: transform, source, algorithm, backend, verifier, callback."""

from __future__ import annotations

import difflib
import importlib
import inspect
from importlib import metadata
from typing import Any, Callable

from evsys_build.errors import PluginError, UnknownKindError

from ..backends.base import Backend

ENTRY_POINT_GROUP = "evsys.plugins"


class Registry:
    """A name -> class/function dict for one plugin kind, with did-you-mean lookups.

    With a `protocol` (a typing.Protocol), a registered class is checked against it at once:
    a backend missing a method fails when its module is imported, not halfway through a build.
    """

    def __init__(self, kind: str, protocol: type | None = None):
        self.kind = kind
        self.protocol = protocol
        self._items: dict[str, Any] = {}
        self._providers: dict[str, str] = {}  # built-in name -> the module that registers it (provide)

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator: `@transforms.register("strip_pii")`. Re-registering a name replaces it,
        except that a built-in kind's module, imported after a plugin took its name (see
        `provide`), leaves the plugin's in place, as if it had been imported first."""

        def decorate(obj: Any) -> Any:
            if self.protocol is not None:
                check_protocol(obj, self.protocol, f"{self.kind} {name!r}")
            if not self._taken_from_builtin(name, obj):
                self._items[name] = obj
            return obj

        return decorate

    def _taken_from_builtin(self, name: str, obj: Any) -> bool:
        """Whether `obj` is a provided built-in registering late, under a name a plugin took meanwhile."""
        provider, current = self._providers.get(name), self._items.get(name)
        if provider is None or getattr(obj, "__module__", None) != provider:
            return False
        return current is not None and not isinstance(current, _Provided) and getattr(current, "__module__", None) != provider

    def provide(self, name: str, module: str, attribute: str) -> None:
        """A built-in kind whose module is imported when the name is first looked up: `module`
        registers `module.attribute` under `name`. A config that never names the kind never pays
        for importing its module, nor the libraries that module reaches."""
        self._providers[name] = module
        self._items.setdefault(name, _Provided(module, attribute))

    def get(self, name: str, where: str = "") -> Any:
        """Look a name up; unknown names raise with the known ones and a did-you-mean."""
        if name not in self._items:
            load_entry_point_plugins()
        if name in self._items:
            item = self._items[name]
            if isinstance(item, _Provided):
                item = getattr(importlib.import_module(item.module), item.attribute)
                self._items[name] = item
            return item
        known = sorted(self._items)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        prefix = f"{where}: " if where else ""
        raise UnknownKindError(
            f"{prefix}unknown {self.kind} kind {name!r}{hint}; known: {', '.join(known) or 'none'}", self.kind, name
        )

    def names(self) -> list[str]:
        return sorted(self._items)

    def registered(self) -> list[Any]:
        """What is registered and imported, by name (a provided built-in not looked up yet is left out)."""
        return [self._items[n] for n in sorted(self._items) if not isinstance(self._items[n], _Provided)]

    def __contains__(self, name: str) -> bool:
        return name in self._items


class _Provided:
    """A built-in kind whose module is not imported yet (Registry.provide)."""

    def __init__(self, module: str, attribute: str):
        self.module, self.attribute = module, attribute


def check_protocol(obj: Any, protocol: type, what: str) -> None:
    """Raise a PluginError unless `obj` has every method of `protocol`, each accepting its parameters."""
    problems = []
    for attr, expected in _protocol_methods(protocol).items():
        impl = getattr(obj, attr, None)
        if not callable(impl):
            problems.append(f"no method {attr}({', '.join(expected)})")
            continue
        params = list(inspect.signature(impl).parameters.values())
        if params and params[0].name == "self":
            params = params[1:]
        if any(p.kind is p.VAR_KEYWORD for p in params):
            continue
        names = {p.name for p in params}
        missing = [p for p in expected if p not in names]
        if missing:
            problems.append(f"{attr}() does not take {', '.join(missing)}")
    if problems:
        where = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)}"
        raise PluginError(
            f"{what} ({where}) does not implement the {protocol.__name__} protocol: {'; '.join(problems)} "
            "(see docs/plugins.md)"
        )


def _protocol_methods(protocol: type) -> dict[str, list[str]]:
    """Method name -> parameter names (without self) of a typing.Protocol."""
    out = {}
    for attr, value in vars(protocol).items():
        if attr.startswith("_") or not inspect.isfunction(value):
            continue
        out[attr] = [p for p in inspect.signature(value).parameters if p != "self"]
    return out


transforms = Registry("transform")
sources = Registry("source")
algorithms = Registry("algorithm")
backends = Registry("backend", protocol=Backend)
verifiers = Registry("verifier")
callbacks = Registry("callback")

register_transform = transforms.register
register_source = sources.register
register_algorithm = algorithms.register
register_backend = backends.register
register_verifier = verifiers.register
register_callback = callbacks.register

_entry_points_loaded = False


def load_entry_point_plugins() -> None:
    """Import every module advertised in the `evsys.plugins` entry-point group, once."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        ep.load()
