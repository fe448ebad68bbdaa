"""Code identity: what a rule, transform, backend or verifier *runs*, as one digest.

The identity of a function or class is its normalized source (code_units.py), followed
transitively through what it uses in first-party code: helpers and classes of its own module and
of other first-party modules (the evsys packages, the plugin's own package, and any module that
is not installed under site-packages or the standard library), base classes, names imported at
module level or inside functions (modules too: `helpers.fn()`), decorated helpers (through
`__wrapped__`), `functools.partial` objects and instances of first-party classes (their class and
their state), and module-level constants. For a method keyed with its class (`owner`), `self.x`
and `cls.x` resolve against that class. A behaviour edit anywhere on that path changes the key;
a hand-set `version` on the class itself (never one it inherits) is the user's explicit override.

evsys's own modules are keyed whole: every module the walk enters contributes its entire
normalized text, so a private helper, a private constant or a table there is never missed.
Plugins are keyed per definition, so editing one transform does not rerun its neighbours.

Functions marked `@not_keyed` (loggers, progress) are observers: they never change results, so
editing them reruns nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
import inspect
import json
import os
import sys
import sysconfig
import time
import types
from pathlib import Path

import xxhash

from evsys_build.atomic import write_atomic
from evsys_build.errors import HashingError
from evsys_build.watch import unwatchable, watch

from .code_units import Binding, constant_text, file_stamp, module_bindings, module_statements, module_text, unit_of

EVSYS_PACKAGES = ("evsys_rules", "evsys_build", "evsys_sdk")
_STDLIB = tuple(str(Path(sysconfig.get_paths()[k]).resolve()) for k in ("stdlib", "platstdlib"))
_INSTALL_DIRS = {"site-packages", "dist-packages"}
_CHASE_DEPTH = 16  # re-exports followed through at most this many modules
_VALUE_DEPTH = 12  # nesting of a keyed value (containers, partials, instance state)


def not_keyed(fn):
    """Mark a function as an observer (logging, progress): code identities do not follow it."""
    fn.__evsys_not_keyed__ = True
    return fn


@functools.lru_cache(maxsize=None)
def library_versions(*names: str) -> dict[str, str | None]:
    """Installed versions of libraries whose behaviour shapes a node's output (a tokenizer
    library, torch): upgrading one reruns what it computes. Read from metadata, never imported."""
    out = {}
    for name in names:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
            continue
        out[name] = dist.version
        _watch_distribution(dist)
    return out


def _watch_distribution(dist) -> None:
    folder = getattr(dist, "_path", None)  # the .dist-info folder: an upgrade replaces it
    if folder is None:
        unwatchable(f"where {dist.metadata['Name']} is installed")
    else:
        watch(folder)


def code_identity(obj, owner: type | None = None) -> str:
    """`version:<v>` when the object (or, for a method, its `owner` class) declares one, else
    `source:<xxh3 of what it runs>`. Pass `owner` to key a method as that class runs it."""
    holder = owner if owner is not None else obj
    version = vars(holder).get("version") if isinstance(holder, type) else getattr(obj, "version", None)
    if version is not None:
        return f"version:{version}"
    return _source_identity(obj, owner)


def method_identity(cls: type, name: str) -> str:
    """The identity of `cls.name` as `cls` runs it (`self.helper()` resolves against `cls`)."""
    return code_identity(getattr(cls, name), owner=cls)


@functools.lru_cache(maxsize=None)
def _source_identity(obj, owner) -> str:
    key = _cache_key(obj, owner)
    found = _disk.get(key) if _disk is not None and key else None
    if found is not None:
        return found
    collector = _Collector(obj, owner)
    identity = "source:" + xxhash.xxh3_128_hexdigest(collector.text().encode())
    if _disk is not None and key:
        _disk.put(key, identity, collector.files())
    return identity


class IdentityCache:
    """Identities computed by earlier processes, each valid while every source file it was made
    of (every module whose source or namespace the walk read) has the same stat identity (a file
    changed in the last two seconds is never trusted, as git treats racy-clean files). Saves
    parsing the rules' modules on every `plan` and no-op build."""

    RACY_NS = 2_000_000_000

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict | None = None
        self.dirty = False

    def get(self, key: str) -> str | None:
        entry = self._load().get(key)
        if not entry or entry.get("python") != sys.version:
            return None
        for file, stamp in entry["files"].items():
            if _stamp(file) != stamp:
                return None
            watch(file)
        return entry["identity"]

    def put(self, key: str, identity: str, files: list[str]) -> None:
        for file in files:
            watch(file)
        stamps = {f: _stamp(f) for f in files}
        if any(s is None or time.time_ns() - s[1] < self.RACY_NS for s in stamps.values()):
            return
        self._load()[key] = {"identity": identity, "files": stamps, "python": sys.version}
        self.dirty = True

    def save(self) -> None:
        if self.dirty and self.entries is not None:
            write_atomic(self.path, json.dumps(self.entries).encode(), self.path.parent / "tmp")
            self.dirty = False

    def _load(self) -> dict:
        if self.entries is None:
            try:
                self.entries = json.loads(self.path.read_bytes())
            except (FileNotFoundError, ValueError):
                self.entries = {}
        return self.entries


_disk: IdentityCache | None = None


def use_identity_cache(cache: IdentityCache | None) -> None:
    """Let identities be read from (and written to) `cache` in this process (None: off)."""
    global _disk
    _disk = cache


def _cache_key(obj, owner) -> str | None:
    keys = [_object_key(obj)] + ([_object_key(owner)] if owner is not None else [])
    return "@".join(keys) if None not in keys else None


def _object_key(obj) -> str | None:
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    file = getattr(module, "__file__", None)
    qualname = getattr(obj, "__qualname__", "")
    return f"{file}::{qualname}" if file and "<locals>" not in qualname else None


def _stamp(file: str) -> list | None:
    try:
        st = os.stat(file)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


class _Collector:
    """Walks from `root` through everything first-party it uses, collecting normalized sources."""

    def __init__(self, root, owner: type | None = None):
        self.root = root
        self.owner = owner
        self.own_package = (getattr(root, "__module__", "") or "").split(".", 1)[0]
        self.parts: dict[tuple[str, str], str] = {}  # (module, qualname) -> normalized source (or a value's text)
        self.modules: dict[str, str | None] = {}  # first-party modules read -> whole text (evsys's own) or None
        self.queue = [root]

    def files(self) -> list[str]:
        """The source files of every module the walk read: the identity is valid while they are unchanged."""
        files = {getattr(sys.modules.get(name), "__file__", None) for name in self.modules}
        files |= {getattr(sys.modules.get(module), "__file__", None) for module, _ in self.parts}
        return sorted(f for f in files if f)

    def text(self) -> str:
        while self.queue:
            self._visit(self.queue.pop(0))
        # module names stay out of the plugin parts: a plugin loaded from a path gets a module name
        # made of that path, and moving a file must not change what it computes
        parts = [f"# {qualname}\n{source}" for (_, qualname), source in self.parts.items()]
        parts += [f"# module {name}\n{text}" for name, text in self.modules.items() if text is not None]
        return "\n".join(sorted(parts))

    def _visit(self, obj) -> None:
        name = (getattr(obj, "__module__", "?"), getattr(obj, "__qualname__", repr(obj)))
        if name in self.parts or getattr(obj, "__evsys_not_keyed__", False):
            return
        unit = unit_of(obj, obj is self.root)
        if unit is None:
            self.parts[name] = "<no source>"
            return
        module = sys.modules.get(getattr(obj, "__module__", "") or "")
        self.parts[name] = "(in the module's text)" if _in_evsys(obj) else unit.text
        self._read_module(module)
        if isinstance(obj, type):
            self.queue += [base for base in obj.__mro__[1:] if self._first_party(base)]
        local = {}
        for binding in unit.imports:  # imports inside the definition: what they import is used
            value = self._import(binding, module)
            if value is not None:
                local[binding.alias] = value
                self._take_resolved(value, (binding.module, binding.attr or binding.alias), obj)
        for used in unit.names:
            self._follow(used, module, obj, local)

    def _follow(self, dotted: str, module, user, local: dict) -> None:
        """A dotted name the source reads, resolved in its local imports or its module's globals,
        then through first-party modules along the chain."""
        head, *rest = dotted.split(".")
        if head in ("self", "cls") and self._owns(user):
            if rest:
                self._follow_owner(rest[0], user)
            return
        if head in local:
            value, where = local[head], None
        elif module is not None and head in vars(module):
            value, where = vars(module)[head], module
            if getattr(value, "__evsys_not_keyed__", False):
                return  # an observer: neither it nor the module it comes from is part of the key
            self._chase(module, head)
        else:
            return
        name = ((where or value).__name__ if isinstance(where or value, types.ModuleType) else "?", head)
        for attr in rest:
            if not isinstance(value, types.ModuleType):
                break
            if not self._first_party(value) or not hasattr(value, attr):
                return
            self._read_module(value)
            self._chase(value, attr)
            name, value = (value.__name__, attr), getattr(value, attr)
        self._take_resolved(value, name, user)

    def _owns(self, fn) -> bool:
        """Whether `fn` is defined on the owner class or one of its bases (so `self` is an owner)."""
        if self.owner is None or isinstance(fn, type):
            return False
        cls_name = (getattr(fn, "__qualname__", "") or "").rpartition(".")[0]
        return any(c.__qualname__ == cls_name and c.__module__ == fn.__module__ for c in self.owner.__mro__)

    def _follow_owner(self, attr: str, user) -> None:
        """`self.attr` / `cls.attr` in a method keyed with its class: the class attribute it reads."""
        try:
            value = inspect.getattr_static(self.owner, attr)
        except AttributeError:
            return  # an instance attribute: set by code that is followed already
        self._take_resolved(value, (self.owner.__module__, f"{self.owner.__qualname__}.{attr}"), self.owner)

    def _chase(self, module, name: str) -> None:
        """Where a module got `name` by importing it (re-exports included): those modules are read
        too, so an edit there invalidates a cached identity."""
        for _ in range(_CHASE_DEPTH):
            if not self._first_party(module) or not getattr(module, "__file__", None):
                return
            stamp = file_stamp(module.__file__)
            binding = module_bindings(module.__file__, stamp).get(name) if stamp else None
            if binding is None:
                return
            source = sys.modules.get(binding.absolute(module.__package__ or ""))
            if source is None or not self._first_party(source):
                return
            self._read_module(source)
            if binding.attr is None:
                return
            module, name = source, binding.attr

    def _import(self, binding: Binding, module):
        """The value an import inside a definition binds, when it is first-party (a library like
        torch is never imported just to key a node: that would defeat importing it lazily)."""
        package = getattr(module, "__package__", None) or ""
        name = binding.absolute(package)
        target = sys.modules.get(name)
        if target is None:
            if name.split(".", 1)[0] not in (*EVSYS_PACKAGES, self.own_package):
                return None
            try:
                target = importlib.import_module(name)
            except ImportError:
                return None
        if not self._first_party(target):
            return None
        self._read_module(target)
        if binding.attr is None:
            return target
        value = getattr(target, binding.attr, None)
        if value is None:
            value = sys.modules.get(f"{name}.{binding.attr}")
        self._chase(target, binding.attr)
        return value

    def _take_resolved(self, value, name: tuple[str, str], user) -> None:
        if isinstance(value, types.ModuleType):
            if self._first_party(value):
                self._read_module(value)
            return
        self._take(value, name, user)

    def _take(self, value, name: tuple[str, str], user) -> None:
        """A value the source reads: code is followed, a plugin's data is keyed by its text."""
        value = _unwrapped(value)
        if _in_evsys(user):
            # evsys's own data is in its modules' whole texts, and the names their statements use
            # are followed; a value set at run time (a cache, a class made on first use) is state
            # that must not make an identity depend on what this process did before
            if isinstance(value, (types.FunctionType, type)) and self._first_party(value) and "<locals>" not in value.__qualname__:
                self.queue.append(value)
            return
        if isinstance(value, (types.FunctionType, type)):
            if self._first_party(value):
                self.queue.append(value)
            return
        text = self._keyed_text(value, 0)
        if text is not None:
            self.parts.setdefault(name, text)
            return
        if callable(value) and not self._first_party(type(value)):
            return  # a library's callable object is not followed
        raise HashingError(
            f"{_qualified(user)} uses the module global {name[1]!r} "
            f"({type(value).__name__}), whose value evsys cannot hash; give the plugin an explicit "
            "`version = \"1\"` and bump it when that value changes"
        )

    def _keyed_text(self, value, depth: int) -> str | None:
        """A stable text for a value a plugin reads (None: it cannot be keyed). The code inside it is
        followed: functions, `partial`s, bound methods, and instances of first-party classes (their
        class, and their state as text)."""
        if depth > _VALUE_DEPTH:
            return None
        inner = functools.partial(self._keyed_text, depth=depth + 1)
        value = _unwrapped(value)
        if isinstance(value, (types.FunctionType, type)):
            if self._first_party(value):
                self.queue.append(value)
                return f"<{value.__qualname__}>"
            return f"<{getattr(value, '__module__', '?')}.{value.__qualname__}>"
        if isinstance(value, functools.partial):
            items = [inner(v) for v in (value.func, *value.args, *value.keywords.values())]
            if None in items:
                return None
            positional, named = items[: 1 + len(value.args)], items[1 + len(value.args) :]
            return "partial(" + ", ".join(positional + [f"{k}={t}" for k, t in zip(value.keywords, named)]) + ")"
        if isinstance(value, property):
            items = [inner(f) for f in (value.fget, value.fset, value.fdel) if f is not None]
            return None if None in items else "property(" + ", ".join(items) + ")"
        if isinstance(value, types.MethodType):
            items = [inner(value.__self__), inner(value.__func__)]
            return None if None in items else ".".join(items)
        if isinstance(value, (list, tuple, set, frozenset)):
            items = [inner(v) for v in value]
            if None in items:
                return None
            items = sorted(items) if isinstance(value, (set, frozenset)) else items
            return f"{type(value).__name__}[" + ", ".join(items) + "]"
        if isinstance(value, dict):
            items = [(inner(k), inner(v)) for k, v in value.items()]
            return None if any(None in kv for kv in items) else "{" + ", ".join(f"{k}: {v}" for k, v in items) + "}"
        text = constant_text(value)
        if text is not None:
            return text
        own = self._first_party(type(value))
        if own:
            self.queue.append(type(value))  # an instance of a first-party class runs that class
        state = _state_of(value)
        if state is None or not own and not _is_plain_data(value):
            return None
        text = inner(state)
        return None if text is None else f"{type(value).__qualname__}({text})"

    def _read_module(self, module) -> None:
        """Note a first-party module the identity depends on; evsys's own contribute their whole text."""
        if module is None or module.__name__ in self.modules or not self._first_party(module):
            return
        file = getattr(module, "__file__", None)
        if not (_in_evsys(module) and file and file.endswith(".py")):
            self.modules[module.__name__] = None
            return
        stamp = file_stamp(file)
        self.modules[module.__name__] = module_text(file, stamp) if stamp else "<no source>"
        if stamp:  # what the module's own constants and tables are built from
            for used in module_statements(file, stamp).names:
                self._follow(used, module, module, {})

    def _first_party(self, obj) -> bool:
        module_name = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None)
        if not module_name or not isinstance(module_name, str):
            return False
        top = module_name.split(".", 1)[0]
        if top in EVSYS_PACKAGES or top == self.own_package:
            return True
        file = getattr(sys.modules.get(module_name), "__file__", None)
        return bool(file) and _user_file(file)


@functools.lru_cache(maxsize=4096)
def _user_file(file: str) -> bool:
    """Whether a module file is the user's own code: not installed (site-packages) nor the standard library."""
    path = Path(file).resolve()
    return not (_INSTALL_DIRS & set(path.parts) or str(path).startswith(_STDLIB))


def _in_evsys(obj) -> bool:
    name = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", "")
    return (name or "").split(".", 1)[0] in EVSYS_PACKAGES


def _unwrapped(value):
    """The function behind a decorator (`functools.wraps`, `lru_cache`) or a static/class method."""
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    if not isinstance(value, type) and hasattr(value, "__wrapped__"):
        try:
            value = inspect.unwrap(value)
        except ValueError:
            pass
    return value


def _state_of(value) -> dict | None:
    """The fields of a dataclass or pydantic model, or an object's `__dict__` (None: no state to read)."""
    if dataclasses.is_dataclass(value):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    fields = getattr(type(value), "model_fields", None)
    if isinstance(fields, dict):
        return {name: getattr(value, name, None) for name in fields}
    state = getattr(value, "__dict__", None)
    return dict(state) if isinstance(state, dict) else None


def _is_plain_data(value) -> bool:
    """A library's dataclass or pydantic model: data, keyed by its fields."""
    return dataclasses.is_dataclass(value) or isinstance(getattr(type(value), "model_fields", None), dict)


def _qualified(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', getattr(obj, '__name__', repr(obj)))}"
