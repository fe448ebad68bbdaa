"""One registry mechanism for every plugin kind: transform, source, algorithm, backend, verifier, callback."""

from __future__ import annotations

import difflib
from importlib import metadata
from typing import Any, Callable

from evsys_build.errors import UnknownKindError

ENTRY_POINT_GROUP = "evsys.plugins"


class Registry:
    """A name -> class/function dict for one plugin kind, with did-you-mean lookups."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator: `@transforms.register("strip_pii")`. Re-registering a name replaces it."""

        def decorate(obj: Any) -> Any:
            self._items[name] = obj
            return obj

        return decorate

    def get(self, name: str, where: str = "") -> Any:
        """Look a name up; unknown names raise with the known ones and a did-you-mean."""
        if name not in self._items:
            load_entry_point_plugins()
        if name in self._items:
            return self._items[name]
        known = sorted(self._items)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        prefix = f"{where}: " if where else ""
        raise UnknownKindError(
            f"{prefix}unknown {self.kind} kind {name!r}{hint}; known: {', '.join(known) or 'none'}"
        )

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


transforms = Registry("transform")
sources = Registry("source")
algorithms = Registry("algorithm")
backends = Registry("backend")
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
