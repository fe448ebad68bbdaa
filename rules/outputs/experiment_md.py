"""experiment.md: the hypothesis, the arms, and the conclusion (best arm by the first validation metric)."""

from __future__ import annotations


def first_val_metric(summaries: list[dict]) -> str | None:
    for s in summaries:
        for k in s["metrics"]:
            if k.startswith("val/"):
                return k
    for s in summaries:
        for k in s["metrics"]:
            return k
    return None


def conclusion(summaries: list[dict]) -> str:
    done = sum(s["completed"] for s in summaries)
    text = f"{done}/{len(summaries)} arms completed."
    metric = first_val_metric(summaries)
    scored = [s for s in summaries if s["completed"] and metric in s["metrics"]]
    if metric and len(summaries) > 1 and scored:
        best = max(scored, key=lambda s: s["metrics"][metric])
        text += f" Best arm by {metric} at the final step: {best['arm']} ({best['metrics'][metric]:.4f})."
    return text


def experiment_markdown(loaded, summaries: list[dict]) -> str:
    cfg = loaded.config
    lines = [f"# Experiment: {loaded.experiment_name}", ""]
    if cfg.experiment and cfg.experiment.hypothesis:
        lines += [f"Hypothesis: {cfg.experiment.hypothesis}", ""]
    metric = first_val_metric(summaries)
    lines += ["## Arms", "", f"| arm | overrides | status | final train_mean_nll | {metric or 'score'} |", "|---|---|---|---|---|"]
    for s in summaries:
        overrides = ", ".join(f"{k}={v}" for k, v in s["overrides"].items()) or "-"
        status = "completed" if s["completed"] else "not built"
        lines.append(f"| {s['arm']} | {overrides} | {status} | {_f(s['train'].get('final_train_mean_nll'))} | {_f(s['metrics'].get(metric))} |")
    lines += ["", "## Conclusion", "", conclusion(summaries), ""]
    return "\n".join(lines)


def _f(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-"
