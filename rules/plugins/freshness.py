"""The user modules this process runs are the source their keys are computed from.

Keys hash the source on disk (code_identity.py); the code that runs is what the process imported.
In one long-lived process (the Python API, a notebook, a Ray worker) the two part when a module
is edited after its import: a helper module a plugin imports, say. So the source of every user
module (not evsys, not installed, not the standard library, not `__main__`) is recorded when
evsys first sees it: right after a config's plugins are imported, else when a key first reads
it. A key that would read a module whose file has changed since (or is gone) is an error that
says to restart the process; evsys never re-runs such a module itself, since names other modules
bound from it would keep the old code. Plugin files named by a config are the one exception: the
loader re-runs an edited one and records what it ran (`ran`).
"""

from __future__ import annotations

import functools
import os
import sys
import sysconfig
import threading
import weakref
from pathlib import Path

from evsys_build.errors import ConfigError

from .code_units import stat_stamp

_lock = threading.Lock()
_ran: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # module -> (file stat, the source it runs, as first seen)
_STDLIB = tuple(str(Path(sysconfig.get_paths()[k]).resolve()) for k in ("stdlib", "platstdlib"))
_INSTALL_DIRS = {"site-packages", "dist-packages"}


def note_loaded() -> None:
    """Record every user module imported so far (called once a config's plugins are imported:
    the closest evsys gets to their import). Only recorded: a module no key reads may change."""
    for module in list(sys.modules.values()):
        if _user_module(module):
            _record(module)


def watch_files(files) -> list:
    """`watch_modules` of the modules these source files are (an identity read them)."""
    wanted = {f for f in files if _watched_file(f)}
    return watch_modules([m for m in list(sys.modules.values()) if getattr(m, "__file__", None) in wanted]) if wanted else []


def watch_modules(modules) -> list:
    """The user modules among these, each recorded with the source it runs where not recorded for
    this module object yet (a module imported afresh from an edited file runs its new source: it
    is a new object); raises for one edited since it was recorded."""
    out = []
    for module in modules:
        if _user_module(module) and _record(module):
            check(module)
            out.append(module)
    return out


def _user_module(module) -> bool:
    file = getattr(module, "__file__", None)
    return bool(file) and getattr(module, "__name__", "") != "__main__" and _watched_file(file)


def _record(module) -> bool:
    """Record the source `module` runs, unless recorded already; False when its file cannot be read."""
    if module in _ran:
        return True
    stamp = stat_stamp(module.__file__)  # before the read: an edit between the two shows as a changed stat
    source = _read(module.__file__)
    if source is None:
        return False
    with _lock:
        _ran.setdefault(module, (stamp, source))
    return True


def check(module) -> None:
    """Raise when `module`'s file changed (or went) since this process recorded the source it
    runs: a stat when nothing changed, the bytes compared when the stat did."""
    recorded = _ran.get(module)
    if recorded is None:
        return
    stamp, before = recorded
    now = stat_stamp(module.__file__)
    if now is not None and now == stamp:
        return
    if _read(module.__file__) != before:
        raise ConfigError(
            f"{module.__file__}: edited since this process imported it ({module.__name__}); its keys would "
            "describe code that is not running: restart the process (evsys re-runs edited plugin files, not "
            "the modules they import)"
        )
    with _lock:
        _ran[module] = (now, before)  # touched, not changed


def ran(module, source: bytes | None) -> None:
    """`module` (a plugin file) was re-run from `source`; None: it failed part way, so whatever it
    holds matches no source and the next load runs it again."""
    with _lock:
        _ran[module] = (None, FAILED if source is None else source)  # no stat: the next check compares the bytes once


FAILED = b"\0a re-run that failed part way\0"  # matches no file: keys refuse the module until it runs whole


def _read(file: str) -> bytes | None:
    try:
        return Path(file).read_bytes()
    except OSError:
        return None


@functools.lru_cache(maxsize=8192)
def user_file(file: str) -> bool:
    """Whether a module file is the user's own code (or evsys's): not installed (site-packages) nor the standard library."""
    real = _real_path(file)
    return not (_INSTALL_DIRS.intersection(real.split(os.sep)) or real.startswith(_STDLIB))


@functools.lru_cache(maxsize=8192)
def _watched_file(file: str) -> bool:
    """A user's own module source: a .py file outside evsys, the standard library and installed packages."""
    if not file.endswith(".py") or not user_file(file):
        return False
    real = _real_path(file)
    return not any(real.startswith(folder) for folder in _evsys_folders())


@functools.lru_cache(maxsize=8192)
def _real_path(file: str) -> str:
    """`os.path.realpath(file)`, resolving each folder once (a process imports hundreds of modules
    from a few dozen folders): the folder's real path, then the file's own link if it is one.
    Strings, not Paths: every module of a process passes here once per command."""
    file = os.path.abspath(file)
    if os.path.islink(file):
        return os.path.realpath(file)
    folder, name = os.path.split(file)
    return os.path.join(_real_folder(folder), name)


@functools.lru_cache(maxsize=1024)
def _real_folder(folder: str) -> str:
    return os.path.realpath(folder)


@functools.lru_cache(maxsize=1)
def _evsys_folders() -> tuple[str, ...]:
    """Where evsys's own packages are (their modules change only with an upgrade: restart for it),
    each as a real path ending in a separator. Looked up by name: importing the packages here would
    put all of evsys into keys that reach this."""
    import importlib.util

    folders = [Path(__file__).resolve().parents[1]]  # evsys_rules
    for name in ("evsys_build", "evsys_sdk"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            folders.append(Path(spec.origin).resolve().parent)
    return tuple(os.path.join(str(folder), "") for folder in folders)
