"""Environment variables a plugin reads by name: a value that changes what it computes must be in
its key, and code identities hold only source. The plugin's own modules (every module of yours
its code identity reached) are read for literal names: `os.environ["X"]`, `os.environ.get("X")`,
`os.getenv("X")`, `environ.get("X")`, `"X" in os.environ`, and the same with a module constant
`NAME = "X"` in place of the literal; the values of those variables key the node. A name the code
computes, or a read of the whole environment (`os.environ.copy()`, `dict(os.environ)`), cannot be
seen: declare such a read with the plugin's `identity()`."""

from __future__ import annotations

import os
import re

from evsys_build.watch import unwatchable

from .code_identity import user_modules_of

_NAME = r"""(?:[rbuRBU]{0,2})(?P<q>["'])(?P<var>[A-Za-z_][A-Za-z0-9_]*)(?P=q)"""  # a string literal naming a variable
_BY_CALL = r"""\b(?:environ\s*(?:\.\s*(?:get|setdefault|pop)\s*)?[\[(]|getenvb?\s*\()\s*"""
_READ = re.compile(_BY_CALL + _NAME)  # os.environ["X"], os.environ.get("X"), os.getenv("X")
_TEST = re.compile(_NAME + r"""\s+(?:not\s+)?in\s+(?:os\s*\.\s*)?environ\b""")  # "X" in os.environ
_READ_CONSTANT = re.compile(_BY_CALL + r"""(?P<const>[A-Za-z_][A-Za-z0-9_]*)\s*[\]),]""")  # os.environ.get(NAME)
_TEST_CONSTANT = re.compile(r"""\b(?P<const>[A-Za-z_][A-Za-z0-9_]*)\s+(?:not\s+)?in\s+(?:os\s*\.\s*)?environ\b""")
_CONSTANT = re.compile(r"""^(?P<const>[A-Za-z_][A-Za-z0-9_]*)\s*(?::\s*str\s*)?=\s*""" + _NAME + r"""\s*(?:#.*)?$""", re.MULTILINE)  # NAME = "X"
_names_in: dict[tuple[str, int, int], tuple[str, ...]] = {}  # (file, mtime_ns, size) -> names


def environment_read_by(obj, what: str) -> dict[str, str | None]:
    """{name: value (None when unset)} of each variable the user modules behind `obj` name; a
    config that has any is compiled on every plan (no snapshot follows a variable's value)."""
    names = sorted({name for module in user_modules_of(obj) for name in _names(getattr(module, "__file__", None))})
    if names:
        unwatchable(f"{what} reads the environment variable(s) {', '.join(names)}")
    return {name: os.environ.get(name) for name in names}


def _names(file: str | None) -> tuple[str, ...]:
    if not file:
        return ()
    try:
        st = os.stat(file)
    except OSError:
        return ()
    key = (file, st.st_mtime_ns, st.st_size)
    if key not in _names_in:
        with open(file, encoding="utf-8", errors="replace") as f:
            _names_in[key] = tuple(sorted(names_read(f.read())))
    return _names_in[key]


def names_read(source: str) -> set[str]:
    """The variables `source` reads or tests by a literal name, or by a module constant holding one."""
    names = {m.group("var") for pattern in (_READ, _TEST) for m in pattern.finditer(source)}
    constants = {m.group("const"): m.group("var") for m in _CONSTANT.finditer(source)}
    names |= {constants[m.group("const")] for pattern in (_READ_CONSTANT, _TEST_CONSTANT) for m in pattern.finditer(source) if m.group("const") in constants}
    return names
