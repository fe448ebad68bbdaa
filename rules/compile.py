"""Compile a loaded config into the DAG: source → transform* → tokenize → train → eval → report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evsys_build.graph import Graph, Node
from evsys_build.statcache import StatCache

from . import data_rules, kinds
from .code_identity import code_identity
from .loading import Arm, LoadedConfig, check_source


@dataclass
class ArmNodes:
    """The nodes of one arm that later stages and the report need."""

    arm: Arm
    rows: Node
    tokenize: Node | None = None
    train: Node | None = None
    checkpoints: dict | None = None  # step -> Node
    evals: list | None = None
    report: Node | None = None


def compile_graph(loaded: LoadedConfig, statcache: StatCache) -> tuple[Graph, list[ArmNodes]]:
    graph = Graph()
    out = []
    for arm in loaded.arms:
        nodes = ArmNodes(arm, rows=_data_nodes(graph, loaded, arm, statcache))
        from .compile_model import add_model_nodes

        add_model_nodes(graph, loaded, nodes, statcache)
        out.append(nodes)
    return graph, out


def _data_nodes(graph: Graph, loaded: LoadedConfig, arm: Arm, statcache: StatCache) -> Node:
    cfg = arm.config
    source_cls = kinds.sources.get(cfg.data.source_kind)
    source = source_cls(**arm.params["data"].model_dump())
    check_source(loaded, source)
    source_params = arm.params["data"].model_dump(exclude_defaults=True)
    source_params.pop("path", None)
    node = graph.add(
        Node(
            rule="source",
            name="source",
            version=f"{data_rules.SOURCE_VERSION}/{code_identity(source_cls)}",
            params={"kind": cfg.data.source_kind, "params": source_params, "content": [statcache.file_digest(f) for f in source.files()]},
            run=data_rules.run_source,
            arm=arm.name,
            param_paths={"params": "data.params", "kind": "data.source_kind"},
            param_labels={"content": "data file content changed"},
            payload={"source": source},
        )
    )
    for i, spec in enumerate(cfg.transforms):
        cls = kinds.transforms.get(spec.kind)
        kw = dict(spec.params)
        if "seed" in getattr(getattr(cls, "Config", None), "model_fields", {}) and kw.get("seed") is None:
            kw["seed"] = cfg.seed  # seeded transforms default to the experiment seed
        transform = cls(**kw)
        tcfg = getattr(transform, "cfg", None)
        params = tcfg.model_dump(exclude_defaults=True) if tcfg is not None else dict(kw)  # python mode: a date stays a date
        node = graph.add(
            Node(
                rule="transform",
                name=f"transform[{i}] {spec.kind}",
                version=data_rules.TRANSFORM_VERSION,
                params={"kind": spec.kind, "params": params, "code": code_identity(cls), "row_local": bool(getattr(cls, "row_local", False))},
                inputs=[("rows", node)],
                run=data_rules.run_transform,
                arm=arm.name,
                param_paths={"params": f"transforms[{i}].params", "kind": f"transforms[{i}].kind"},
                param_labels={"code": f"transform {spec.kind} code changed"},
                payload={"transform": transform},
            )
        )
    return node


def tokenize_node(graph: Graph, arm: Arm, rows: Node, model_dir: Path, statcache: StatCache) -> Node:
    from .chat_tokens import tokenizer_files

    algo = arm.params["algorithm"]
    return graph.add(
        Node(
            rule="tokenize",
            name="tokenize",
            version=data_rules.TOKENIZE_VERSION,
            params={
                "tokenizer": {f.name: statcache.file_digest(f) for f in tokenizer_files(model_dir)},
                "supervise": getattr(algo, "supervise", "all_assistant"),
                "max_length": getattr(algo, "max_length", 2048),
                "truncation": getattr(algo, "truncation", "right"),
            },
            inputs=[("rows", rows)],
            run=data_rules.run_tokenize,
            arm=arm.name,
            param_paths={k: f"algorithm.params.{k}" for k in ("supervise", "max_length", "truncation")},
            param_labels={"tokenizer": "tokenizer or chat template changed"},
            payload={"model_dir": model_dir},
        )
    )
