"""A plugin's environment reads, checked while its code runs.

A plugin's key holds the variables its modules name (`environment_reads`). A read that scan
cannot see (a name the code computes, an alias it missed, the whole environment copied or
iterated) would let a changed value be served under the old key. So while a plugin's code runs
(its construction, `files()`, each chunk of a transform, a source's rows, each verifier call),
reads of `os.environ` made from its own files, on any thread of this process (a pool it starts
included), are recorded, and one of a variable its key does not hold fails the node before
anything is stored, with one line naming the file:line and the fix. Reads made by libraries the
plugin calls are not the plugin's (library versions are keyed apart), a credential
(`environment_reads.is_credential`) keys nothing, and processes the plugin starts are not
watched. A plugin with `identity()` declares what it reads itself and is not checked.
"""

from __future__ import annotations

import _collections_abc
import contextlib
import os
import sys
import threading
from typing import Iterator

import evsys_build
from evsys_build.errors import ConfigError

from .code_identity import user_modules_of
from .environment_reads import is_credential, keyed_names, keyed_names_of_module

_watching: tuple["_Reads", ...] = ()  # the checks running now, on any thread (replaced whole under _install_lock)
_PASSED_THROUGH = frozenset({os.getenv.__code__.co_filename, _collections_abc.Mapping.get.__code__.co_filename})  # os.getenv, Mapping.get, `in`
_install_lock = threading.Lock()
_NOT_USERS = tuple(os.path.join(os.path.realpath(folder), "") for folder in (
    sys.base_prefix, sys.prefix,  # the standard library, the environment's packages
    os.path.dirname(os.path.dirname(__file__)), os.path.dirname(evsys_build.__file__),  # evsys's own (an editable install too)
))
_real_paths: dict[str, str] = {}


@contextlib.contextmanager
def environment_checked(plugin, what: str) -> Iterator[None]:
    """Run a plugin's code (`plugin`: its class or function); raise a ConfigError afterwards if
    it read an environment variable its key does not hold, or the whole environment."""
    if getattr(plugin, "identity", None) is not None:
        yield  # declared by the plugin itself
        return
    files = {_real(getattr(m, "__file__", None)) for m in user_modules_of(plugin)} - {None}
    if not files:
        yield
        return
    reads = _Reads(files, set(keyed_names(plugin)))
    with _recording(reads):
        yield
    reads.check(what)


class _Reads:
    """What one plugin call read of the environment that its key does not hold."""

    def __init__(self, files: set[str], keyed: set[str]):
        self.files = files
        self.keyed = keyed
        self.unkeyed: dict[str, str] = {}  # variable -> file:line of its first read
        self.whole: str | None = None  # file:line of a read of the whole environment
        self.set: set[str] = set()  # variables the plugin set itself while it ran

    def saw(self, name, frame) -> None:
        frame = _reader(frame)
        if frame is None or _real(frame.f_code.co_filename) not in self.files:
            return  # a library's read, or evsys's own
        where = f"{frame.f_code.co_filename}:{frame.f_lineno}"
        if name is None:
            self.whole = self.whole or where
        elif isinstance(name, str) and name not in self.keyed and name not in self.set and not is_credential(name):
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


@contextlib.contextmanager
def imports_checked() -> Iterator[None]:
    """Import plugin modules; raise a ConfigError afterwards if a module of yours read, while it
    ran, an environment variable the scan of its own file does not key (a computed name, the whole
    environment): `STYLE = os.environ[APP + "_STYLE"]` at module level would be held unkeyed."""
    reads = _ImportReads()
    with _recording(reads):
        yield
    reads.check()


@contextlib.contextmanager
def _recording(reads) -> Iterator[None]:
    """Reads of the environment, on any thread, go to `reads` (besides any other check running)."""
    global _watching
    _install()
    with _install_lock:
        _watching = _watching + (reads,)
    try:
        yield
    finally:
        with _install_lock:
            _watching = tuple(r for r in _watching if r is not reads)


class _ImportReads:
    """Reads made by user modules while they are imported, by file."""

    def __init__(self):
        self.by_file: dict[str, dict] = {}  # real path -> {variable (None: the whole environment): file:line}
        self.set: set[str] = set()  # variables a module set itself while it ran

    def saw(self, name, frame) -> None:
        frame = _reader(frame)
        if frame is None:
            return
        file = _real(frame.f_code.co_filename)
        if file is None or not _user_file(file) or not (name is None or isinstance(name, str)):
            return
        self.by_file.setdefault(file, {}).setdefault(name, f"{frame.f_code.co_filename}:{frame.f_lineno}")

    def check(self) -> None:
        if not self.by_file:
            return
        modules = {_real(getattr(m, "__file__", None)): m for m in list(sys.modules.values()) if getattr(m, "__file__", None)}
        for file, names in self.by_file.items():
            module = modules.get(file)
            keyed = set(keyed_names_of_module(module)) if module is not None else set()
            for name, where in names.items():
                if name is None:
                    raise ConfigError(f"{where}: a plugin module reads the whole environment while it is imported (os.environ copied or "
                                      "iterated), which no key can hold; read the variables it needs by name (os.environ.get(\"X\"))")
                if name not in keyed and name not in self.set and not is_credential(name):
                    raise ConfigError(f"{where}: a plugin module reads the environment variable {name} while it is imported, which no key "
                                      "holds (evsys keys names it finds written as os.environ.get(\"X\"), os.getenv(\"X\"), "
                                      "os.environ[\"X\"] or a constant holding one); write the read that way")


def _user_file(file: str) -> bool:
    """A file of yours: not the standard library's, an installed package's, or evsys's own."""
    if file.startswith(_NOT_USERS) or "site-packages" in file or "dist-packages" in file:
        return False
    return True


def _install() -> None:
    """Record reads of `os.environ` (by key, and whole) for the watch of the running context."""
    environ_type = type(os.environ)
    with _install_lock:
        if getattr(environ_type, "_evsys_recorded", False):
            return
        getitem, setitem, iterate = environ_type.__getitem__, environ_type.__setitem__, environ_type.__iter__
        watched = {id(os.environ), id(getattr(os, "environb", None))}  # by identity: `in` on the mappings would compare them whole

        def __getitem__(self, key):
            if _watching and id(self) in watched:
                frame = sys._getframe(1)
                for reads in _watching:
                    reads.saw(_text(key), frame)
            return getitem(self, key)

        def __setitem__(self, key, value):
            if _watching and id(self) in watched:
                for reads in _watching:
                    reads.set.add(_text(key))  # reading back what the plugin set reads nothing from outside
            return setitem(self, key, value)

        def __iter__(self):
            if _watching and id(self) in watched:
                frame = sys._getframe(1)
                for reads in _watching:
                    reads.saw(None, frame)
            return iterate(self)

        environ_type.__getitem__, environ_type.__setitem__, environ_type.__iter__ = __getitem__, __setitem__, __iter__
        environ_type._evsys_recorded = True


def _reader(frame):
    """The frame that asked for the variable: past `os.getenv`, `Mapping.get` and `in`."""
    while frame is not None and frame.f_code.co_filename in _PASSED_THROUGH:
        frame = frame.f_back
    return frame


def _text(key):
    return os.fsdecode(key) if isinstance(key, bytes) else key


def _real(path: str | None) -> str | None:
    if not path:
        return None
    real = _real_paths.get(path)
    if real is None:
        real = _real_paths[path] = os.path.realpath(path)
    return real
