"""What `evsys diff` compares, per arm of a config or of a recorded run: the effective config
(every block with its kind's defaults filled in, flattened to dotted paths), the nodes (name →
key and id) and the metrics the arm's report holds (metrics.jsonl rows), when it is built."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from evsys_build.errors import EvsysError
from evsys_build.planner import resolve_keys
from evsys_build.store import Store

from ..config.arms import arm_raws
from ..config.loading import load_config, validate_model
from ..config.schema import ExperimentConfig
from ..nodes.views import ReportFiles
from ..plugins import kinds
from ..plugins.loader import load_plugins

KIND_BLOCKS = (("data",), ("backend",), ("algorithm",))  # plus transforms[i] and callbacks[i]


def arm_snapshots(store: Store, source: Path | dict) -> dict[str, dict]:
    """Per arm: {"config": {dotted path: value}, "nodes": {name: {"key", "id", "rule"}}, "metrics": [rows]}.
    `source` is a config file or a run record."""
    return _of_run(store, source) if isinstance(source, dict) else _of_config(store, Path(source))


def _of_config(store: Store, path: Path) -> dict[str, dict]:
    from ..frontend import Project  # lazily: frontend imports this module

    project = Project(load_config(path), store)
    cached = resolve_keys(store, project.graph)
    out = {}
    for nodes in project.arm_nodes:
        members = project.graph.by_arm.get(nodes.arm.name, [])
        report = cached.get(nodes.report.id) if nodes.report is not None else None
        out[nodes.arm.name] = {
            "config": flat_config(effective_config(nodes.arm.config.model_dump(mode="json"))),
            "nodes": {n.name: {"key": n.key, "id": n.id, "rule": n.rule} for n in members},
            "metrics": _report_rows(store, report),
        }
    return out


def _of_run(store: Store, run: dict) -> dict[str, dict]:
    configs = _run_configs(run)
    out = {}
    for arm, entry in run.get("arms", {}).items():
        report = store.read_manifest(entry["report"]) if entry.get("report") else None
        out[arm] = {
            "config": configs.get(arm, {}),
            "nodes": {name: {"key": n.get("key"), "id": n.get("id"), "rule": n.get("rule")} for name, n in entry.get("nodes", {}).items()},
            "metrics": _report_rows(store, report),
        }
    return out


def _run_configs(run: dict) -> dict[str, dict]:
    """Each arm's effective config, rebuilt from the config text the run recorded."""
    text = (run.get("config") or {}).get("text") or ""
    path = Path((run.get("config") or {}).get("path") or "config.yaml")
    try:
        raw = yaml.safe_load(text) or {}
        try:
            load_plugins(raw.get("plugins") or [], path, {})  # for their kinds' defaults; a moved plugin only costs those
        except EvsysError:
            pass
        config = validate_model(ExperimentConfig, raw, path, {}, ())
        return {name: flat_config(effective_config(arm_raw)) for name, arm_raw, *_ in arm_raws(raw, config, path, {})}
    except (yaml.YAMLError, EvsysError):
        return {}


def effective_config(raw: dict) -> dict:
    """An arm's config as validated (JSON-able), with each known kind's params filled with their
    defaults: what `evsys diff` compares and what trackers record."""
    config = ExperimentConfig.model_validate(raw).model_dump(mode="json")
    blocks = [(config["data"], kinds.sources, config["data"]["source_kind"])]
    blocks += [(config["backend"], kinds.backends, config["backend"]["kind"]), (config["algorithm"], kinds.algorithms, config["algorithm"]["kind"])]
    blocks += [(t, kinds.transforms, t["kind"]) for t in config["transforms"]] + [(c, kinds.callbacks, c["kind"]) for c in config["callbacks"]]
    for block, registry, kind in blocks:
        cls = getattr(registry.get(kind), "Config", None) if kind in registry else None  # an unknown plugin stays as written
        params = dict(block["params"])
        if block is config["data"] and block.get("path") is not None:
            params["path"] = block["path"]
        try:
            filled = cls.model_validate(params).model_dump(mode="json") if cls is not None else params
        except Exception:  # noqa: BLE001 - a diff shows what it can
            filled = params
        if block is config["data"]:
            filled.pop("path", None)
        block["params"] = filled
    return config


def flat_config(config: dict) -> dict:
    """Dotted paths (`algorithm.params.learning_rate`, `transforms.0.kind`) → values; the arms and
    sweep blocks are left out (an arm is the base config with its overrides applied)."""
    out: dict = {}

    def walk(value, prefix: str) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        elif isinstance(value, list) and value and any(isinstance(v, (dict, list)) for v in value):
            for i, v in enumerate(value):
                walk(v, f"{prefix}.{i}")
        else:
            out[prefix] = value

    walk({k: v for k, v in config.items() if k not in ("arms", "sweep")}, "")
    return out


def _report_rows(store: Store, report: dict | None) -> list[dict]:
    if report is None:
        return []
    blob = ReportFiles.of(report).files.get("metrics.jsonl")
    if blob is None:
        return []
    return [json.loads(line) for line in store.get_bytes(blob).splitlines() if line.strip()]
