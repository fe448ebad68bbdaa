"""Arms: the base config expanded into one raw config per arm (`arms:` overrides or a `sweep:` grid)."""

from __future__ import annotations

import copy
import itertools
import re
from pathlib import Path

from evsys_build.errors import ConfigError
from evsys_build.hashing import digest

from .errors import where
from .schema import ExperimentConfig
from .yaml_marks import Marks


def arm_raws(raw: dict, config: ExperimentConfig, path: Path, marks: Marks) -> list[tuple[str, dict, dict]]:
    """(arm name, raw config, overrides) per arm: explicit `arms`, a `sweep` grid, or the one default arm."""
    base = {k: v for k, v in raw.items() if k not in ("arms", "sweep")}
    if config.arms and config.sweep:
        raise ConfigError(f"{where(path, marks, ('sweep',), key=True)}: sweep: use either arms or sweep, not both")
    if config.arms:
        names = [a.name for a in config.arms]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ConfigError(f"{where(path, marks, ('arms',))}: arms: duplicate arm name {sorted(dupes)[0]!r} (names must be unique)")
        return [(a.name, _apply(base, a.set, path, marks, ("arms", i, "set")), dict(a.set)) for i, a in enumerate(config.arms)]
    if config.sweep:
        keys = list(config.sweep)
        out = []
        taken: set[str] = set()
        for values in itertools.product(*(config.sweep[k] for k in keys)):
            overrides = dict(zip(keys, values))
            name = sweep_arm_name(overrides, taken)
            out.append((name, _apply(base, overrides, path, marks, ("sweep",)), overrides))
        return out
    return [("default", base, {})]


def sweep_arm_name(overrides: dict, taken: set[str]) -> str:
    """`lora_rank=8,learning_rate=0.0001`: the last part of each path and its value, made safe as
    one path component (arm names become folders) and unique among the arms."""
    name = ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in overrides.items())
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", name).strip(".") or "arm"
    if len(name) > 80:
        name = name[:71] + "-" + digest(overrides)[:8]
    unique, n = name, 2
    while unique in taken:
        unique, n = f"{name}-{n}", n + 1
    taken.add(unique)
    return unique


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
