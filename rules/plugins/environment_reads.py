"""Environment variables a plugin reads by name: a value that changes what it computes must be in
its key, and code identities hold only source. The plugin's own modules (every module of yours
its code identity reached) are read for literal names: `os.environ["X"]`, `os.environ.get("X")`,
`os.getenv("X")`, `environ.get("X")`; the values of those variables key the node. A name the code
computes cannot be seen: declare such a read with the plugin's `identity()`."""

from __future__ import annotations

import os
import re

from evsys_build.watch import unwatchable

from .code_identity import user_modules_of

_READ = re.compile(r"""\b(?:environ\s*(?:\.\s*(?:get|setdefault|pop)\s*)?[\[(]|getenv\s*\(|getenvb\s*\()\s*(?:[rbuRBU]{0,2})(["'])([A-Za-z_][A-Za-z0-9_]*)\1""")
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
            _names_in[key] = tuple(sorted({m.group(2) for m in _READ.finditer(f.read())}))
    return _names_in[key]
