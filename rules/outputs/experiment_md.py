"""experiment.md: the hypothesis, the arms (with what each overrides), and the conclusion: the
best arm by the first validation metric (lowest for a loss such as `nll`), or the tie; none when
the arms' held-out loss is scored on different tokens (their supervise or max_length differ)."""

from __future__ import annotations


def headline_metric(benchmarks: list, metrics: dict) -> str | None:
    """The metric that heads an arm: the first one its config lists (benchmarks in order, each
    one's `metrics` in order), validation split first; else the first metric there is. Stored
    metrics are sorted by name, which would put `val/held/nll` before `val/tasks/pass@1`."""
    listed = [f"{b.split}/{b.name}/{m}" for b in sorted(benchmarks, key=lambda b: b.split != "val") for m in b.metrics]
    return next((k for k in listed if k in metrics), next(iter(metrics), None))


def first_val_metric(summaries: list[dict]) -> str | None:
    """The experiment's column and best-arm metric: the first arm's headline."""
    return next((s["headline"] for s in summaries if s.get("headline")), None)


def lower_is_better(metric: str) -> bool:
    return metric.rsplit("/", 1)[-1] in ("nll", "loss")


def conclusion(summaries: list[dict]) -> str:
    done = sum(s["completed"] for s in summaries)
    text = f"{done}/{len(summaries)} arms completed."
    metric = first_val_metric(summaries)
    scored = [s for s in summaries if s["completed"] and isinstance(s["metrics"].get(metric), (int, float))]
    differ = _scored_differently(scored, metric)
    if metric and len(scored) > 1 and differ:
        text += (f" The arms score {metric} on different tokens ({', '.join(differ)} differ), so it does not rank them: no best arm"
                 f" (set {', '.join(differ)} on the benchmark to score every arm on the same tokens).")
    elif metric and len(summaries) > 1 and len(scored) > 1:
        pick = min if lower_is_better(metric) else max
        best_value = pick(s["metrics"][metric] for s in scored)
        best = [s["arm"] for s in scored if abs(s["metrics"][metric] - best_value) <= 1e-9]
        if len(best) == len(scored):
            text += f" All arms tie on {metric} at the final step ({best_value:.4f}): no best arm."
        elif len(best) > 1:
            text += f" Arms {', '.join(best)} tie for best on {metric} at the final step ({best_value:.4f})."
        else:
            text += f" Best arm by {metric} at the final step: {best[0]} ({best_value:.4f})."
    return text


def _scored_differently(scored: list[dict], metric: str | None) -> list[str]:
    """The shaping params (supervise, max_length, truncation) that differ between the arms' held-out
    scoring of `metric`: a mean loss per token over different tokens is no ranking."""
    shapings = [s.get("scored_on", {}).get(metric) for s in scored]
    if not metric or any(x is None for x in shapings):
        return []
    return sorted(k for k in set().union(*shapings) if len({repr(x.get(k)) for x in shapings}) > 1)


def experiment_markdown(loaded, summaries: list[dict]) -> str:
    cfg = loaded.config
    lines = [f"# Experiment: {loaded.experiment_name}", ""]
    if cfg.experiment and cfg.experiment.hypothesis:
        lines += [f"Hypothesis: {cfg.experiment.hypothesis}", ""]
    metric = first_val_metric(summaries)
    lines += ["## Arms", "", f"| arm | overrides | status | final train_mean_nll | {metric or 'score'} |", "|---|---|---|---|---|"]
    for s in summaries:
        overrides = ", ".join(f"{k}={_value(v)}" for k, v in s["overrides"].items()) or "-"
        status = "completed" if s["completed"] else "not built"
        lines.append(f"| {s['arm']} | {overrides} | {status} | {_f(s['train'].get('final_train_mean_nll'))} | {_f(s['metrics'].get(metric))} |")
    lines += ["", "## Conclusion", "", conclusion(summaries), ""]
    return "\n".join(lines)


def _f(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-"


def _value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)
