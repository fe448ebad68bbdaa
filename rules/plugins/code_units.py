"""Source units for code identities, read from the AST: one definition's normalized text with the
names it reads and the imports it makes, a module's top-level import bindings, its top-level
statements, and a whole module's normalized text.

"Normalized" means parsed and unparsed (Hamilton's approach): a comment or a reformat changes
nothing. evsys's own modules are read with their docstrings stripped too; a user's module keeps
them, since code can read them as data (`cls.__doc__` as a prompt, a DSPy signature). Files are
parsed from their bytes, so a BOM or a `# -*- coding: ... -*-` line reads as Python reads it.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import sys
import textwrap
import time
from pathlib import Path

import xxhash

from evsys_build.errors import HashingError
from evsys_build.watch import RACY_NS


@dataclasses.dataclass(frozen=True)
class Binding:
    """`import module as alias` (attr None) or `from module import attr as alias`; `level` counts
    the leading dots of a relative import."""

    alias: str
    level: int
    module: str
    attr: str | None

    def absolute(self, package: str) -> str:
        """The imported module's absolute name, for code in `package`."""
        if not self.level:
            return self.module
        parent = package.rsplit(".", self.level - 1)[0] if self.level > 1 else package
        return f"{parent}.{self.module}" if self.module else parent


class Unit:
    """One definition: its normalized source (`text`), the dotted names it reads (`names`) and the
    imports inside it (`imports`), each worked out when first asked for: a module's units are made
    together, and most are never visited (evsys's own modules are keyed by their whole text)."""

    def __init__(self, node: ast.AST):
        self.node = node

    @functools.cached_property
    def text(self) -> str:
        return ast.unparse(self.node)

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(_names_used(self.node))

    @functools.cached_property
    def imports(self) -> tuple[Binding, ...]:
        """Import statements, and `importlib.import_module("a.b")` / `__import__("a")` calls with a constant name."""
        found: list[Binding] = []
        for n in ast.walk(self.node):
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                found += _bindings(n)
            elif isinstance(n, ast.Call) and n.args and isinstance(n.args[0], ast.Constant) and isinstance(n.args[0].value, str):
                if _dotted(n.func) in ("importlib.import_module", "import_module", "__import__") and not n.args[0].value.startswith("."):
                    found.append(Binding("", 0, n.args[0].value, None))
        return tuple(found)


def unit_of(obj, is_root: bool, keep_docstrings: bool = False) -> Unit | None:
    """The object's unit; None when it has no readable source (a root without one is an error)."""
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    file = getattr(module, "__file__", None)
    qualname = getattr(obj, "__qualname__", "")
    if file and file.endswith(".py") and "<locals>" not in qualname:
        stamp = file_stamp(file)
        if stamp is not None:
            found = module_units(file, stamp).get(qualname)
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
    if not keep_docstrings:
        _strip_docstrings(tree)
    return _make_unit(tree)


def stat_stamp(file: str) -> tuple | None:
    """A file's stat identity (size, mtime, inode, ctime); None when it cannot be read."""
    try:
        st = Path(file).stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def file_digest(file: str) -> str:
    """The xxh3 of a file's bytes (a module with no source to normalize: an extension, a .pyc)."""
    try:
        return xxhash.xxh3_128_hexdigest(Path(file).read_bytes())
    except OSError:
        return "<unreadable>"


def file_stamp(file: str) -> tuple | None:
    """What the parsed forms of a file are cached under: its stat identity, plus a digest of its
    bytes while it is racy (changed in the last two seconds, when a same-size edit can keep the
    stat identity), as git does."""
    stamp = stat_stamp(file)
    if stamp is None:
        return None
    if time.time_ns() - stamp[1] < RACY_NS:
        try:
            return (*stamp, xxhash.xxh3_128_hexdigest(Path(file).read_bytes()))
        except OSError:
            return None
    return stamp


@functools.lru_cache(maxsize=512)
def _parsed(file: str, stamp: tuple, strip: bool = True) -> ast.Module | None:
    """A module file's AST (docstrings stripped unless `strip` is False), once per process and
    file version. Parsed from bytes, as the import system reads it (BOM, coding line)."""
    try:
        tree = ast.parse(Path(file).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return None
    if strip:
        _strip_docstrings(tree)
    return tree


@functools.lru_cache(maxsize=512)
def module_units(file: str, stamp: tuple) -> dict[str, Unit]:
    """qualname -> unit of every def/class of a module file."""
    tree = _parsed(file, stamp)
    units: dict[str, Unit] = {}

    def visit(body, prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                units[prefix + node.name] = _make_unit(node)  # the last definition is the one that runs
                if isinstance(node, ast.ClassDef):
                    visit(node.body, f"{prefix}{node.name}.")

    if tree is not None:
        visit(tree.body, "")
    return units


@functools.lru_cache(maxsize=512)
def module_bindings(file: str, stamp: tuple) -> dict:
    """alias -> binding of the module's own top-level imports (inside `if` and `try` too, not
    inside functions or classes): where a name it imported comes from; "*" -> the `import *`s."""
    tree = _parsed(file, stamp)
    found: dict[str, Binding] = {}
    stack = list(tree.body) if tree is not None else []
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
            found.setdefault("*", ())
            found["*"] += (Binding("*", node.level, node.module or "", None),)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for binding in _bindings(node):
                found.setdefault(binding.alias, binding)
            continue
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                stack.append(child)
    return found


@functools.lru_cache(maxsize=512)
def module_imports(file: str, stamp: tuple) -> tuple[Binding, ...]:
    """Every top-level import of a module (inside `if` and `try` too), with its full module name:
    `import a.b` as the module a.b (its binding, `a`, loses that), `from m import x` as m and x."""
    tree = _parsed(file, stamp)
    found: list[Binding] = []
    stack = list(tree.body) if tree is not None else []
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(node, ast.Import):
            found += [Binding(a.asname or a.name, 0, a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found += [Binding(a.asname or a.name, node.level, node.module or "", None if a.name == "*" else a.name) for a in node.names]
        else:
            stack += [child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)]
    return tuple(found)


@functools.lru_cache(maxsize=512)
def module_text(file: str, stamp: tuple, keep_docstrings: bool = False) -> str:
    """A whole module's normalized source, without the `@not_keyed` functions (observers); a file
    that does not parse (Python cannot have imported it as source) is keyed by its bytes."""
    tree = _parsed(file, stamp, strip=not keep_docstrings)
    if tree is None:
        return "<unparsed " + file_digest(file) + ">"
    body = [node for node in tree.body if not _is_not_keyed(node)]
    return ast.unparse(ast.Module(body=body, type_ignores=[]))


@functools.lru_cache(maxsize=512)
def module_statements(file: str, stamp: tuple) -> Unit:
    """The module's top-level statements other than definitions and imports, as one unit: the
    names its constants and tables are built from."""
    tree = _parsed(file, stamp)
    body = [n for n in (tree.body if tree else []) if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom))]
    return _make_unit(ast.Module(body=body, type_ignores=[]))


def _is_not_keyed(node: ast.stmt) -> bool:
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return False
    names = {d.id if isinstance(d, ast.Name) else getattr(d, "attr", None) for d in node.decorator_list}
    return "not_keyed" in names


def _bindings(node: ast.Import | ast.ImportFrom) -> list[Binding]:
    if isinstance(node, ast.Import):
        return [
            Binding(a.asname, 0, a.name, None) if a.asname else Binding(a.name.split(".")[0], 0, a.name.split(".")[0], None)
            for a in node.names
        ]
    return [Binding(a.asname or a.name, node.level, node.module or "", a.name) for a in node.names if a.name != "*"]


def _make_unit(node: ast.AST) -> Unit:
    return Unit(node)


def _strip_docstrings(tree: ast.AST) -> None:
    """Drop the docstrings of the module, its classes and functions. Only statements are walked:
    a docstring is a statement, and definitions sit only in statement bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = body[1:] or [ast.Pass()]
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            children = getattr(node, field, None)
            if isinstance(children, list):
                stack += [c for c in children if isinstance(c, ast.AST)]


def _names_used(tree: ast.AST) -> list[str]:
    """Names read (loaded) by the source, annotations included (pydantic and dataclasses run
    them), each with every prefix of the attribute chain that follows it (`a.b.fn` gives `a`,
    `a.b`, `a.b.fn`)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(getattr(node, "ctx", None), ast.Load):
            continue  # a name assigned (a local, a module-level definition) is not one read
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            chain = _dotted(node)
            if chain:
                parts = chain.split(".")
                found.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return sorted(found)


def _dotted(node: ast.AST) -> str | None:
    attrs = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(attrs)]) if isinstance(node, ast.Name) else None
