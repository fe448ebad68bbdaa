"""Arms: the base config expanded into one raw config per arm (`arms:` overrides or a `sweep:` grid)."""

from __future__ import annotations

import copy
import itertools
from collections import ChainMap
import re
from pathlib import Path

from evsys_build.errors import ConfigError, HashingError
from evsys_build.hashing import canonical_json, digest
from evsys_build.store import safe_name

from .errors import where
from .schema import ExperimentConfig
from .yaml_marks import Marks


FIXED_PER_EXPERIMENT = ("experiment", "run_name", "output_dir", "plugins", "arms", "sweep")  # every arm shares these


def arm_raws(raw: dict, config: ExperimentConfig, path: Path, marks: Marks) -> list[tuple[str, dict, dict, tuple]]:
    """(arm name, raw config, overrides, where its overrides are written) per arm: explicit
    `arms`, a `sweep` grid, or the one default arm."""
    base = {k: v for k, v in raw.items() if k not in ("arms", "sweep")}
    if config.arms and config.sweep:
        raise ConfigError(f"{where(path, marks, ('sweep',), key=True)}: sweep: use either arms or sweep, not both")
    if config.arms:
        _check_names([a.name for a in config.arms], path, marks)
        out = []
        for i, a in enumerate(config.arms):
            _check_settable(a.set, path, marks, ("arms", i, "set"))
            out.append((a.name, _apply(base, a.set, path, marks, ("arms", i, "set")), dict(a.set), ("arms", i, "set")))
        return out
    if config.sweep:
        _check_settable(config.sweep, path, marks, ("sweep",))
        for key, values in config.sweep.items():
            if not values:
                raise ConfigError(f"{where(path, marks, ('sweep', key))}: sweep.{key}: no values, so no arm would run (list at least one value, or remove the line)")
            for j, value in enumerate(values):
                if any(_same_value(value, earlier) for earlier in values[:j]):
                    raise ConfigError(f"{where(path, marks, ('sweep', key, j))}: sweep.{key}: {value!r} is listed twice (each value makes an arm; drop one)")
        keys = list(config.sweep)
        out = []
        taken: set[str] = set()
        for values in itertools.product(*(config.sweep[k] for k in keys)):
            overrides = dict(zip(keys, values))
            name = sweep_arm_name(overrides, taken)
            out.append((name, _apply(base, overrides, path, marks, ("sweep",)), overrides, ("sweep",)))
        return out
    return [("default", base, {}, ())]


def _check_names(names: list[str], path: Path, marks: Marks) -> None:
    """Arm names are unique, also as the store writes them (a ref file per arm: `a b` and `a_b`
    would share one, and each arm's record would overwrite the other's)."""
    seen: dict[str, str] = {}
    for i, name in enumerate(names):
        stored = safe_name(name)
        if stored in seen:
            same = "duplicate arm name" if seen[stored] == name else f"arm names {seen[stored]!r} and {name!r} are stored under one name ({stored!r})"
            raise ConfigError(f"{where(path, marks, ('arms', i, 'name'))}: arms: {same} (names must be unique; rename one)")
        seen[stored] = name


def _check_settable(overrides: dict, path: Path, marks: Marks, at: tuple) -> None:
    for dotted_path in overrides:
        top = dotted_path.split(".", 1)[0]
        if top in FIXED_PER_EXPERIMENT:
            raise ConfigError(
                f"{where(path, marks, at + (dotted_path,), key=True)}: {dotted_path}: an arm cannot set this "
                f"(every arm of an experiment shares {top}; each arm's run dir is <output_dir>/<run_name>/<arm>): set it in the base config"
            )


def arm_marks(marks: Marks, overrides: dict, at: tuple, index: dict[tuple, list[tuple]]) -> Marks:
    """The base config's marks, with every path an arm overrides pointing at the arm's entry
    (and the paths inside a block it sets at their place there, and the blocks holding it): an
    error about an arm's value, or about a block the arm changed, names the line that set it,
    not the base config's (the base alone was valid). A view over `marks` (nothing copied);
    `index` (marks_index) finds the paths under a path without a scan of every mark."""
    if not overrides:
        return marks
    own: dict[tuple, tuple[int, int]] = {}
    for dotted_path in overrides:
        target = tuple(int(p) if p.isdigit() else p for p in dotted_path.split("."))
        entry = at + (dotted_path,)
        site = marks.get(entry) or marks.get(entry + ("<key>",))
        if site is None:
            continue
        own.update({key: site for key in index.get(target, ())})  # the base's values there: replaced
        for n in range(1, len(target)):  # a check of a whole block the arm changed (max_steps vs num_epochs) names the arm's line
            own.setdefault(target[:n], site)
        own[target] = site
        own[target + ("<key>",)] = marks.get(entry + ("<key>",), site)
        if at[:1] == ("arms",):  # a block's own paths (a sweep's entry is a list of values)
            own.update({target + key[len(entry):]: marks[key] for key in index.get(entry, ()) if len(key) > len(entry)})
    return ChainMap(own, marks)


def marks_index(marks: Marks) -> dict[tuple, list[tuple]]:
    """Every path of `marks` under each of its prefixes."""
    index: dict[tuple, list[tuple]] = {}
    for key in marks:
        for n in range(1, len(key) + 1):
            index.setdefault(key[:n], []).append(key)
    return index


def _same_value(a, b) -> bool:
    """Whether two sweep values configure the same thing: 1.0e-3 and 0.001 do, as do 2 and 2.0;
    true and 1 do not, nor [1] and [true] (containers compare by canonical JSON, which tags types)."""
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    if numbers:
        return a == b
    try:
        return canonical_json(a) == canonical_json(b)
    except HashingError:
        return False


def sweep_arm_name(overrides: dict, taken: set[str]) -> str:
    """`lora_rank=8,learning_rate=0.0001`: the last part of each path and its value, made safe as
    one path component (arm names become folders) and unique among the arms, also as the store
    writes names (`taken`: those written so far)."""
    name = ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in overrides.items())
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", name).strip(".") or "arm"
    if len(name) > 80:
        name = name[:71] + "-" + digest(overrides)[:8]
    unique, n = name, 2
    while safe_name(unique) in taken:  # unique as the store writes it too (`x,y` and `x+y` share `x_y`)
        unique, n = f"{name}-{n}", n + 1
    taken.add(safe_name(unique))
    return unique


def _apply(base: dict, overrides: dict, path: Path, marks: Marks, at: tuple) -> dict:
    """A deep copy of `base` with dotted-path overrides (`algorithm.params.lora_rank: 8`, `transforms.0.params.x`)."""
    out = _copy_tree(base)
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
                elif part not in node and parts[depth + 1].isdigit():
                    raise ConfigError(f"{where(path, marks, at + (dotted_path,), key=True)}: {dotted_path}: cannot set this path ({'.'.join(parts[:depth + 1])} is not in the base config, so it has no item {parts[depth + 1]}; set the whole list)")
                else:
                    node = node.setdefault(part, {})
            else:
                reason = f"list index {part!r} is out of range or not a number" if isinstance(node, list) else f"{'.'.join(parts[:depth])} is a value, not a block"
                raise ConfigError(f"{where(path, marks, at + (dotted_path,), key=True)}: {dotted_path}: cannot set this path ({reason})")
    return out


def _copy_tree(value):
    """A deep copy of parsed YAML: new dicts and lists all the way down, the immutable scalars
    shared (copy.deepcopy, with its memo and dispatch, was a third of a 100-arm sweep's expansion)."""
    kind = type(value)
    if kind is dict:
        return {k: _copy_tree(v) for k, v in value.items()}
    if kind is list:
        return [_copy_tree(v) for v in value]
    if kind in (str, int, float, bool) or value is None:
        return value
    return copy.deepcopy(value)  # anything else YAML makes (a date, a set): the general copy
