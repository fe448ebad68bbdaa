"""The `report` node: an arm's run-dir files (metrics.jsonl, predictions/, summary.md, a plot) as blobs.

The run dir is materialized from these blobs on every build, so a fully cached build rewrites
an identical run dir.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from evsys_build.atomic import write_atomic
from evsys_build.executor import RunContext
from evsys_build.graph import Node

PLOT_NAME = "training.png"


def report_node(loaded, nodes) -> Node:
    from .compile_model import REPORT_VERSION

    benches = [{"name": b.name, "split": b.split, "run_every": b.run_every} for b in nodes.arm.config.metadata.benchmark]
    inputs = [("train", nodes.train)] + [(f"eval {b.name}@{step}", node) for b, step, node in nodes.evals]
    return Node(
        rule="report",
        name="report",
        version=REPORT_VERSION,
        params={"benchmarks": benches, "arm": nodes.arm.name},
        inputs=inputs,
        run=run_report,
        arm=nodes.arm.name,
        payload={"evals": [(b.name, b.split, step, label) for (b, step, _), (label, _) in zip(nodes.evals, inputs[1:])]},
    )


def run_report(ctx: RunContext) -> dict:
    train = ctx.inputs["train"]
    history = json.loads(ctx.store.get_bytes(train["outputs"]["history"]["blob"]))
    evals = ctx.node.payload["evals"]
    rows: list[dict] = []
    for m in history:
        rows.append({"step": m["step"], "split": "train", "metrics": {k: v for k, v in m.items() if k != "step"}})
    predictions: dict[str, list[bytes]] = {}
    for name, split, step, label in evals:
        manifest = ctx.inputs[label]
        rows.append({"step": step, "split": split, "metrics": {f"{split}/{name}/{k}": v for k, v in manifest["metrics"].items()}})
        predictions.setdefault(name, []).append(ctx.store.get_bytes(manifest["outputs"]["predictions"]["blob"]))
    order = {"train": 0}
    rows.sort(key=lambda r: (r["step"], order.get(r["split"], 1)))
    files = {"metrics.jsonl": "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()}
    for name, parts in predictions.items():
        files[f"predictions/{name}.jsonl"] = b"".join(parts)
    files[PLOT_NAME] = _plot(rows)
    files["summary.md"] = _summary(ctx.node.payload, train, rows).encode()
    return {"outputs": {"files": {"blobs": {path: ctx.store.put_bytes(data) for path, data in files.items()}}}, "metrics": _final_eval_metrics(rows)}


def _final_eval_metrics(rows: list[dict]) -> dict:
    final: dict = {}
    for r in rows:
        if r["split"] != "train":
            final.update(r["metrics"])
    return final


def _summary(payload, train: dict, rows: list[dict]) -> str:
    tm = train["metrics"]
    lines = ["# Run summary", "", "Status: completed", ""]
    lines.append(f"Training: {tm.get('steps')} steps, train_mean_nll {_f(tm.get('first_train_mean_nll'))} → {_f(tm.get('final_train_mean_nll'))}")
    lines.append(f"Final checkpoint: node:{train['outputs']['checkpoint-final']}")
    lines += ["", "## Evaluations", ""]
    evals = [r for r in rows if r["split"] != "train"]
    for r in evals:
        lines.append(f"- step {r['step']}: " + ", ".join(f"{k} = {_f(v)}" for k, v in sorted(r["metrics"].items())))
    if not evals:
        lines.append("- none configured (add metadata.benchmark entries)")
    lines += ["", f"![training loss and validation scores]({PLOT_NAME})", ""]
    return "\n".join(lines)


def _f(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _plot(rows: list[dict]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    train = [(r["step"], r["metrics"].get("train_mean_nll")) for r in rows if r["split"] == "train" and r["metrics"].get("train_mean_nll") is not None]
    if train:
        ax.plot(*zip(*train), color="tab:blue", label="train_mean_nll")
    ax.set_xlabel("step")
    ax.set_ylabel("train_mean_nll")
    scores: dict[str, list] = {}
    for r in rows:
        if r["split"] != "train":
            for k, v in r["metrics"].items():
                scores.setdefault(k, []).append((r["step"], v))
    if scores:
        ax2 = ax.twinx()
        for k, pts in sorted(scores.items()):
            ax2.plot(*zip(*pts), marker="o", linestyle="--", label=k)
        ax2.set_ylabel("score")
        ax2.set_ylim(-0.02, 1.02)
        ax2.legend(loc="center right", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def write_run_dir(project, store, results: dict, nodes, echo) -> Path:
    """Copy the report's files into the arm's run dir; stale prediction files are removed."""
    run_dir = arm_run_dir(project.loaded, nodes.arm.name, len(project.arm_nodes))
    manifest = results.get(nodes.report.key) or store.read_manifest(nodes.report.key)
    blobs = manifest["outputs"]["files"]["blobs"]
    wanted = {run_dir / rel for rel in blobs}
    for stale in (run_dir / "predictions").glob("*.jsonl") if (run_dir / "predictions").is_dir() else []:
        if stale not in wanted:
            stale.unlink()
    for rel, blob in blobs.items():
        write_atomic(run_dir / rel, store.get_bytes(blob))
    return run_dir


def arm_run_dir(loaded, arm: str, n_arms: int) -> Path:
    base = loaded.output_dir / loaded.run_name
    return base if n_arms == 1 else base / arm
