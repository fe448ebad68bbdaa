"""Which config values are paths, and resolving them against a base folder (the Python API's
`base_dir=`). Keys never hold paths (sources key on file bytes, evals on task content), so making
a path absolute changes no key."""

from __future__ import annotations

import copy
from pathlib import Path

SOURCE_PATH_PARAMS = ("path", "paths")  # data.params entries that name files (a source may add `path_params`)


def rebase_paths(raw: dict, base: Path) -> dict:
    """A copy of `raw` with every relative path made absolute under `base`: data.path and the
    source's path params, benchmark paths, output_dir, .py plugins, a model folder that exists
    under `base`, and the same paths where `arms:` or `sweep:` set them."""
    out = copy.deepcopy(raw)
    data = out.get("data")
    if isinstance(data, dict):
        _rebase_key(data, "path", base)
        params = data.get("params")
        if isinstance(params, dict):
            for key in _source_path_params(data.get("source_kind", "jsonl")):
                _rebase_key(params, key, base)
    _rebase_key(out, "output_dir", base)
    if isinstance(out.get("plugins"), list):
        out["plugins"] = [_rebased(p, base) if isinstance(p, str) and p.endswith(".py") else p for p in out["plugins"]]
    model = out.get("model")
    if isinstance(model, dict) and isinstance(model.get("name"), str) and (base / model["name"]).is_dir():
        _rebase_key(model, "name", base)
    benchmarks = (out.get("metadata") or {}).get("benchmark") if isinstance(out.get("metadata"), dict) else None
    for bench in benchmarks if isinstance(benchmarks, list) else []:
        if isinstance(bench, dict):
            _rebase_key(bench, "path", base)
    for arm in out.get("arms") or [] if isinstance(out.get("arms"), list) else []:
        if isinstance(arm, dict) and isinstance(arm.get("set"), dict):
            arm["set"] = {k: _rebase_override(k, v, base) for k, v in arm["set"].items()}
    if isinstance(out.get("sweep"), dict):
        out["sweep"] = {k: [_rebase_override(k, v, base) for v in vs] if isinstance(vs, list) else vs for k, vs in out["sweep"].items()}
    return out


def is_path_override(dotted_path: str) -> bool:
    """Whether an `arms:`/`sweep:` dotted path names a path value."""
    parts = dotted_path.split(".")
    return (
        dotted_path in ("data.path", "output_dir")
        or (parts[:2] == ["data", "params"] and len(parts) == 3 and parts[2] in SOURCE_PATH_PARAMS)
        or (parts[:2] == ["metadata", "benchmark"] and parts[-1] == "path")
    )


def _rebase_override(dotted_path: str, value, base: Path):
    return _rebased(value, base) if is_path_override(dotted_path) else value


def _source_path_params(kind) -> tuple[str, ...]:
    from ..plugins import kinds  # lazily: config modules import no registries at import time

    extra = ()
    if isinstance(kind, str) and kind in kinds.sources:
        extra = tuple(getattr(kinds.sources.get(kind), "path_params", ()))
    return SOURCE_PATH_PARAMS + extra


def _rebase_key(block: dict, key: str, base: Path) -> None:
    if key in block:
        block[key] = _rebased(block[key], base)


def _rebased(value, base: Path):
    if isinstance(value, list):
        return [_rebased(v, base) for v in value]
    if not isinstance(value, str) or not value or Path(value).expanduser().is_absolute():
        return value
    return str(base / value)
