"""`evsys validate [--deep]`: every check that needs no GPU and no network."""

from __future__ import annotations

import itertools
from pathlib import Path

from evsys_build.errors import ConfigError

from ..data.sources import read_jsonl
from ..data.transforms import JsonlToChat
from ..evals.benchmarks import load_tasks
from ..plugins import kinds
from .loading import Arm, LoadedConfig, check_source, load_config


def validate(config_path: Path, deep: bool = False) -> list[str]:
    """Raises ConfigError on the first mistake; returns informative lines when all is well."""
    loaded = load_config(config_path)
    lines = [f"arms: {', '.join(a.name for a in loaded.arms)}"]
    if not deep:
        return lines
    seen_files: set[str] = set()
    for arm in loaded.arms:
        lines += _deep_data(loaded, arm, seen_files)
        lines += _deep_benchmarks(arm, seen_files)
        lines += _deep_model(arm)
    return lines


def _deep_data(loaded: LoadedConfig, arm: Arm, seen: set[str]) -> list[str]:
    source = kinds.sources.get(arm.config.data.source_kind)(**arm.params["data"].model_dump())
    check_source(loaded, source)
    out = []
    for file in source.files():
        if str(file) in seen:
            continue
        seen.add(str(file))
        if arm.config.data.source_kind != "jsonl":
            continue
        rows = list(read_jsonl(file))
        out.append(f"data: {file}: {len(rows)} rows")
        _check_template_fields(arm, file, rows)
    return out


def _check_template_fields(arm: Arm, file: Path, rows: list[dict]) -> None:
    """Template fields of jsonl_to_chat transforms that see raw rows must exist in every row."""
    for i, spec in enumerate(arm.config.transforms):
        transform = kinds.transforms.get(spec.kind)
        if transform is not JsonlToChat:
            if spec.kind in ("filter", "dedup", "shuffle", "sample"):
                continue  # these keep the raw row shape
            return  # a user transform may reshape rows: fields can't be checked statically
        needed = JsonlToChat(**spec.params).required_fields()
        lineno = itertools.count(1)
        for row in rows:
            line = next(lineno)
            missing = sorted(needed - set(row))
            if missing:
                raise ConfigError(
                    f"{file}:{_line_of(file, line)}: field {missing[0]!r} used by transforms[{i}].params "
                    f"is not in this row (row has: {', '.join(sorted(row))}); fix the template or the data"
                )
        return


def _line_of(file: Path, row_number: int) -> int:
    """The file line of the n-th non-blank row."""
    seen = 0
    with open(file, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                seen += 1
                if seen == row_number:
                    return lineno
    return row_number


def _deep_benchmarks(arm: Arm, seen: set[str]) -> list[str]:
    out = []
    for i, bench in enumerate(arm.config.metadata.benchmark):
        try:
            tasks = load_tasks(Path(bench.path))
        except ConfigError as exc:
            raise ConfigError(f"metadata.benchmark[{i}] ({bench.name}): {exc.message}") from None
        ks = [int(m.split("@", 1)[1]) for m in bench.metrics if m.startswith("pass@") and m.split("@", 1)[1].isdigit()]
        unknown = [m for m in bench.metrics if not (m.startswith("pass@") and m.split("@", 1)[1].isdigit())]
        if unknown:
            raise ConfigError(f"metadata.benchmark[{i}].metrics: unknown metric {unknown[0]!r} (use pass@1 or pass@k)")
        if ks and max(ks) > bench.num_samples:
            raise ConfigError(f"metadata.benchmark[{i}].num_samples: {bench.num_samples} is below k={max(ks)} of pass@{max(ks)} (set num_samples >= {max(ks)})")
        if bench.path not in seen:
            seen.add(bench.path)
            out.append(f"benchmark {bench.name} ({bench.split}): {bench.path}: {len(tasks)} tasks")
    names = [b.name for b in arm.config.metadata.benchmark]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"metadata.benchmark: two benchmarks are named {name!r} (names must be unique)")
    return out


def _deep_model(arm: Arm) -> list[str]:
    name = arm.config.model.name
    if Path(name).exists() and not Path(name).is_dir():
        raise ConfigError(f"model.name: {name!r} is a file; give a model directory or a hub id")
    if Path(name).is_dir() and not (Path(name) / "config.json").is_file():
        raise ConfigError(f"model.name: {name!r} has no config.json; is it a model directory?")
    return []
