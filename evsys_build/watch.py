"""What compiling a config read: files and folders with their stat identities.

While a `Watcher` is active, the frontend reports every file whose bytes or listing decide a
key (the config, data files and the folders their globs list, model and tokenizer files,
benchmark tasks, plugin modules). The no-op fast path (fastpath.py) trusts a compiled graph only
while every one of them is unchanged. Outside a watch, reporting costs nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import sysconfig
import time
from pathlib import Path
from typing import Iterator

from .tree import walk

RACY_NS = 2_000_000_000  # a file changed this recently may change again within its mtime tick (git's racy-clean rule); every stat-keyed cache uses this one

_current: contextvars.ContextVar["Watcher | None"] = contextvars.ContextVar("evsys_watcher", default=None)


def stamp(path: str) -> list | None:
    """(size, mtime_ns, inode, ctime_ns, device) of a file or folder; None when it is absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, st.st_dev]


class Watcher:
    """Stat identities of everything a compile depended on; `broken` once something was read
    that cannot be watched this way (a network lookup, a dataset library's cache)."""

    def __init__(self):
        self.paths: dict[str, list | None] = {}
        self.broken: str | None = None

    def add(self, path) -> None:
        if path in self.paths:  # already an absolute, normalised name: stamped
            return
        name = os.path.abspath(path)
        if name not in self.paths:
            self.paths[name] = stamp(name)

    def refuse(self, why: str) -> None:
        self.broken = self.broken or why

    def add_python_modules(self) -> None:
        """Every imported module that is not installed library code (evsys's own and user plugins),
        and every folder on sys.path but the run dir: installing, upgrading or removing a library
        changes its folder's listing, so a new pydantic is never assumed. (The run dir, first on
        sys.path under `python -m`, changes with every file written there; the plugin loader
        watches it where a module plugin could be shadowed from it.)"""
        here = os.getcwd()
        for folder in sys.path:
            if folder and os.path.isdir(folder) and os.path.abspath(folder) != here:
                self.add(folder)
        installed = tuple(str(Path(sysconfig.get_paths()[k]).resolve()) for k in ("stdlib", "platstdlib"))
        for module in list(sys.modules.values()):
            file = getattr(module, "__file__", None)
            if not file:
                continue
            parts = set(Path(file).parts)
            if {"site-packages", "dist-packages"} & parts and not (parts & {"evsys_build", "evsys_rules", "evsys_sdk"}):
                continue
            if file.startswith(installed):
                continue
            self.add(file)

    def trustworthy(self) -> bool:
        """No refusal, and nothing changed so recently that its stat identity cannot be trusted."""
        now = time.time_ns()
        return self.broken is None and all(s is None or now - s[1] >= RACY_NS for s in self.paths.values())


@contextlib.contextmanager
def watching() -> Iterator[Watcher]:
    watcher = Watcher()
    token = _current.set(watcher)
    try:
        yield watcher
    finally:
        _current.reset(token)


def watch(path) -> None:
    """Report a file or folder the compile depends on (a no-op outside `watching()`)."""
    watcher = _current.get()
    if watcher is not None:
        watcher.add(path)


def watch_tree(folder) -> None:
    """Report a folder and its subfolders: their listings decide which files are read."""
    if _current.get() is None:
        return
    watch(folder)  # absent, or a file: its stamp says so
    for root, _files in walk(folder):  # through links to folders, as glob's `**` does
        watch(root)


@contextlib.contextmanager
def listings_watched(what: str) -> Iterator[None]:
    """While plugin code decides which files a node reads (a `files()` call), report every folder
    it lists and every file it opens (Python's audit events: os.scandir, os.listdir, open; glob,
    pathlib and os.walk list through them), so a file added where it looked, in a folder no param
    names, is seen by the fast paths. A listing by file descriptor cannot be followed. Whether a
    path exists (os.stat) is no audit event: a plugin that decides by that watches the path itself."""
    if _current.get() is None:
        yield
        return
    _install_listing_hook()
    token = _listing.set(what)
    try:
        yield
    finally:
        _listing.reset(token)


_listing: contextvars.ContextVar[str | None] = contextvars.ContextVar("evsys_listing", default=None)
_LISTING_EVENTS = frozenset({"os.scandir", "os.listdir", "open"})
_hook_installed = False


def _install_listing_hook() -> None:
    global _hook_installed
    if not _hook_installed:
        _hook_installed = True
        sys.addaudithook(_on_audit_event)  # for the life of the process: it costs a set lookup per event


def _on_audit_event(event: str, args: tuple) -> None:
    if event not in _LISTING_EVENTS:
        return
    what = _listing.get()
    if what is None:
        return
    path = args[0] if args else None
    if path is None:  # os.listdir() / os.scandir(): the working directory
        path = "."
    if isinstance(path, int):
        unwatchable(f"{what} lists or opens by file descriptor")
    elif isinstance(path, (str, bytes, os.PathLike)):
        watch(os.fsdecode(path))


def unwatchable(why: str) -> None:
    """Report something the compile depended on that stat identities cannot follow."""
    watcher = _current.get()
    if watcher is not None:
        watcher.refuse(why)
