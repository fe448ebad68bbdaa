"""The dry run: for each node, cached or run, and why — recorded when decided."""

from __future__ import annotations

from dataclasses import dataclass, field

from .graph import Graph, Node
from .hashing import canonical_json
from .store import Store


@dataclass
class PlanEntry:
    node: Node
    status: str  # "cached" | "run"
    reasons: list[str] = field(default_factory=list)
    arms: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        return {
            "key": self.node.key,
            "rule": self.node.rule,
            "name": self.node.name,
            "arm": self.arms[0] if self.arms else self.node.arm,
            "arms": self.arms,
            "status": self.status,
            "reasons": self.reasons,
        }


def is_cached(store: Store, node: Node) -> bool:
    """A node is cached when its manifest and those of every node it produces exist."""
    return store.has_manifest(node.key) and all(store.has_manifest(p.key) for p in node.produces)


def plan(store: Store, graph: Graph, refs: dict[str, dict]) -> list[PlanEntry]:
    """Status and reasons per node, diffing against the last build's refs (per arm)."""
    entries = []
    for node in graph.nodes():
        arms = graph.arms_of.get(node.key, [node.arm])
        if is_cached(store, node):
            entries.append(PlanEntry(node, "cached", [], arms))
            continue
        previous = None
        for arm in arms:
            previous = refs.get(arm, {}).get("nodes", {}).get(node.name)
            if previous:
                break
        entries.append(PlanEntry(node, "run", explain(store, node, previous), arms))
    return entries


def explain(store: Store, node: Node, previous: dict | None) -> list[str]:
    """Why `node` must run, compared with what the last build had under the same name."""
    if node.produced_by is not None:
        return [f"produced by {node.produced_by.name}"]
    if previous is None:
        return ["never built"]
    if previous.get("key") == node.key:
        missing = [p.name for p in node.produces if not store.has_manifest(p.key)]
        if store.has_manifest(node.key) and missing:
            return [f"not stored: {', '.join(missing)}"]
        return ["not in store (interrupted, or removed by gc)"]
    reasons = []
    if previous.get("version") != node.version:
        reasons.append(f"rule version changed: {previous.get('version')} → {node.version}")
    reasons += _param_reasons(node, previous.get("params", {}))
    old_inputs = previous.get("inputs", {})
    for label, parent in node.inputs:
        old = old_inputs.get(label)
        if old is None or old.get("key") != parent.key:
            reasons.append(f"input changed: {parent.name}")
    return reasons or ["key changed"]


def _param_reasons(node: Node, old_params: dict) -> list[str]:
    old_flat = _flatten(old_params)
    new_flat = _flatten(node.params)
    reasons: list[str] = []
    labelled: set[str] = set()
    for path in sorted(set(old_flat) | set(new_flat)):
        old, new = old_flat.get(path, _MISSING), new_flat.get(path, _MISSING)
        if old is not _MISSING and new is not _MISSING and canonical_json(old) == canonical_json(new):
            continue
        top = path.split(".", 1)[0].split("[", 1)[0]
        if top in node.param_labels:
            if top not in labelled:
                reasons.append(node.param_labels[top])
                labelled.add(top)
            continue
        reasons.append(f"{_display_path(node, path)}: {_show(old)} → {_show(new)}")
    return reasons


def _display_path(node: Node, path: str) -> str:
    top, _, rest = path.partition(".")
    prefix = node.param_paths.get(top)
    if prefix is None:
        return path
    return prefix + ("." + rest if rest else "")


_MISSING = object()


def _show(value) -> str:
    if value is _MISSING:
        return "(default)"
    text = value if isinstance(value, str) else canonical_json(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict) and value:
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else k))
        return out
    return {prefix: value} if prefix else {}
