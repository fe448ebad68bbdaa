"""Load the config's `plugins:` (module names or .py paths); an edited plugin file is re-executed."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import linecache
import os
import sys
import traceback
from pathlib import Path

from evsys_build.errors import ConfigError, EvsysError
from evsys_build.watch import watch

from ..config.errors import where
from ..config.yaml_marks import Marks
from .freshness import note_loaded, ran as ran_source
from .code_identity import forget_identities
from .environment_watch import imports_checked


def load_plugins(plugins: list, path: Path, marks: Marks) -> None:
    """Import each plugin module (dotted name, or a .py path relative to the working directory or the config)."""
    if not isinstance(plugins, list):
        raise ConfigError(f"{where(path, marks, ('plugins',))}: plugins: must be a list of module names or .py paths")
    with imports_checked():  # a module-level read of a variable no key holds fails here
        for i, spec in enumerate(plugins):
            _load_one(spec, f"{where(path, marks, ('plugins', i))}: plugins[{i}]", path)
    note_loaded()  # the source each user module runs, as near its import as evsys gets


def _load_one(spec, at: str, path: Path) -> None:
    if not isinstance(spec, str):
        raise ConfigError(f"{at}: must be a module name or a .py path")
    if spec.endswith(".py"):
        _import_path(spec, path, at)
        return
    with _one_line_errors(at):
        try:
            module = importlib.import_module(spec)
        except ModuleNotFoundError as exc:
            raise ConfigError(f"{at}: cannot import {spec!r} ({exc}); install it or add its folder to PYTHONPATH") from None
    _reload_if_edited(module, at)
    _watch_shadowing(spec)


def _watch_shadowing(spec: str) -> None:
    """Report the sys.path folders searched before the one a module plugin was found in: a
    `name.py` or `name/` appearing in one (the working directory, under `python -m`) would be imported instead."""
    file = getattr(sys.modules.get(spec.split(".")[0]), "__file__", None)
    found = None  # the sys.path folder that holds the module or its package
    if file:
        found = os.path.dirname(file)
        if os.path.basename(file) == "__init__.py":
            found = os.path.dirname(found)
    for folder in sys.path:
        folder = os.path.abspath(folder or ".")
        if folder == found:
            return
        watch(folder)


def _import_path(spec: str, config_path: Path, at: str) -> None:
    candidates = [Path(spec), config_path.parent / spec]
    file = next((c for c in candidates if c.is_file()), None)
    for looked in candidates[: candidates.index(file) if file is not None else len(candidates)]:
        watch(looked)  # a file appearing where the lookup looks first would be the plugin
    if file is None:
        raise ConfigError(f"{at}: no such plugin file {spec!r} (looked in the working directory and beside the config)")
    name = "evsys_plugin_" + "".join(ch if ch.isalnum() else "_" for ch in str(file.resolve()))
    _importable_beside(file)
    if name in sys.modules:
        _reload_if_edited(sys.modules[name], at)
        return
    module_spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(module_spec)
    source = file.read_bytes()
    sys.modules[name] = module
    try:
        with _one_line_errors(at):
            # from the bytes just read, never a cached .pyc (its mtime-in-seconds check misses a
            # quick edit), and those bytes are what the key's source must be
            exec(compile(source, module.__file__, "exec"), vars(module))
    except BaseException:
        del sys.modules[name]  # half-run: the next load runs it again, never skips it as loaded
        raise
    _loaded_source[name] = source
    ran_source(module, source)


def _importable_beside(file: Path) -> None:
    """Put a plugin file's folder on sys.path (last: it never shadows an installed module), so
    `from myhelper import x` finds a helper beside it however evsys was started, as Python does
    for a script's folder."""
    folder = str(file.resolve().parent)
    if not any(os.path.abspath(entry or ".") == folder for entry in sys.path):
        sys.path.append(folder)
        importlib.invalidate_caches()


@contextlib.contextmanager
def _one_line_errors(at: str):
    """A plugin's own failure while its module runs, as one line: its syntax error, or its line
    that raised (an evsys error it raises passes as it is)."""
    try:
        yield
    except SyntaxError as exc:
        raise _syntax_error(exc, at) from None
    except EvsysError:
        raise
    except Exception as exc:  # noqa: BLE001 - the plugin's own code failed: say where, in one line
        raise _import_error(exc, at) from None


def _syntax_error(exc: SyntaxError, at: str) -> ConfigError:
    return ConfigError(f"{exc.filename}:{exc.lineno}:{exc.offset or 0}: {exc.msg} (in the plugin named at {at}); fix the plugin's syntax")


def _import_error(exc: Exception, at: str) -> ConfigError:
    """One line for a plugin whose module raised while it ran: the plugin's own line that raised
    (its deepest frame outside the standard library and site-packages), and the exception."""
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if not _library_file(f.filename)] or frames
    place = f"{own[-1].filename}:{own[-1].lineno}: " if own else ""
    fix = "install it or add its folder to PYTHONPATH" if isinstance(exc, ImportError) else "fix the plugin"
    message = " ".join(str(exc).split())  # one line, whatever the exception says
    return ConfigError(f"{place}{type(exc).__name__}: {message} (loading the plugin named at {at}); {fix}")


def _library_file(filename: str) -> bool:
    return filename.startswith("<") or "site-packages" in filename or filename.startswith(sys.base_prefix)


_loaded_source: dict[str, bytes | None] = {}  # module name -> the source it was executed from


def _source_bytes(module) -> bytes | None:
    file = getattr(module, "__file__", None)
    try:
        return Path(file).read_bytes() if file else None
    except OSError:
        return None


def _reload_if_edited(module, at: str) -> None:
    """Re-execute a plugin whose file changed since this process imported it (notebooks, the SDK):
    its key is computed from the source on disk, so the code that runs must be that source too.
    A re-run that fails leaves the plugin half-run: it is marked so the next load runs it again,
    and no key is computed from it meanwhile."""
    current = _source_bytes(module)
    before = _loaded_source.setdefault(module.__name__, current)
    if current is not None and current != before:
        linecache.checkcache(module.__file__)
        _loaded_source[module.__name__] = None
        ran_source(module, None)
        # re-run in place from the bytes just read, never from a cached .pyc: its check (mtime in
        # seconds and size) misses an edit that keeps the size within the same second
        with _one_line_errors(at):
            exec(compile(current, module.__file__, "exec"), vars(module))  # registrations replace the old ones
        _loaded_source[module.__name__] = current
        ran_source(module, current)
        forget_identities()
