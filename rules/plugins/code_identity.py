"""Code identity: what a rule, transform, backend or verifier *runs*, as one digest.

The identity of a function or class is its source with comments and docstrings stripped (parsed
and unparsed, as Hamilton does, so a reformat or a new comment changes nothing), followed
transitively through what it uses in first-party code: helpers and classes of its own module and
of other first-party modules (the evsys packages, the plugin's own package, and any module that
is not installed under site-packages or the standard library), base classes, names imported
inside functions, attributes of first-party modules, and module-level constants. A behaviour edit
anywhere on that path changes the key; a hand-set `version` on the class itself (never one it
inherits) is the user's explicit override.

Functions marked `@not_keyed` (loggers, progress) are observers: they never change results, so
editing them reruns nothing.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import functools
import importlib
import importlib.metadata
import json
import os
import inspect
import re
import sys
import sysconfig
import textwrap
import time
import types
from pathlib import Path

import xxhash

from evsys_build.atomic import write_atomic
from evsys_build.errors import HashingError
from evsys_build.watch import unwatchable, watch

EVSYS_PACKAGES = ("evsys_rules", "evsys_build", "evsys_sdk")
_PUBLIC_CONSTANT = re.compile(r"[A-Z][A-Z0-9_]*")  # in evsys's own modules, only these globals are constants
_PRIVATE_STATE = re.compile(r"_[A-Za-z0-9_]*[A-Z][A-Za-z0-9_]*|_[a-z0-9_]+")  # `_loaded`, `_FUSED_LOSS`: runtime state
_STDLIB = tuple(str(Path(sysconfig.get_paths()[k]).resolve()) for k in ("stdlib", "platstdlib"))
_INSTALL_DIRS = {"site-packages", "dist-packages"}


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


def code_identity(obj) -> str:
    """`version:<v>` when the object itself declares one, else `source:<xxh3 of what it runs>`."""
    version = vars(obj).get("version") if isinstance(obj, type) else getattr(obj, "version", None)
    if version is not None:
        return f"version:{version}"
    return _source_identity(obj)


@functools.lru_cache(maxsize=None)
def _source_identity(obj) -> str:
    key = _cache_key(obj)
    found = _disk.get(key) if _disk is not None and key else None
    if found is not None:
        return found
    collector = _Collector(obj)
    identity = "source:" + xxhash.xxh3_128_hexdigest(collector.text().encode())
    if _disk is not None and key:
        _disk.put(key, identity, collector.files())
    return identity


class IdentityCache:
    """Identities computed by earlier processes, each valid while every source file it was made
    of has the same stat identity (a file changed in the last two seconds is never trusted, as
    git treats racy-clean files). Saves parsing the rules' modules on every `plan` and no-op build."""

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


def _cache_key(obj) -> str | None:
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

    def __init__(self, root):
        self.root = root
        self.own_package = (getattr(root, "__module__", "") or "").split(".", 1)[0]
        self.parts: dict[tuple[str, str], str] = {}  # (module, qualname) -> normalized source (or a constant's text)
        self.queue = [root]

    def files(self) -> list[str]:
        """The source files of everything visited: the identity is valid while they are unchanged."""
        files = {getattr(sys.modules.get(module), "__file__", None) for module, _ in self.parts}
        return sorted(f for f in files if f)

    def text(self) -> str:
        while self.queue:
            self._visit(self.queue.pop(0))
        # module names stay out of the text: a plugin loaded from a path gets a module name made of
        # that path, and moving a file must not change what it computes
        return "\n".join(sorted(f"# {qualname}\n{source}" for (_, qualname), source in self.parts.items()))

    def _visit(self, obj) -> None:
        name = (getattr(obj, "__module__", "?"), getattr(obj, "__qualname__", repr(obj)))
        if name in self.parts or getattr(obj, "__evsys_not_keyed__", False):
            return
        unit = _unit(obj, obj is self.root)
        if unit is None:
            self.parts[name] = "<no source>"
            return
        self.parts[name] = unit.text
        module = sys.modules.get(getattr(obj, "__module__", "") or "")
        if isinstance(obj, type):
            self.queue += [base for base in obj.__mro__[1:] if self._first_party(base)]
        for used in unit.names:
            self._follow(used, module, obj)
        for module_name, attr in _imports_inside(unit.imports, module):
            self._follow_import(module_name, attr, obj)

    def _follow(self, dotted: str, module, obj) -> None:
        """A name (or `module.attr`) the source uses, resolved in its module's globals."""
        if module is None:
            return
        head, _, attr = dotted.partition(".")
        if head not in vars(module) or (self._in_evsys(obj) and _PRIVATE_STATE.fullmatch(head)):
            return
        value = vars(module)[head]
        if isinstance(value, types.ModuleType):
            if attr and self._first_party(value) and hasattr(value, attr):
                self._take(getattr(value, attr), (value.__name__, attr), obj)
            return
        self._take(value, (module.__name__, head), obj)

    def _follow_import(self, module_name: str, attr: str | None, obj) -> None:
        """`from x import y` inside a function, when x is first-party (importing a library like
        torch just to key a node would defeat the point of importing it lazily)."""
        module = sys.modules.get(module_name)
        if module is None:
            if module_name.split(".", 1)[0] not in (*EVSYS_PACKAGES, self.own_package):
                return
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                return
        if attr is None or not self._first_party(module):
            return
        value = getattr(module, attr, None)
        if isinstance(value, types.ModuleType):
            return
        if value is not None:
            self._take(value, (module_name, attr), obj)

    def _take(self, value, name: tuple[str, str], user) -> None:
        if isinstance(value, (types.FunctionType, type)):
            if self._first_party(value):
                self.queue.append(value)
            return
        if isinstance(value, (types.BuiltinFunctionType, types.MethodType, functools.partial)) or callable(value) and not hasattr(value, "model_dump"):
            return  # library callables (and instances like registries) are not followed
        if self._in_evsys(user) and not _PUBLIC_CONSTANT.fullmatch(name[1]):
            return  # evsys's own module state (flags, caches, registries) is not behaviour
        constant = _constant_text(value)
        if constant is not None:
            self.parts.setdefault(name, constant)
            return
        if self._in_evsys(user):
            return
        raise HashingError(
            f"{_qualified(user)} uses the module global {name[1]!r} "
            f"({type(value).__name__}), whose value evsys cannot hash; give the plugin an explicit "
            "`version = \"1\"` and bump it when that value changes"
        )

    def _first_party(self, obj) -> bool:
        module_name = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None)
        if not module_name:
            return False
        top = module_name.split(".", 1)[0]
        if top in EVSYS_PACKAGES or top == self.own_package:
            return True
        module = sys.modules.get(module_name)
        file = getattr(module, "__file__", None)
        if not file:
            return False
        path = Path(file).resolve()
        return not (_INSTALL_DIRS & set(path.parts) or str(path).startswith(_STDLIB))

    @staticmethod
    def _in_evsys(obj) -> bool:
        return (getattr(obj, "__module__", "") or "").split(".", 1)[0] in EVSYS_PACKAGES


def _qualified(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', getattr(obj, '__name__', repr(obj)))}"


@dataclasses.dataclass(frozen=True)
class _Unit:
    """One definition's normalized source, the names it reads, and its `from x import y`s."""

    text: str
    names: tuple[str, ...]
    imports: tuple[tuple[int, str, tuple[str, ...]], ...]  # (level, module, names)


def _unit(obj, is_root: bool) -> _Unit | None:
    """The object's unit; None when it has no readable source."""
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    file = getattr(module, "__file__", None)
    qualname = getattr(obj, "__qualname__", "")
    if file and file.endswith(".py") and "<locals>" not in qualname:
        try:
            st = Path(file).stat()
        except OSError:
            st = None
        if st is not None:
            found = _module_units(file, (st.st_size, st.st_mtime_ns, st.st_ino)).get(qualname)
            if found is not None:
                return found
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(obj)))
    except (OSError, TypeError, SyntaxError) as exc:
        if is_root:
            raise HashingError(
                f"cannot read the source of {getattr(obj, '__qualname__', obj)!r} to key it ({exc}); "
                "give it an explicit `version = \"1\"` attribute"
            ) from None
        return None
    _strip_docstrings(tree)
    return _make_unit(tree)


@functools.lru_cache(maxsize=256)
def _module_units(file: str, stamp: tuple) -> dict[str, _Unit]:
    """qualname -> unit of every def/class of a module file, parsed once per process and file
    version (`stamp`: an edited file is parsed again; inspect.getsource re-reads on every call)."""
    try:
        tree = ast.parse(Path(file).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return {}
    _strip_docstrings(tree)
    units: dict[str, _Unit] = {}

    def visit(body, prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                units[prefix + node.name] = _make_unit(node)  # the last definition is the one that runs
                if isinstance(node, ast.ClassDef):
                    visit(node.body, f"{prefix}{node.name}.")

    visit(tree.body, "")
    return units


def _make_unit(node: ast.AST) -> _Unit:
    imports = tuple(
        (n.level, n.module or "", tuple(a.name for a in n.names)) for n in ast.walk(node) if isinstance(n, ast.ImportFrom)
    )
    return _Unit(ast.unparse(node), tuple(_names_used(node)), imports)


def _strip_docstrings(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = body[1:] or [ast.Pass()]


def _names_used(tree: ast.AST) -> list[str]:
    """Names read by the source, with one attribute where the name is followed by one (`mod.fn`).
    Type annotations are skipped: they document, they do not run."""
    found: set[str] = set()
    for node in _walk_without_annotations(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            found.add(f"{node.value.id}.{node.attr}")
            found.add(node.value.id)
        elif isinstance(node, ast.Name):
            found.add(node.id)
    return sorted(found)


def _walk_without_annotations(tree: ast.AST):
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        skip = set()
        if isinstance(node, ast.arg):
            skip.add("annotation")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            skip.add("returns")
        elif isinstance(node, ast.AnnAssign):
            skip.add("annotation")
        for field, value in ast.iter_fields(node):
            if field in skip:
                continue
            if isinstance(value, ast.AST):
                stack.append(value)
            elif isinstance(value, list):
                stack += [v for v in value if isinstance(v, ast.AST)]


def _imports_inside(imports, module) -> list[tuple[str, str | None]]:
    """(module, name) of every `from m import n` in a unit (function-local imports included)."""
    package = getattr(module, "__package__", None) or ""
    found = []
    for level, name, names in imports:
        base = name
        if level:
            parent = package.rsplit(".", level - 1)[0] if level > 1 else package
            base = f"{parent}.{base}" if base else parent
        found += [(base, alias) for alias in names]
    return found


def _constant_text(value) -> str | None:
    """A stable text for a module-level constant (None: not a constant we can key)."""
    if isinstance(value, re.Pattern):
        return f"re.compile({value.pattern!r}, {int(value.flags)})"
    if value is None or isinstance(value, (str, bytes, int, float, bool, enum.Enum)):
        return repr(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type) or hasattr(value, "model_dump"):
        return repr(value)  # field-by-field repr: deterministic for plain data
    if isinstance(value, (list, tuple)):
        items = [_constant_text(v) for v in value]
        return None if None in items else "[" + ", ".join(items) + "]"
    if isinstance(value, (set, frozenset)):
        items = [_constant_text(v) for v in value]
        return None if None in items else "{" + ", ".join(sorted(items)) + "}"
    if isinstance(value, dict):
        items = [(_constant_text(k), _constant_text(v)) for k, v in value.items()]
        if any(k is None or v is None for k, v in items):
            return None
        return "{" + ", ".join(f"{k}: {v}" for k, v in items) + "}"
    return None
