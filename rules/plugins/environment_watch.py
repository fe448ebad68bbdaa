"""A plugin's environment reads, checked while its code runs.

A plugin's key holds the variables its modules name (`environment_reads`). A read that scan
cannot see (a name the code computes, an alias it missed, the whole environment copied or
iterated) would let a changed value be served under the old key. So while a plugin's code runs
(its construction, `files()`, each chunk of a transform, a source's rows, each verifier call),
reads of `os.environ` made from its own files are recorded, and one of a variable its key does
not hold fails the node before anything is stored, with one line naming the file:line and the
fix. Reads made by libraries the plugin calls are not the plugin's (library versions are keyed
apart). A plugin with `identity()` declares what it reads itself and is not checked.
"""

from __future__ import annotations

import _collections_abc
import contextlib
import os
import sys
import threading
from contextvars import ContextVar
from typing import Iterator

from evsys_build.errors import ConfigError

from .code_identity import user_modules_of
from .environment_reads import keyed_names

_watching: ContextVar["_Reads | None"] = ContextVar("evsys_environment_reads", default=None)
_PASSED_THROUGH = frozenset({os.getenv.__code__.co_filename, _collections_abc.Mapping.get.__code__.co_filename})  # os.getenv, Mapping.get, `in`
_install_lock = threading.Lock()
_real_paths: dict[str, str] = {}


@contextlib.contextmanager
def environment_checked(plugin, what: str) -> Iterator[None]:
    """Run a plugin's code (`plugin`: its class or function); raise a ConfigError afterwards if
    it read an environment variable its key does not hold, or the whole environment."""
    if getattr(plugin, "identity", None) is not None or _watching.get() is not None:
        yield  # declared by the plugin itself; or an outer check already watches
        return
    files = {_real(getattr(m, "__file__", None)) for m in user_modules_of(plugin)} - {None}
    if not files:
        yield
        return
    _install()
    reads = _Reads(files, set(keyed_names(plugin)))
    token = _watching.set(reads)
    try:
        yield
    finally:
        _watching.reset(token)
    reads.check(what)


class _Reads:
    """What one plugin call read of the environment that its key does not hold."""

    def __init__(self, files: set[str], keyed: set[str]):
        self.files = files
        self.keyed = keyed
        self.unkeyed: dict[str, str] = {}  # variable -> file:line of its first read
        self.whole: str | None = None  # file:line of a read of the whole environment

    def saw(self, name, frame) -> None:
        while frame is not None and frame.f_code.co_filename in _PASSED_THROUGH:
            frame = frame.f_back
        if frame is None or _real(frame.f_code.co_filename) not in self.files:
            return  # a library's read, or evsys's own
        where = f"{frame.f_code.co_filename}:{frame.f_lineno}"
        if name is None:
            self.whole = self.whole or where
        elif isinstance(name, str) and name not in self.keyed:
            self.unkeyed.setdefault(name, where)

    def check(self, what: str) -> None:
        if self.whole is not None:
            raise ConfigError(
                f"{self.whole}: {what} reads the whole environment (os.environ copied or iterated), which its key "
                "cannot hold; read the variables it needs by name (os.environ.get(\"X\")), or return what it depends on from identity()"
            )
        if self.unkeyed:
            name, where = next(iter(self.unkeyed.items()))
            raise ConfigError(
                f"{where}: {what} reads the environment variable {name}, which its key does not hold (evsys keys names it finds "
                f"written as os.environ.get(\"X\"), os.getenv(\"X\"), os.environ[\"X\"] or a constant holding one); "
                f"write the read that way, or return the value from identity()"
            )


def _install() -> None:
    """Record reads of `os.environ` (by key, and whole) for the watch of the running context."""
    environ_type = type(os.environ)
    with _install_lock:
        if getattr(environ_type, "_evsys_recorded", False):
            return
        getitem, iterate = environ_type.__getitem__, environ_type.__iter__

        def __getitem__(self, key):
            reads = _watching.get()
            if reads is not None and self is os.environ:
                reads.saw(key, sys._getframe(1))
            return getitem(self, key)

        def __iter__(self):
            reads = _watching.get()
            if reads is not None and self is os.environ:
                reads.saw(None, sys._getframe(1))
            return iterate(self)

        environ_type.__getitem__, environ_type.__iter__ = __getitem__, __iter__
        environ_type._evsys_recorded = True


def _real(path: str | None) -> str | None:
    if not path:
        return None
    real = _real_paths.get(path)
    if real is None:
        real = _real_paths[path] = os.path.realpath(path)
    return real
