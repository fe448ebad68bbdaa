"""`evsys diff A B`: two configs, two arms, or two past runs side by side — the config paths that
differ, the nodes they share and those they do not, and metric deltas at equal steps.

A side is a config file (`config.yaml`, `config.yaml@arm`) or a run id prefix as `evsys runs`
lists it (`20261126T2130`, `20261126T2130@arm`). The frontend describes each side's arms
(`arm_snapshots`); this module only compares.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .change_text import change_pair
from .errors import UsageError
from .hashing import canonical_json
from .plans import resolve_arm
from .project import frontend
from .store import Store

WALL_CLOCK = ("tokens_per_s", "step_time_s")  # differ between runs that compute the same thing


@dataclass
class Side:
    label: str
    config: dict
    nodes: dict
    metrics: list[dict]


@dataclass
class Diff:
    a: Side
    b: Side
    config: list[tuple[str, object, object]] = field(default_factory=list)  # (path, in A, in B)
    shared: list[str] = field(default_factory=list)
    changed: list[tuple[str, str | None, str | None]] = field(default_factory=list)  # (name, key in A, key in B)
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    metrics: list[tuple[str, int, float, float]] = field(default_factory=list)  # (metric, step, A, B)

    def as_json(self) -> dict:
        return {
            "a": self.a.label,
            "b": self.b.label,
            "config": [{"path": p, "a": va, "b": vb} for p, va, vb in self.config],
            "nodes": {"shared": self.shared, "changed": [{"name": n, "a": ka, "b": kb} for n, ka, kb in self.changed], "only_a": self.only_a, "only_b": self.only_b},
            "metrics": [{"metric": m, "step": s, "a": va, "b": vb, "delta": _delta(va, vb)} for m, s, va, vb in self.metrics],
        }


def load_side(store: Store, spec: str) -> Side:
    """A config file or a run id, with an optional `@arm`."""
    target, arm = split_spec(spec)
    if Path(target).is_file():
        arms = frontend().arm_snapshots(store, Path(target))
        where = target
    elif target.endswith((".yaml", ".yml", ".json")) or "/" in target:
        raise UsageError(f"{target}: no such config file (a side of diff is a config file or a run id as `evsys runs` lists it)")
    else:
        from .cli_runs import find_run  # the run lookup `evsys runs show` uses

        run = find_run(store, target)
        arms = frontend().arm_snapshots(store, run)
        where = f"run {run['id']}"
    if not arm:
        if len(arms) != 1:
            raise UsageError(f"{spec}: has arms {', '.join(arms)}; say which, e.g. {target}@{next(iter(arms))}")
        arm = next(iter(arms))
    if Path(target).is_file():  # a short label as plan and build print it (`a2`) names the config's arm (a run's arms come sorted: no labels)
        arm = resolve_arm(list(arms), arm)
    if arm not in arms:
        raise UsageError(f"{spec}: no arm {arm!r}; {where} has: {', '.join(arms)}")
    snap = arms[arm]
    return Side(f"{where}@{arm}", snap["config"], snap["nodes"], snap["metrics"])


def split_spec(spec: str) -> tuple[str, str]:
    """(config file or run id, arm) of `CONFIG@ARM` or `RUN@ARM`. Arm names may hold `@`, and a
    file name may too: the arm follows the first `@` that ends an existing file's name, else the
    first `@` (run ids have none)."""
    if Path(spec).is_file():
        return spec, ""
    for i, c in enumerate(spec):
        if c == "@" and Path(spec[:i]).is_file():
            return spec[:i], spec[i + 1:]
    target, _, arm = spec.partition("@")
    return target, arm


def diff_sides(a: Side, b: Side) -> Diff:
    out = Diff(a, b)
    for path in sorted(set(a.config) | set(b.config)):
        va, vb = a.config.get(path), b.config.get(path)
        if canonical_json(va) != canonical_json(vb):  # absent on one side and null on the other: no difference
            out.config.append((path, va, vb))
    for name in _ordered(a.nodes, b.nodes):
        na, nb = a.nodes.get(name), b.nodes.get(name)
        if na is None:
            out.only_b.append(name)
        elif nb is None:
            out.only_a.append(name)
        elif _same_node(na, nb):
            out.shared.append(name)
        else:
            out.changed.append((name, na.get("key"), nb.get("key")))
    values_a, values_b = _by_step(a.metrics), _by_step(b.metrics)
    for metric, step in sorted(set(values_a) & set(values_b), key=lambda ms: (not _is_eval(ms[0]), ms[0], ms[1])):
        out.metrics.append((metric, step, values_a[(metric, step)], values_b[(metric, step)]))
    return out


def format_diff(d: Diff, all_steps: bool = False) -> list[str]:
    lines = [f"A: {d.a.label}", f"B: {d.b.label}", ""]
    lines.append(f"config: {len(d.config)} path(s) differ" + (":" if d.config else ""))
    lines += [f"  {p}: {' → '.join(change_pair(_text(va), _text(vb)))}" for p, va, vb in d.config]
    lines.append("")
    lines.append(f"nodes: {len(d.shared)} shared" + (f" ({', '.join(d.shared)})" if d.shared else ""))
    if d.changed:
        lines.append(f"  differ ({len(d.changed)}): " + ", ".join(f"{n} ({(ka or '?')[:8]} → {(kb or '?')[:8]})" for n, ka, kb in d.changed))
    if d.only_a:
        lines.append(f"  only in A: {', '.join(d.only_a)}")
    if d.only_b:
        lines.append(f"  only in B: {', '.join(d.only_b)}")
    lines.append("")
    shown = d.metrics if all_steps else _headline(d.metrics)
    if not d.metrics:
        lines.append("metrics: no metrics at equal steps (build both sides to compare them)")
    else:
        lines.append("metrics at equal steps (B − A)" + ("" if all_steps else "; --all-steps for every train step") + ":")
        width = max(len(m) for m, *_ in shown)
        lines += [f"  {m:<{width}}  step {s:>5}: {_num(va)} → {_num(vb)}  ({_signed(_delta(va, vb))})" for m, s, va, vb in shown]
    return lines


def _headline(rows: list[tuple]) -> list[tuple]:
    """Eval metrics at every common step; train_mean_nll at the eval steps and the last common step."""
    eval_steps = {s for m, s, *_ in rows if _is_eval(m)}
    train_steps = [s for m, s, *_ in rows if m == "train_mean_nll"]
    last = max(train_steps) if train_steps else None
    return [r for r in rows if _is_eval(r[0]) or (r[0] == "train_mean_nll" and (r[1] in eval_steps or r[1] == last))]


def _is_eval(metric: str) -> bool:
    return metric.count("/") >= 2


def _by_step(rows: list[dict]) -> dict[tuple[str, int], float]:
    out = {}
    for row in rows:
        for metric, value in (row.get("metrics") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and metric not in WALL_CLOCK:
                out[(metric, int(row["step"]))] = float(value)
    return out


def _same_node(a: dict, b: dict) -> bool:
    if a.get("key") and b.get("key"):
        return a["key"] == b["key"]
    return bool(a.get("id")) and a.get("id") == b.get("id")


RULE_ORDER = ("source", "transform", "tokenize", "train", "checkpoint", "eval", "nll", "report")


def _ordered(a: dict, b: dict) -> list[str]:
    """Node names in build order: by rule, then by the numbers in the name (checkpoint@2 before @10)."""
    rules = {name: (node or {}).get("rule") for side in (b, a) for name, node in side.items()}

    def key(name: str):
        rule = rules.get(name)
        rank = RULE_ORDER.index(rule) if rule in RULE_ORDER else len(RULE_ORDER)
        return (rank, [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)])

    return sorted(dict.fromkeys([*a, *b]), key=key)


def _text(value) -> str:
    return "(unset)" if value is None else (value if isinstance(value, str) else canonical_json(value))


def _delta(a: float, b: float) -> float:
    return b - a


def _num(v: float) -> str:
    return f"{v:.4f}"


def _signed(v: float) -> str:
    return f"{v:+.4f}"
