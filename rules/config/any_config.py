"""A config given any way the Python API takes it: a path, a dict, an ExperimentConfig, or an
already loaded config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import yaml

from evsys_build.errors import ConfigError

from .loading import PYTHON_CONFIG, LoadedConfig, load_config, loaded_from_raw
from .schema import ExperimentConfig

ConfigLike = Union[str, "os.PathLike[str]", dict, ExperimentConfig, LoadedConfig]


def load_any(config: ConfigLike, base_dir: str | os.PathLike | None = None) -> LoadedConfig:
    """Validate `config` completely (plugins, every block, every arm); a mistake is one ConfigError.

    Relative paths in it resolve against the working directory, or against `base_dir` when given
    (a relative config path too).
    """
    if isinstance(config, LoadedConfig):
        return config if base_dir is None else loaded_from_raw(config.raw, config.path, config.marks, config.text, base_dir)
    if isinstance(config, (str, os.PathLike)):
        return load_config(Path(config), base_dir)
    if isinstance(config, ExperimentConfig):
        raw = config.model_dump(mode="python", exclude_unset=True)
    elif isinstance(config, dict):
        raw = _plain(config)
    else:
        raise ConfigError(
            f"Experiment: a config is a path, a dict or an ExperimentConfig, not {type(config).__name__!r} "
            "(e.g. Experiment('config.yaml'), Experiment({...}), Experiment(load_config('config.yaml')))"
        )
    try:
        text = yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError:  # a value YAML cannot write: the run records a readable form instead
        text = repr(raw)
    return loaded_from_raw(raw, Path(PYTHON_CONFIG), {}, text, base_dir)


def _plain(value: Any) -> Any:
    """A copy with paths as strings and tuples as lists: what the YAML loader would have built."""
    if isinstance(value, dict):
        return {(str(k) if isinstance(k, os.PathLike) else k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
