"""Load a config file: YAML with marks → plugins → pydantic models → per-kind params → arms."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ValidationError

from evsys_build.errors import ConfigError

from . import kinds
from .config import ExperimentConfig
from .config_errors import config_error, dotted, where
from .yaml_marks import Marks, load_yaml_with_marks


@dataclass
class Arm:
    name: str
    config: ExperimentConfig
    params: dict = field(default_factory=dict)  # validated per-kind Config objects, by dotted block


@dataclass
class LoadedConfig:
    path: Path
    raw: dict
    marks: Marks
    config: ExperimentConfig
    arms: list[Arm]

    @property
    def experiment_name(self) -> str:
        if self.config.experiment:
            return self.config.experiment.name
        return self.config.run_name or self.path.stem

    @property
    def run_name(self) -> str:
        return self.config.run_name or self.experiment_name

    @property
    def output_dir(self) -> Path:
        if self.config.output_dir:
            return Path(self.config.output_dir)
        return self.path.parent / "outputs"


def load_config(path: Path | str) -> LoadedConfig:
    """Parse and validate a config file completely; any mistake is one ConfigError line."""
    path = Path(path)
    raw, marks = load_yaml_with_marks(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}:1:1: the config must be a mapping of blocks (data, model, algorithm, ...)")
    load_plugins(raw.get("plugins") or [], path, marks)
    config = _validate(ExperimentConfig, raw, path, marks, ())
    arms = [Arm(name, _validate(ExperimentConfig, arm_raw, path, marks, ()), {}) for name, arm_raw in _arm_raws(raw, config, path, marks)]
    for arm in arms:
        arm.params = validate_kind_params(arm.config, path, marks)
    return LoadedConfig(path, raw, marks, config, arms)


def check_source(loaded: LoadedConfig, source) -> None:
    """The source's own file checks, with the error pointed at `data.path` in the config."""
    try:
        source.check()
    except ConfigError as exc:
        raise ConfigError(f"{where(loaded.path, loaded.marks, ('data', 'path'))}: {exc.message}") from None


def _validate(model: type[BaseModel], data, path: Path, marks: Marks, prefix: tuple):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, model, path, marks, prefix) from None


def validate_kind_params(config: ExperimentConfig, path: Path, marks: Marks) -> dict:
    """Instantiate every `{kind, params}` block's own Config class; returns them by dotted block."""
    out = {}
    blocks = [(("data",), kinds.sources, config.data.source_kind, _source_params(config))]
    blocks += [(("transforms", i), kinds.transforms, t.kind, t.params) for i, t in enumerate(config.transforms)]
    blocks.append((("backend",), kinds.backends, config.backend.kind, config.backend.params))
    blocks.append((("algorithm",), kinds.algorithms, config.algorithm.kind, config.algorithm.params))
    blocks += [(("callbacks", i), kinds.callbacks, c.kind, c.params) for i, c in enumerate(config.callbacks)]
    for block, registry, kind, params in blocks:
        kind_path = block + (("source_kind",) if block == ("data",) else ("kind",))
        impl = registry.get(kind, where=f"{where(path, marks, kind_path)}: {dotted(kind_path)}")
        cfg_cls = getattr(impl, "Config", None)
        if cfg_cls is None:
            out[dotted(block)] = None
            continue
        prefix = block if block == ("data",) else block + ("params",)
        out[dotted(block)] = _validate(cfg_cls, params, path, marks, prefix)
    return out


def _source_params(config: ExperimentConfig) -> dict:
    params = dict(config.data.params)
    if config.data.path is not None:
        params["path"] = config.data.path
    return params


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
        import linecache

        linecache.checkcache(module.__file__)
        module.__spec__.loader.exec_module(module)  # re-run in place; registrations replace the old ones
        _loaded_source[module.__name__] = current


def _arm_raws(raw: dict, config: ExperimentConfig, path: Path, marks: Marks) -> list[tuple[str, dict]]:
    """(arm name, raw config) per arm: explicit `arms`, a `sweep` grid, or the one default arm."""
    base = {k: v for k, v in raw.items() if k not in ("arms", "sweep")}
    if config.arms and config.sweep:
        raise ConfigError(f"{where(path, marks, ('sweep',), key=True)}: sweep: use either arms or sweep, not both")
    if config.arms:
        names = [a.name for a in config.arms]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ConfigError(f"{where(path, marks, ('arms',))}: arms: duplicate arm name {sorted(dupes)[0]!r} (names must be unique)")
        return [(a.name, _apply(base, a.set, path, marks, ("arms", i, "set"))) for i, a in enumerate(config.arms)]
    if config.sweep:
        keys = list(config.sweep)
        out = []
        for values in itertools.product(*(config.sweep[k] for k in keys)):
            name = ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in zip(keys, values))
            out.append((name, _apply(base, dict(zip(keys, values)), path, marks, ("sweep",))))
        return out
    return [("default", base)]


def _apply(base: dict, overrides: dict, path: Path, marks: Marks, at: tuple) -> dict:
    """A deep copy of `base` with dotted-path overrides (`algorithm.params.lora_rank: 8`, `transforms.0.params.x`)."""
    out = copy.deepcopy(base)
    for dotted_path, value in overrides.items():
        parts = dotted_path.split(".")
        node = out
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                reason = f"list index {part!r} is out of range or not a number" if isinstance(node, list) else f"{'.'.join(parts[:depth])} is a value, not a block"
                raise ConfigError(f"{where(path, marks, at + (dotted_path,), key=True)}: {dotted_path}: cannot set this path ({reason})")
    return out
