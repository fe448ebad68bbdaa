"""The run dir's files as bytes: metrics.jsonl, summary.md and training.png (the report node stores them)."""

from __future__ import annotations

import io
import json

from ..nodes.views import TrainResult

PLOT_NAME = "training.png"


def metrics_jsonl(rows: list[dict]) -> bytes:
    """One `{step, split, metrics}` row per event, in that key order as the walkthrough shows; a
    row's metrics sorted by name, the training loss first."""
    def ordered(metrics: dict) -> dict:
        return dict(sorted(metrics.items(), key=lambda kv: (kv[0] != "train_mean_nll", kv[0])))

    return "".join(json.dumps({"step": r["step"], "split": r["split"], "metrics": ordered(r["metrics"])}) + "\n" for r in rows).encode()


def final_eval_metrics(rows: list[dict]) -> dict:
    final: dict = {}
    for r in rows:
        if r["split"] != "train":
            final.update(r["metrics"])
    return final


def summary_markdown(train: dict, rows: list[dict]) -> str:
    """summary.md: status, training loss, the final checkpoint, one line per evaluation, the plot."""
    tm = train["metrics"]
    lines = ["# Run summary", "", "Status: completed", ""]
    lines.append(f"Training: {tm.get('steps')} steps, train_mean_nll {_f(tm.get('first_train_mean_nll'))} → {_f(tm.get('final_train_mean_nll'))}")
    lines.append(f"Final checkpoint: node:{TrainResult.of(train).checkpoint_final}")
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


def training_plot(rows: list[dict]) -> bytes:
    """training.png: train_mean_nll per step, and every eval metric on a second axis; drawn with
    matplotlib's own defaults, never a `matplotlibrc` (the report's key holds no rc file)."""
    import matplotlib  # lazily: matplotlib is slow to import and only the report node draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.style.context("default"):
        return _draw(plt, rows)


def _draw(plt, rows: list[dict]) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    train = [(r["step"], r["metrics"].get("train_mean_nll")) for r in rows if r["split"] == "train" and r["metrics"].get("train_mean_nll") is not None]
    if train:
        ax.plot(*zip(*train), color="tab:blue", label="train_mean_nll")
    ax.set_xlabel("step")
    ax.set_ylabel("train_mean_nll")
    scores: dict[str, list] = {}
    losses: dict[str, list] = {}  # held-out nll shares the train loss axis
    for r in rows:
        if r["split"] != "train":
            for k, v in r["metrics"].items():
                if isinstance(v, (int, float)):
                    (losses if k.endswith("/nll") else scores).setdefault(k, []).append((r["step"], v))
    for k, pts in sorted(losses.items()):
        ax.plot(*zip(*pts), marker="s", linestyle=":", label=k)
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
