"""Environment variables a plugin reads by name: a value that changes what it computes must be in
its key, and code identities hold only source. The plugin's own modules (every module of yours
its code identity reached) are read for literal names: `os.environ["X"]`, `os.environ.get("X")`,
`os.getenv("X")`, `environ.get("X")`, `"X" in os.environ`, the same through an alias
(`env = os.environ`, `from os import environ as env`), and the same with a name holding the
literal (`NAME = "X"` in the module, or a string constant imported into it); the values of those
variables key the node. A name the code computes, or a read of the whole environment
(`os.environ.copy()`, `dict(os.environ)`), cannot be seen here: `environment_watch` fails a plugin
that makes one while it runs, unless the plugin declares what it reads with `identity()`."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import time

from evsys_build.watch import RACY_NS, unwatchable

from .code_identity import user_modules_of

_NAME = r"""(?:[rbuRBU]{0,2})(?P<q>["'])(?P<var>[A-Za-z_][A-Za-z0-9_]*)(?P=q)"""  # a string literal naming a variable
_CONST = r"""(?P<const>[A-Za-z_][A-Za-z0-9_]*)"""  # a name that may hold one
_CONSTANT = re.compile(r"""^(?P<const>[A-Za-z_][A-Za-z0-9_]*)\s*(?::\s*str\s*)?=\s*""" + _NAME + r"""\s*(?:#.*)?$""", re.MULTILINE)  # NAME = "X"
_ALIAS = re.compile(r"""^[ \t]*(?P<alias>[A-Za-z_][A-Za-z0-9_]*)\s*(?::[^=\n]*)?=\s*(?:os\s*\.\s*)?(?P<of>environ|getenv)\s*(?:#.*)?$""", re.MULTILINE)  # env = os.environ
_FROM_OS = re.compile(r"""^[ \t]*from\s+os\s+import\s+(?:\((?P<group>[^)]*)\)|(?P<names>[^\n]*))""", re.MULTILINE)  # from os import environ as env
_CREDENTIAL = re.compile(r"""(?:^|_)(?:API_KEY|SECRET_KEY|ACCESS_KEY|ACCESS_KEY_ID|SECRET|PASSWORD|PASSWD|(?:API|AUTH|ACCESS|BEARER|HF|HUGGING_FACE_HUB|GH|GITHUB)_TOKEN)$""")
_names_in: dict[tuple, tuple[tuple[str, ...], tuple[str, ...]]] = {}  # (file, its stat identity) -> (names, other constants)


def environment_read_by(obj, what: str) -> dict[str, str | None]:
    """{name: digest of its value (None when unset)} of each variable the user modules behind
    `obj` name, credentials aside; a config that has any is compiled on every plan (no snapshot
    follows a variable's value). Values are digested: a key, and so the store, never holds one."""
    names = keyed_names(obj)
    if names:
        unwatchable(f"{what} reads the environment variable(s) {', '.join(names)}")
    return {name: _value_digest(os.environ.get(name)) for name in names}


def environment_param(obj, what: str) -> dict:
    """`{"environment": environment_read_by(obj, what)}` for a node's params, or {} when it reads none."""
    environment = environment_read_by(obj, what)
    return {"environment": environment} if environment else {}


def is_credential(name: str) -> bool:
    """Whether a variable's name marks a credential (`OPENAI_API_KEY`, `HF_TOKEN`, `DB_PASSWORD`):
    it says who is served, not what is computed, so it keys nothing and rotating it reruns nothing."""
    return _CREDENTIAL.search(name.upper()) is not None


def _value_digest(value: str | None) -> str | None:
    return None if value is None else "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()


def keyed_names(obj) -> list[str]:
    """The variables the user modules behind `obj` name, sorted: those its key holds."""
    return sorted({name for module in user_modules_of(obj) for name in keyed_names_of_module(module)})


def keyed_names_of_module(module) -> list[str]:
    """The variables one module names, credentials aside. A name held by a module global
    (`from settings import STYLE_VAR`) is read from the loaded module."""
    found, constants = _names(getattr(module, "__file__", None))
    names = set(found)
    held = [getattr(module, const, None) for const in constants]
    names.update(v for v in held if isinstance(v, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v))
    return sorted(name for name in names if not is_credential(name))


def _names(file: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if not file:
        return (), ()
    try:
        st = os.stat(file)
    except OSError:
        return (), ()
    key = (file, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, st.st_dev)  # ctime: an edit with the old mtime put back still shows
    known = _names_in.get(key)
    if known is None:
        with open(file, encoding="utf-8", errors="replace") as f:
            names, constants = names_and_constants(f.read())
        known = (tuple(sorted(names)), tuple(sorted(constants)))
        if time.time_ns() - st.st_mtime_ns >= RACY_NS:  # a file written just now may change again within its tick
            _names_in[key] = known
    return known


def names_and_constants(source: str) -> tuple[set[str], set[str]]:
    """(the variables `source` names, through `os.environ`, `os.getenv` or an alias of either;
    the names it reads through whose value this file does not set: constants imported from elsewhere)."""
    read, test, read_const, test_const = _patterns(*_aliases(source))
    names = {m.group("var") for pattern in (read, test) for m in pattern.finditer(source)}
    constants = {m.group("const"): m.group("var") for m in _CONSTANT.finditer(source)}
    used = {m.group("const") for pattern in (read_const, test_const) for m in pattern.finditer(source)}
    names |= {constants[c] for c in used if c in constants}
    return names, {c for c in used if c not in constants}


def _aliases(source: str) -> tuple[frozenset, frozenset]:
    """The names `os.environ` and `os.getenv` go by in `source` (theirs, plus `env = os.environ`,
    `from os import environ as env`)."""
    environs, getenvs = {"environ", "environb"}, {"getenv", "getenvb"}
    for m in _ALIAS.finditer(source):
        (environs if m.group("of") == "environ" else getenvs).add(m.group("alias"))
    for m in _FROM_OS.finditer(source):
        for part in (m.group("group") or m.group("names") or "").split(","):
            words = part.split()
            if len(words) == 3 and words[1] == "as" and words[0] in ("environ", "getenv"):
                (environs if words[0] == "environ" else getenvs).add(words[2])
    return frozenset(environs), frozenset(getenvs)


@functools.lru_cache(maxsize=64)
def _patterns(environs: frozenset, getenvs: frozenset) -> tuple:
    """(read by literal, test by literal, read by constant, test by constant) for these names."""
    environ = "(?:" + "|".join(sorted(map(re.escape, environs))) + ")"
    getenv = "(?:" + "|".join(sorted(map(re.escape, getenvs))) + ")"
    by_call = rf"""\b(?:{environ}\s*(?:\.\s*(?:get|setdefault|pop)\s*)?[\[(]|{getenv}\s*\()\s*"""  # env["X"], env.get("X"), getenv("X")
    tested_in = rf"""\s+(?:not\s+)?in\s+(?:os\s*\.\s*)?{environ}\b"""  # "X" in os.environ
    return (
        re.compile(by_call + _NAME + r"""\s*[\]),]"""),  # the whole name: not "X_" + suffix
        re.compile(_NAME + tested_in),
        re.compile(by_call + _CONST + r"""\s*[\]),]"""),
        re.compile(r"""\b""" + _CONST + tested_in),
    )
