"""After a build: feed each arm's callbacks the stored history they did not see live (cached
training, cached evals, the steps a resumed training did earlier), then end their run."""

from __future__ import annotations

from evsys_build.store import Store

from ..nodes.views import EvalResult, TrainResult
from .run_dir import arm_run_dir


def replay_and_close(project, store: Store, results: dict, arms: list[str], status: str) -> None:
    """For every arm built: replay, then `on_run_end(arm, run_dir, status)` (run_dir only when
    the build completed and wrote it)."""
    loaded = project.loaded
    for nodes in project.arm_nodes:
        hub = nodes.callbacks
        if hub is None or nodes.arm.name not in arms:
            continue
        history = _history(store, results.get(nodes.train.id)) if nodes.train is not None else []
        evals = []
        for bench, step, node in nodes.evals:
            manifest = results.get(node.id)
            if manifest is not None:
                metrics = EvalResult.of(manifest).metrics
                evals.append((step, bench.name, {f"{bench.split}/{bench.name}/{k}": v for k, v in metrics.items()}))
        hub.replay(history, evals)
        run_dir = arm_run_dir(loaded, nodes.arm.name, len(project.arm_nodes)) if status == "completed" else None
        hub.run_end(run_dir, status)


def _history(store: Store, manifest: dict | None) -> list[dict]:
    if manifest is None:
        return []
    return TrainResult.of(manifest).history(store)
