"""`--target`: build (or plan) only what some nodes need.

A target is a node name (`tokenize`, `train`, `eval val@50`), a rule name (`tokenize`, `eval`:
every node of that rule), or `node:<prefix>` of a node's key (as `plan` and `show` print it) or
id (as `dag` prints it). The selection is the targets and everything they are built from; a
training brings the checkpoints it writes.
"""

from __future__ import annotations

from .graph import Graph, Node
from .planner import resolve_keys
from .store import Store

HEX = set("0123456789abcdef")


def select_targets(graph: Graph, store: Store, targets: list[str]) -> tuple[Graph, list[str]]:
    """(the subgraph the targets need, the targets that matched no node)."""
    matched: set[str] = set()
    unmatched = []
    for target in targets:
        found = _match(graph, store, target)
        if found:
            matched |= {n.id for n in found}
        else:
            unmatched.append(target)
    keep = set(matched)
    for node_id in matched:
        keep |= graph.ancestors(node_id)
    for node_id in list(keep):
        keep |= {child.id for child in graph.node(node_id).produces}
        producer = graph.node(node_id).produced_by
        if producer is not None:
            keep.add(producer.id)
            keep |= {child.id for child in producer.produces}
            keep |= graph.ancestors(producer.id)
    return graph.subgraph(keep), unmatched


def _match(graph: Graph, store: Store, target: str) -> list[Node]:
    if target.startswith("node:"):
        prefix = target.removeprefix("node:").lower()
        if len(prefix) < 2 or not set(prefix) <= HEX:
            return []
        _resolve_keys(graph, store)
        return [n for n in graph.nodes() if (n.key or "").startswith(prefix) or n.id.startswith(prefix)]
    by_name = [n for n in graph.nodes() if n.name == target]
    return by_name or [n for n in graph.nodes() if n.rule == target]


def _resolve_keys(graph: Graph, store: Store) -> None:
    """Give every node whose inputs are stored its content key (what `plan` prints)."""
    resolve_keys(store, graph)


def no_target_message(target: str, graph: Graph, incomplete: bool) -> str:
    names = list(dict.fromkeys(n.name for n in graph.nodes()))
    rules = sorted({n.rule for n in graph.nodes()})
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    later = " (more nodes appear once the data is built: build without --target first)" if incomplete else ""
    return f"--target {target}: no node, rule or node key matches; nodes: {shown}; rules: {', '.join(rules)}{later}"
