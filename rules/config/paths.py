"""Which config values are paths, and resolving them against a base folder (the Python API's
`base_dir=`). Keys never hold paths (sources key on file bytes, evals on task content), so making
a path absolute changes no key."""

from __future__ import annotations

import copy
from pathlib import Path

SOURCE_PATH_PARAMS = ("path", "paths")  # data.params entries that name files (a source may add `path_params`)


def rebase_paths(raw: dict, base: Path) -> dict:
    """A copy of `raw` with every relative path made absolute under `base`: data.path and the
    source's path params, a callback's path params (`log_dir`), benchmark paths, output_dir, .py
    plugins, a model folder that exists under `base`, and the same paths wherever `arms:` or
    `sweep:` set them (a dotted path, or a whole block that holds them)."""
    out = copy.deepcopy(raw)
    _rebase_config(out, base)
    data = out.get("data") if isinstance(out.get("data"), dict) else {}
    for arm in out.get("arms") or [] if isinstance(out.get("arms"), list) else []:
        if isinstance(arm, dict) and isinstance(arm.get("set"), dict):
            kind = _set_source_kind(arm["set"], data.get("source_kind", "jsonl"))
            arm["set"] = {k: _rebase_override(k, v, base, kind, out) for k, v in arm["set"].items()}
    if isinstance(out.get("sweep"), dict):
        kind = data.get("source_kind", "jsonl")
        out["sweep"] = {k: [_rebase_override(k, v, base, kind, out) for v in vs] if isinstance(vs, list) else vs for k, vs in out["sweep"].items()}
    return out


def _rebase_config(out: dict, base: Path) -> None:
    """Rebase, in place, the path values of a config (or of the part of one an override builds)."""
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
    callbacks = out.get("callbacks")
    for block in callbacks if isinstance(callbacks, list) else []:
        if isinstance(block, dict) and isinstance(block.get("params"), dict):
            for key in _callback_path_params(block.get("kind")):
                _rebase_key(block["params"], key, base)


def _rebase_override(dotted_path: str, value, base: Path, source_kind, config: dict):
    """The value an `arms:`/`sweep:` entry sets at `dotted_path`, rebased as it would be at that
    place in a config: the value is put into an otherwise empty config, which is rebased (with the
    kinds `config` has there: which params of a source or callback are paths)."""
    parts = dotted_path.split(".")
    if not parts[0] or parts[0].isdigit():
        return value
    skeleton = copy.deepcopy(value)
    for part in reversed(parts):
        skeleton = [skeleton] if part.isdigit() else {part: skeleton}
    data = skeleton.get("data")
    borrowed = isinstance(data, dict) and "source_kind" not in data
    if borrowed:
        data["source_kind"] = source_kind  # which params of the source are paths
    callback = _overridden_callback(parts, skeleton, config)
    _rebase_config(skeleton, base)
    if borrowed:
        del data["source_kind"]
    if callback is not None:
        del callback["kind"]
    node = skeleton
    for part in parts:
        node = node[0] if part.isdigit() else node[part]
    return node


def _overridden_callback(parts: list[str], skeleton: dict, config: dict) -> dict | None:
    """For `callbacks.<i>.params...`: the skeleton's callback block, given the kind the config's
    callback <i> has (removed again after rebasing); None for any other path."""
    if len(parts) < 2 or parts[0] != "callbacks" or not parts[1].isdigit():
        return None
    blocks, index = config.get("callbacks"), int(parts[1])
    kind = blocks[index].get("kind") if isinstance(blocks, list) and index < len(blocks) and isinstance(blocks[index], dict) else None
    block = skeleton["callbacks"][0]
    if kind is None or not isinstance(block, dict) or "kind" in block:
        return None
    block["kind"] = kind
    return block


def _set_source_kind(overrides: dict, default):
    """The source kind an arm's data has: what it sets, else the base config's."""
    block = overrides.get("data")
    if isinstance(block, dict) and "source_kind" in block:
        return block["source_kind"]
    return overrides.get("data.source_kind", default)


def _source_path_params(kind) -> tuple[str, ...]:
    return SOURCE_PATH_PARAMS + _declared_path_params("sources", kind)


def _callback_path_params(kind) -> tuple[str, ...]:
    return _declared_path_params("callbacks", kind)


def _declared_path_params(registry: str, kind) -> tuple[str, ...]:
    """The `path_params` a kind's class declares (none for a kind no registry knows)."""
    from ..plugins import kinds  # lazily: config modules import no registries at import time

    known = getattr(kinds, registry)
    return tuple(getattr(known.get(kind), "path_params", ())) if isinstance(kind, str) and kind in known else ()


def _rebase_key(block: dict, key: str, base: Path) -> None:
    if key in block:
        block[key] = _rebased(block[key], base)


def _rebased(value, base: Path):
    if isinstance(value, list):
        return [_rebased(v, base) for v in value]
    if not isinstance(value, str) or not value or Path(value).expanduser().is_absolute():
        return value
    return str(base / value)
