"""Code identity: what a rule, transform, backend or verifier *runs*, as one digest.

The unit is the module. An identity is the normalized text (code_units.py: comments and
formatting do not count, nor docstrings in evsys's modules; a user's module keeps them, code can
read `__doc__`) of every first-party module the code reaches (one with no source file, an
extension or a .pyc, by its bytes): the evsys packages,
the plugin's own package, and any module not installed under site-packages or the standard
library. The walk starts at the object's module and follows what it uses: names its functions
read (imports at module level or inside functions, attribute chains through modules, names in
annotations), the modules those come from (re-exports and `import *` included), base classes,
and the names a module's own top-level statements use (`FN = make_fn(3)`, `K = BASE * 2`,
`NORM = partial(norm, ...)`). A method keyed with its class (`owner`) also reads the modules of
that class and its bases, so `self.helper()`, `super()` and what `__init__` sets are covered.

Values are never inspected, only source: an identity cannot depend on what the process did
before (a cache filled at run time, a set's iteration order), and any global is allowed (a
logger, a path, an array). What source cannot show (a file read at import time) is not keyed:
give such a plugin a `version` and bump it. Environment variables its modules name are keyed by
value beside the identity (environment_reads.py).

evsys's own modules contribute their text when the walk reaches one of their definitions, and
only reachable definitions are followed (so the callbacks behind `@not_keyed` functions stay out
of every key). A plugin module is followed whole: every name any of its definitions uses, so a
decorator without `functools.wraps` or a closure cannot hide code. Editing a plugin module
therefore reruns what every plugin in it computes; a comment or a reformat reruns nothing. A
hand-set `version` (a string or number) on the class itself, never one it inherits, is the
user's explicit override.

Functions marked `@not_keyed` (loggers, progress) are observers: they never change results, so
editing them reruns nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import types

import xxhash

from evsys_build.errors import HashingError
from evsys_build.hashing import canonical_json

from .identity_cache import EVSYS_PACKAGES, IdentityCache, in_evsys, module_file, user_plugins
from .registry import Registry
from .freshness import check as check_fresh, user_file as _user_file, watch_files, watch_modules
from .code_units import Binding, file_digest, file_stamp, module_bindings, module_imports, module_statements, module_text, module_units, unit_of

_CHASE_DEPTH = 16  # re-exports followed through at most this many modules


def not_keyed(fn):
    """Mark a function as an observer (logging, progress): code identities do not follow it."""
    fn.__evsys_not_keyed__ = True
    return fn


def code_identity(obj, owner: type | None = None) -> str:
    """`version:<v>` when the object (or, for a method, its `owner` class) declares one, else
    `source:<xxh3 of what it runs>`. Pass `owner` to key a method as that class runs it."""
    version = declared_version(owner if owner is not None else obj)
    if version is not None:
        return f"version:{version}"
    identity, user_modules = _source_identity(obj, owner)
    for module in user_modules:  # a stat each: refused once one was edited since this process ran it
        check_fresh(module)
    return identity


def user_modules_of(obj, owner: type | None = None) -> tuple:
    """The modules of yours (neither evsys's nor installed ones) that the code of `obj` reaches,
    as its identity walk found them; walked even where a `version` is declared."""
    return tuple(_source_identity(obj, owner)[1])


def declared_version(obj) -> str | None:
    """A hand-set `version` (string or number) on the class itself, or on a function; None otherwise."""
    version = vars(obj).get("version") if isinstance(obj, type) else getattr(obj, "version", None)
    return str(version) if isinstance(version, (str, int, float)) and not isinstance(version, bool) else None


def method_identity(cls: type, name: str) -> str:
    """The identity of `cls.name` as `cls` runs it (`self.helper()` resolves against `cls`)."""
    return code_identity(getattr(cls, name), owner=cls)


_identities: dict[tuple, tuple[str, tuple]] = {}


def _source_identity(obj, owner) -> tuple[str, tuple]:
    """(the identity, the user modules it was computed from: each recorded with the source it runs).
    Kept for the process, except one that reached a definition with no module file (a notebook
    cell's): the globals it reads can change under the same function object."""
    known = _identities.get((obj, owner))
    if known is not None:
        return known
    key = _cache_key(obj, owner)
    found = _disk.get(key) if _disk is not None and key else None
    if found is not None:
        result = _identities[(obj, owner)] = (found, tuple(watch_files(_disk.files(key))))
        return result
    collector = _Collector(obj, owner)
    identity = "source:" + xxhash.xxh3_128_hexdigest(collector.text().encode())
    user_modules = tuple(watch_modules(collector.module_objects()))
    if _disk is not None and key:
        _disk.put(key, identity, collector.files(), collector.module_files(), collector.registered())
    if not collector.sourceless():
        _identities[(obj, owner)] = (identity, user_modules)
    return identity, user_modules


def forget_identities() -> None:
    """Drop this process's identities (a plugin or a module it uses was re-executed)."""
    _identities.clear()


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


class _Collector:
    """Walks from `root` through the first-party code it uses, collecting whole module texts."""

    def __init__(self, root, owner: type | None = None):
        self.root = root
        self.owner = owner
        self.own_package = (getattr(root, "__module__", "") or "").split(".", 1)[0]
        self.parts: dict[tuple[str, str], str] = {}  # (module, qualname) of each definition walked -> its text when its module has none
        self.modules: dict[str, str | None] = {}  # first-party modules read -> normalized text (None: no source file)
        self.queue = [root]
        self.registries: dict[str, Registry] = {}  # registries the walk read (by kind): their user plugins are in the identity
        self.absent: set[str] = set()  # modules an import names that could not be found (a `try: import mine` that failed)

    def registered(self) -> dict[str, list[str]]:
        """Per registry the walk read, the user plugins registered there: a cached identity holds
        only while they are the same (a plugin file added to the config adds one)."""
        return {kind: user_plugins(registry) for kind, registry in sorted(self.registries.items())}

    def module_objects(self) -> list:
        """The modules the walk read."""
        return [m for name in self.modules if (m := sys.modules.get(name)) is not None]

    def sourceless(self) -> bool:
        """Whether a definition with no module file was keyed by its own text (and the values it reads)."""
        return any(self.parts.values())

    def _note_absent(self, name: str) -> None:
        """An import that did not run here (failed, or under `if TYPE_CHECKING:`): its first part
        not imported, whose parent is (so looking it up later imports nothing)."""
        parts = name.split(".")
        for n in range(1, len(parts) + 1):
            if ".".join(parts[:n]) not in sys.modules:
                self.absent.add(".".join(parts[:n]))
                return

    def module_files(self) -> dict[str, str | None]:
        """Each module the walk read and the file it was loaded from, and each module an import
        named that did not run here, with where it would load from now (None: nowhere): a cached
        identity holds only while the same names still come from the same files (a missing one
        still missing)."""
        found = {name: module_file(name) for name in sorted(self.absent)}
        found.update({name: getattr(sys.modules.get(name), "__file__", None) for name in sorted(self.modules)})
        return found

    def files(self) -> list[str]:
        """The source files of every module the walk read: the identity is valid while they are unchanged."""
        files = {getattr(sys.modules.get(name), "__file__", None) for name in self.modules}
        return sorted(f for f in files if f)

    def text(self) -> str:
        if self.owner is not None:  # what `self.x`, `super()` and `__init__` can reach
            for cls in self.owner.__mro__:
                if self._first_party(cls):
                    self._read_module(sys.modules.get(cls.__module__))
        while self.queue:
            item = self.queue.pop(0)
            self._follow_module(item) if isinstance(item, types.ModuleType) else self._visit(item)
        # a plugin's module name stays out of the text: a plugin loaded from a path gets a module
        # name made of that path, and moving a file must not change what it computes
        parts = [f"# {qualname}\n{text}" for (_, qualname), text in self.parts.items()]
        parts += [f"# module {name if in_evsys(name) else ''}\n{text}" for name, text in self.modules.items() if text is not None]
        return "\n".join(sorted(parts))

    def _visit(self, obj) -> None:
        name = (getattr(obj, "__module__", "?"), getattr(obj, "__qualname__", repr(obj)))
        if name in self.parts or getattr(obj, "__evsys_not_keyed__", False):
            return
        unit = unit_of(obj, obj is self.root, keep_docstrings=not in_evsys(obj))
        module = sys.modules.get(getattr(obj, "__module__", "") or "")
        self.parts[name] = ""
        if unit is None:
            return
        if not self._read_module(module):  # no module file (a notebook cell): the definition's own text
            self.parts[name] = unit.text
        if isinstance(obj, type):
            self.queue += [base for base in obj.__mro__[1:] if self._first_party(base)]
        sourceless = self.parts[name] != ""
        for index, cell in enumerate(getattr(obj, "__closure__", None) or ()):  # a wrapper's function, a factory's helper
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if sourceless:
                self._keep_value(name, f"closure[{index}]", value)
            self._take(value, obj)
        self._follow_unit(unit, module, obj)

    def _follow_unit(self, unit, module, user) -> None:
        local = {}
        for binding in unit.imports:  # imports inside the definition
            value = self._import(binding, module)
            if value is not None:
                local[binding.alias] = value
                self._take(value, user)
        for used in unit.names:
            self._follow(used, module, user, local)

    def _follow(self, dotted: str, module, user, local: dict) -> None:
        """A dotted name the source reads, resolved in its local imports or its module's globals,
        then through first-party modules along the chain."""
        head, *rest = dotted.split(".")
        if head in ("self", "cls") and self._owns(user):
            if rest:
                self._follow_owner(rest[0], user)
            return
        if head in local:
            value = local[head]
        elif module is not None and head in vars(module):
            value = vars(module)[head]
            if getattr(value, "__evsys_not_keyed__", False):
                return  # an observer: neither it nor the module it comes from is part of the key
            self._chase(module, head)
            if self.modules.get(module.__name__, "") is None:  # a notebook's global: no module text says what it holds
                self._keep_value((module.__name__, ""), head, value)
        else:
            return
        for attr in rest:
            if not isinstance(value, types.ModuleType):
                break
            if not self._first_party(value) or not hasattr(value, attr):
                return
            self._read_module(value)
            self._chase(value, attr)
            value = getattr(value, attr)
        self._take(value, user)

    def _keep_value(self, where: tuple, name: str, value) -> None:
        """A value read by a definition that has no module file (a notebook cell's function reading
        a global, or its closure): no source shows how it was made, so what it holds is keyed, as
        canonical JSON, else as its repr when that names no address; code is followed instead."""
        if isinstance(_unwrapped(value), (types.ModuleType, types.FunctionType, type, Registry)):
            return
        try:
            text = canonical_json(value)
        except HashingError:
            shown = repr(value)
            text = shown if " at 0x" not in shown else f"<a {type(value).__qualname__}>"
        self.parts[(where[0], f"{where[1]}:{name}")] = f"value {name} = {text}"

    def _owns(self, fn) -> bool:
        """Whether `fn` is defined on the owner class or one of its bases (so `self` is an owner)."""
        if self.owner is None or isinstance(fn, (type, types.ModuleType)):
            return False
        cls_name = (getattr(fn, "__qualname__", "") or "").rpartition(".")[0]
        return any(c.__qualname__ == cls_name and c.__module__ == fn.__module__ for c in self.owner.__mro__)

    def _follow_owner(self, attr: str, user) -> None:
        """`self.attr` / `cls.attr` in a method keyed with its class: the class attribute it reads."""
        try:
            value = inspect.getattr_static(self.owner, attr)
        except AttributeError:
            return  # an instance attribute: set by code in the owner's modules, which are read
        if isinstance(value, property):
            for fn in (value.fget, value.fset, value.fdel):
                self._take(fn, self.owner)
            return
        self._take(getattr(value, "func", value), self.owner)  # functools.cached_property keeps its function in .func

    def _chase(self, module, name: str, depth: int = 0) -> None:
        """Where a module got `name` by importing it (re-exports and `import *` included): those
        modules are read too, so an edit there changes the identity and invalidates a cached one."""
        if depth > _CHASE_DEPTH or not self._first_party(module) or not getattr(module, "__file__", None):
            return
        stamp = file_stamp(module.__file__)
        bindings = module_bindings(module.__file__, stamp) if stamp else {}
        found = bindings.get(name)
        sources = [found] if found is not None else list(bindings.get("*", ()))
        for binding in sources:
            source = sys.modules.get(binding.absolute(module.__package__ or ""))
            if source is None or not self._first_party(source):
                continue
            self._read_module(source)
            if binding.attr is not None or found is None:
                self._chase(source, binding.attr or name, depth + 1)

    def _import(self, binding: Binding, module):
        """The value an import inside a definition binds, when it is first-party (a library like
        torch is never imported just to key a node: that would defeat importing it lazily)."""
        name = binding.absolute(getattr(module, "__package__", None) or "")
        target = sys.modules.get(name)
        if target is None:
            if not self._importable_first_party(name):
                return None
            try:
                target = importlib.import_module(name)
            except Exception:  # noqa: BLE001 - missing, or raising as it imports (a native library absent): it runs nowhere
                self._note_absent(name)
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

    def _importable_first_party(self, name: str) -> bool:
        top = name.split(".", 1)[0]
        if top in (*EVSYS_PACKAGES, self.own_package):
            return True
        if top in sys.modules:
            return self._first_party(sys.modules[top])
        spec = importlib.util.find_spec(top)  # a top-level name: located, never imported
        if spec is None:
            self._note_absent(top)  # where a `try: import mine` falls back: a cached identity must see it appear
        places = [spec.origin] if spec is not None and spec.origin not in (None, "built-in", "frozen") else list(getattr(spec, "submodule_search_locations", None) or [])
        return bool(places) and all(_user_file(p) for p in places)

    def _take(self, value, user) -> None:
        """A value the source reads: code is followed (its module read, its definition walked);
        other values are not inspected, their module's text covers how they were made."""
        value = _unwrapped(value)
        if isinstance(value, Registry) and not in_evsys(user):
            self._take_registered(value, user)
            return
        if isinstance(value, types.ModuleType):
            if self._first_party(value):
                self._read_module(value)
            return
        if not isinstance(value, (types.FunctionType, type)) or not self._first_party(value):
            return
        if "<locals>" in value.__qualname__:
            if in_evsys(value):
                return  # made at run time (a class built on first use): state, not code; its source is in its module
            self._read_module(sys.modules.get(value.__module__))
        self.queue.append(value)

    def _take_registered(self, registry: Registry, user) -> None:
        """A plugin that reads a registry (`kinds.transforms.get(name)`) may run any plugin in it
        by a name known only at run time: every user plugin registered there is part of its key
        (the built-in kinds are evsys's code, keyed by the version of evsys's modules it reads)."""
        self.registries[registry.kind] = registry
        for item in registry.registered():
            if not in_evsys(item):
                self._take(item, user)

    def _read_module(self, module) -> bool:
        """Read a first-party module's whole text (once); False when it has no source file. A
        plugin module is followed whole, an evsys module through its top-level statements."""
        if module is None or not self._first_party(module):
            return False
        if module.__name__ in self.modules:
            return self.modules[module.__name__] is not None
        file = getattr(module, "__file__", None)
        check_fresh(module)  # never the key of an edit (or a removal) this process does not run
        stamp = file_stamp(file) if file else None
        if stamp is None:
            self.modules[module.__name__] = None
            return False
        if not file.endswith(".py"):  # an extension module or a .pyc: no source, its bytes are what runs
            self.modules[module.__name__] = "<bytes " + file_digest(file) + ">"
            return True
        self.modules[module.__name__] = module_text(file, stamp, keep_docstrings=not in_evsys(module))
        self.queue.append(module)  # what it uses is followed from the queue: no recursion per module
        return True

    def _follow_module(self, module) -> None:
        """A module read: its `import *`s, the names its top-level statements use, and for a plugin
        module the names every definition uses."""
        file = module.__file__
        stamp = file_stamp(file)
        if stamp is None:
            return
        for star in module_bindings(file, stamp).get("*", ()):
            self._read_module(sys.modules.get(star.absolute(module.__package__ or "")))
        self._follow_unit(module_statements(file, stamp), module, module)
        if not in_evsys(module):  # every definition of a plugin module: nothing it runs can hide
            for qualname, unit in module_units(file, stamp).items():
                if "." not in qualname:
                    self._follow_unit(unit, module, module)
            self._read_imports(module, module_imports(file, stamp))

    def _read_imports(self, module, imports: tuple) -> None:
        """Every user module a plugin module imports at its top level, whether or not a name from it
        is read: an import made for its side effect (a helper that fills a table the plugin looks
        up) is code the plugin runs. Only modules already imported: keying never imports."""
        package = module.__package__ or ""
        for binding in imports:
            name = binding.absolute(package)
            if not name:
                continue
            parent = sys.modules.get(name)
            if parent is None:
                self._note_absent(name)  # an import that failed (`try: from mine import x` / `except ImportError`)
            elif binding.attr and not hasattr(parent, binding.attr):
                self._note_absent(f"{name}.{binding.attr}")  # `from pkg import mine`, mine not (yet) there
            for target in (parent, sys.modules.get(f"{name}.{binding.attr}") if binding.attr else None):
                if isinstance(target, types.ModuleType) and not in_evsys(target):
                    self._read_module(target)

    def _first_party(self, obj) -> bool:
        module_name = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None)
        if not module_name or not isinstance(module_name, str):
            return False
        top = module_name.split(".", 1)[0]
        if top in EVSYS_PACKAGES or top == self.own_package:
            return True
        file = getattr(sys.modules.get(module_name), "__file__", None)
        return bool(file) and _user_file(file)


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
