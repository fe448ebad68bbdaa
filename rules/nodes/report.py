"""The `report` node: an arm's run-dir files (metrics.jsonl, predictions/, summary.md, a plot) as blobs.

The run dir is materialized from these blobs on every build (outputs/run_dir.py), so a fully
cached build rewrites an identical run dir.
"""

from __future__ import annotations

from evsys_build.executor import RunContext
from evsys_build.graph import Node

from ..config.loading import Arm
from ..plugins.code_identity import code_identity
from ..plugins.installed import library_versions
from ..outputs.report_files import final_eval_metrics, metrics_jsonl, summary_markdown, training_plot, PLOT_NAME
from .views import EvalResult, ReportFiles, TrainResult

def report_node(arm: Arm, train: Node, evals: list[tuple]) -> Node:
    benches = [{"name": b.name, "split": b.split, "run_every": b.run_every} for b in arm.config.metadata.benchmark]
    inputs = [("train", train)] + [(f"eval {b.name}@{step}", node) for b, step, node in evals]
    return Node(
        rule="report",
        name="report",
        version=code_identity(run_report),
        params={"benchmarks": benches, "arm": arm.name, "libraries": library_versions("matplotlib")},  # training.png
        inputs=inputs,
        run=run_report,
        arm=arm.name,
        payload={"evals": [(b.name, b.split, step, label) for (b, step, _), (label, _) in zip(evals, inputs[1:])]},
    )


def run_report(ctx: RunContext) -> dict:
    train = ctx.inputs["train"]
    history = TrainResult.of(train).history(ctx.store)  # timings included: not keyed, as the run dir only shows them
    rows: list[dict] = []
    for m in history:
        rows.append({"step": m["step"], "split": "train", "metrics": {k: v for k, v in m.items() if k != "step"}})
    predictions: dict[str, list[bytes]] = {}
    for name, split, step, label in ctx.node.payload["evals"]:
        result = EvalResult.of(ctx.inputs[label])
        rows.append({"step": step, "split": split, "metrics": {f"{split}/{name}/{k}": v for k, v in result.metrics.items()}})
        predictions.setdefault(name, []).append(ctx.store.get_bytes(result.predictions_blob))
    order = {"train": 0}
    rows.sort(key=lambda r: (r["step"], order.get(r["split"], 1)))
    files = {"metrics.jsonl": metrics_jsonl(rows)}
    for name, parts in predictions.items():
        files[f"predictions/{name}.jsonl"] = b"".join(parts)
    files[PLOT_NAME] = training_plot(rows)
    files["summary.md"] = summary_markdown(train, rows).encode()
    report = ReportFiles({path: ctx.store.put_bytes(data) for path, data in files.items()})
    return {"outputs": report.outputs(), "metrics": final_eval_metrics(rows)}
