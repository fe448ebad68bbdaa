"""The user modules this process runs are the source their keys were computed from.

Keys hash the source on disk (code_identity.py); the code that runs is what the process imported.
In one long-lived process (the Python API, a notebook, a Ray worker) the two part when a module
is edited after its import: a helper module a plugin imports, say. So every user module a key
was computed from (not evsys, not installed, not the standard library) is recorded with the
bytes it had then; loading a config reloads those edited since (from the bytes on disk, never a
cached .pyc), and a key that would read an edited module this process has not reloaded is an
error rather than a key for code that does not run.
"""

from __future__ import annotations

import functools
import importlib.util
import linecache
import sys
import threading
import weakref
from pathlib import Path

from evsys_build.errors import ConfigError

_lock = threading.Lock()
_ran: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # module -> the source it runs (as a key first saw it)


def note_files(files) -> None:
    """Record the source of the user modules these files are (a key was computed from them now)."""
    wanted = [f for f in files if not _evsys_file(f)]
    if wanted:
        note(_modules_of(wanted))


def note(modules) -> None:
    """Record the source of these user modules, where not recorded for this module object yet (a
    module imported afresh from an edited file runs its new source: it is a new object)."""
    for module in modules:
        file = getattr(module, "__file__", None)
        if file and module not in _ran and not _evsys_file(file):
            source = _read(file)
            if source is not None:
                with _lock:
                    _ran.setdefault(module, source)


def check_files(files) -> None:
    wanted = [f for f in files if not _evsys_file(f)]
    for module in _modules_of(wanted) if wanted else ():
        check(module)


def check(module) -> None:
    """Raise when `module`'s file was edited since this process ran it and it was not reloaded."""
    before = _ran.get(module)
    if before is not None and _read(module.__file__) not in (before, None):
        raise ConfigError(
            f"{module.__file__}: edited since this process imported it, and evsys reloads edited modules only when a config is loaded; "
            "load the config again (a new Experiment) or restart the process"
        )


def reload_edited() -> list[str]:
    """Re-execute, in place, every recorded module edited since: the modules a module imports
    first (they come later in sys.modules). Returns the names reloaded; the caller re-runs the
    plugins, so names they bound from these modules are bound again."""
    edited = {}
    for module, before in list(_ran.items()):
        source = _read(module.__file__)
        if source is not None and source != before:
            edited[module] = source
    if not edited:
        return []
    order = [m for m in list(sys.modules.values()) if m in edited]
    done = []
    for module in reversed(order):
        linecache.checkcache(module.__file__)
        exec(compile(edited[module], module.__file__, "exec"), vars(module))  # raises like an import would
        with _lock:
            _ran[module] = edited[module]
        done.append(module.__name__)
    return done


def ran(module, source: bytes) -> None:
    """`module` was re-executed from `source` (where a key was computed from it)."""
    with _lock:
        if module in _ran:
            _ran[module] = source


def _modules_of(files: list[str]) -> list:
    wanted = set(files)
    return [m for m in list(sys.modules.values()) if getattr(m, "__file__", None) in wanted]


def _read(file: str) -> bytes | None:
    try:
        return Path(file).read_bytes()
    except OSError:
        return None


@functools.lru_cache(maxsize=4096)
def _evsys_file(file: str) -> bool:
    path = Path(file).resolve()
    return any(path.is_relative_to(folder) for folder in _evsys_folders())


@functools.lru_cache(maxsize=1)
def _evsys_folders() -> tuple[Path, ...]:
    """Where evsys's own packages are (their modules change only with an upgrade: restart for it).
    Looked up by name: importing the packages here would put all of evsys into keys that reach this."""
    folders = [Path(__file__).resolve().parents[1]]  # evsys_rules
    for name in ("evsys_build", "evsys_sdk"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            folders.append(Path(spec.origin).resolve().parent)
    return tuple(folders)
