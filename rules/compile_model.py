"""Model-side nodes: tokenize → train (producing checkpoint nodes) → eval per checkpoint × benchmark → report."""

from __future__ import annotations

from pathlib import Path

from evsys_build.graph import Graph, Node
from evsys_build.statcache import StatCache

from . import kinds
from .code_identity import code_identity

TRAIN_VERSION = "1"
CHECKPOINT_VERSION = "1"
EVAL_VERSION = "1"
REPORT_VERSION = "1"
TRAIN_LOCAL_FIELDS = ("supervise", "max_length", "truncation")  # these shape the tokens, an input already
SCHEDULE_FIELDS = ("save_every",)  # which checkpoints are stored, not what training computes


def add_model_nodes(graph: Graph, loaded, nodes, statcache: StatCache) -> None:
    from .compile import tokenize_node
    from .tiny_model import resolve_model

    arm = nodes.arm
    model_dir = resolve_model(arm.config.model.name, arm.config.model.revision)
    nodes.tokenize = tokenize_node(graph, arm, nodes.rows, model_dir, statcache)
    nodes.train = _train_node(graph, arm, nodes.tokenize, model_dir, statcache)
    nodes.checkpoints = {s: graph.add(checkpoint_node(nodes.train, s)) for s in checkpoint_steps(arm)}
    # arms that differ only in evals share one train node: it must save every arm's checkpoints
    shared = nodes.train.payload.setdefault("checkpoints", {})
    shared.update(nodes.checkpoints)
    nodes.train.produces = [shared[s] for s in sorted(shared)]
    nodes.evals = _eval_nodes(graph, arm, nodes, model_dir)
    from .report import report_node

    nodes.report = graph.add(report_node(loaded, nodes))


def checkpoint_steps(arm) -> list[int]:
    """Every step a checkpoint is stored at: what evals need (run_every), save_every, and the final step."""
    algo = arm.params["algorithm"]
    max_steps = algo.max_steps
    steps = {max_steps}
    for bench in arm.config.metadata.benchmark:
        if bench.run_every:
            steps.update(range(bench.run_every, max_steps + 1, bench.run_every))
    if getattr(algo, "save_every", 0):
        steps.update(range(algo.save_every, max_steps + 1, algo.save_every))
    return sorted(steps)


def model_identity(name: str, revision: str | None, model_dir: Path, statcache: StatCache) -> dict:
    """A model is its bytes: the digest of every file in its directory (plus the name it was asked by)."""
    files = {f.name: statcache.file_digest(f) for f in sorted(model_dir.iterdir()) if f.is_file() and not f.name.startswith(".")}
    return {"files": files} if Path(name).is_dir() else {"name": name, "revision": revision, "files": files}


def _train_node(graph: Graph, arm, tokens: Node, model_dir: Path, statcache: StatCache) -> Node:
    from .train_rule import run_train

    cfg = arm.config
    backend_cls = kinds.backends.get(cfg.backend.kind)
    algo_cls = kinds.algorithms.get(cfg.algorithm.kind)
    algo = arm.params["algorithm"]
    backend_cfg = arm.params["backend"]
    algo_params = {k: v for k, v in algo.model_dump(exclude_defaults=True, mode="json").items() if k not in TRAIN_LOCAL_FIELDS + SCHEDULE_FIELDS}
    return graph.add(
        Node(
            rule="train",
            name="train",
            version=TRAIN_VERSION,
            params={
                "model": model_identity(cfg.model.name, cfg.model.revision, model_dir, statcache),
                "backend": {"kind": cfg.backend.kind, "params": _trajectory_params(backend_cls, backend_cfg), "code": code_identity(backend_cls)},
                "algorithm": {"kind": cfg.algorithm.kind, "params": algo_params, "code": code_identity(algo_cls)},
                "seed": cfg.seed,
            },
            inputs=[("tokens", tokens)],
            run=run_train,
            arm=arm.name,
            param_paths={"seed": "seed"},
            param_labels={"model": f"model changed ({cfg.model.name})"},
            payload={"arm": arm, "model_dir": model_dir, "backend": make_backend(arm), "algorithm": algo},
        )
    )


def _trajectory_params(backend_cls, backend_cfg) -> dict:
    """Backend settings that change training (device, dtype, kernels), not the sampling-only ones."""
    sampling_only = set(getattr(backend_cls, "sampling_only_params", ()))
    return {k: v for k, v in backend_cfg.model_dump(exclude_defaults=True, mode="json").items() if k not in sampling_only}


def make_backend(arm):
    """The arm's backend, built from its validated Config."""
    return kinds.backends.get(arm.config.backend.kind)(arm.params["backend"])


def checkpoint_node(train: Node, step: int) -> Node:
    """The checkpoint of `train` after `step` optimizer steps; its key depends only on (train key, step)."""
    return Node(
        rule="checkpoint",
        name=f"checkpoint@{step}",
        version=CHECKPOINT_VERSION,
        params={"step": step},
        inputs=[("train", train)],
        arm=train.arm,
        produced_by=train,
    )


def _eval_nodes(graph: Graph, arm, nodes, model_dir: Path) -> list[tuple]:
    """(benchmark, step, node) for every scored checkpoint."""
    from .benchmarks import load_tasks
    from .eval_rule import eval_params, run_eval

    evals = []
    max_steps = arm.params["algorithm"].max_steps
    for bench in arm.config.metadata.benchmark:
        tasks = load_tasks(Path(bench.path))
        steps = list(range(bench.run_every, max_steps + 1, bench.run_every)) if bench.run_every else []
        if max_steps not in steps:
            steps.append(max_steps)
        system_prompt = bench.system_prompt if bench.system_prompt is not None else training_system_prompt(arm)
        for step in steps:
            evals.append((bench, step, graph.add(
                    Node(
                        rule="eval",
                        name=f"eval {bench.name}@{step}",
                        version=EVAL_VERSION,
                        params=eval_params(bench, tasks, system_prompt),
                        inputs=[("checkpoint", nodes.checkpoints[step])],
                        run=run_eval,
                        arm=arm.name,
                        param_paths={"sampling": f"metadata.benchmark[{bench.name}]", "metrics": f"metadata.benchmark[{bench.name}].metrics", "system_prompt": "system prompt"},
                        param_labels={"tasks": f"benchmark {bench.name} tasks changed", "verifiers": f"benchmark {bench.name} verifier code changed"},
                        payload={"arm": arm, "bench": bench, "tasks": tasks, "step": step, "model_dir": model_dir, "system_prompt": system_prompt},
                    )
                ))
            )
    return evals


def training_system_prompt(arm) -> str | None:
    """The system prompt the transforms give training rows (jsonl_to_chat), so eval prompts match training."""
    for spec in arm.config.transforms:
        if spec.kind == "jsonl_to_chat":
            return spec.params.get("system_prompt")
    return None
