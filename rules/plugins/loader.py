"""Load the config's `plugins:` (module names or .py paths); an edited plugin file is re-executed."""

from __future__ import annotations

import importlib
import importlib.util
import linecache
import sys
from pathlib import Path

from evsys_build.errors import ConfigError

from ..config.errors import where
from ..config.yaml_marks import Marks


def load_plugins(plugins: list, path: Path, marks: Marks) -> None:
    """Import each plugin module (dotted name, or a .py path relative to the run dir or the config)."""
    if not isinstance(plugins, list):
        raise ConfigError(f"{where(path, marks, ('plugins',))}: plugins: must be a list of module names or .py paths")
    for i, spec in enumerate(plugins):
        at = f"{where(path, marks, ('plugins', i))}: plugins[{i}]"
        if not isinstance(spec, str):
            raise ConfigError(f"{at}: must be a module name or a .py path")
        if spec.endswith(".py"):
            _import_path(spec, path, at)
            continue
        try:
            module = importlib.import_module(spec)
        except ModuleNotFoundError as exc:
            raise ConfigError(f"{at}: cannot import {spec!r} ({exc}); install it or add its folder to PYTHONPATH") from None
        except SyntaxError as exc:
            raise _syntax_error(exc, at) from None
        _reload_if_edited(module)


def _import_path(spec: str, config_path: Path, at: str) -> None:
    candidates = [Path(spec), config_path.parent / spec]
    file = next((c for c in candidates if c.is_file()), None)
    if file is None:
        raise ConfigError(f"{at}: no such plugin file {spec!r} (looked in the run dir and beside the config)")
    name = "evsys_plugin_" + "".join(ch if ch.isalnum() else "_" for ch in str(file.resolve()))
    if name in sys.modules:
        _reload_if_edited(sys.modules[name])
        return
    module_spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as exc:
        del sys.modules[name]
        raise _syntax_error(exc, at) from None
    _loaded_source[name] = _source_bytes(module)


def _syntax_error(exc: SyntaxError, at: str) -> ConfigError:
    return ConfigError(f"{exc.filename}:{exc.lineno}:{exc.offset or 0}: {exc.msg} (in the plugin named at {at}); fix the plugin's syntax")


_loaded_source: dict[str, bytes | None] = {}  # module name -> the source it was executed from


def _source_bytes(module) -> bytes | None:
    file = getattr(module, "__file__", None)
    try:
        return Path(file).read_bytes() if file else None
    except OSError:
        return None


def _reload_if_edited(module) -> None:
    """Re-execute a plugin whose file changed since this process imported it (notebooks, the SDK):
    its key is computed from the source on disk, so the code that runs must be that source too."""
    current = _source_bytes(module)
    before = _loaded_source.setdefault(module.__name__, current)
    if current is not None and current != before:
        linecache.checkcache(module.__file__)
        # re-run in place from the bytes just read, never from a cached .pyc: its check (mtime in
        # seconds and size) misses an edit that keeps the size within the same second
        exec(compile(current, module.__file__, "exec"), vars(module))  # registrations replace the old ones
        _loaded_source[module.__name__] = current
