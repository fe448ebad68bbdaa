"""Nodes and the DAG. A node's key is the digest of (rule, version, params, input keys)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .hashing import digest


@dataclass(eq=False)
class Node:
    """One content-addressed build step.

    `params` go into the key; `payload` is runtime data that must not (paths, callbacks).
    `param_paths` maps a top-level param to the config path shown in plan reasons;
    `param_labels` gives a fixed reason for a param (e.g. "data file content changed").
    A node with `produced_by` set is written by that node while it runs (checkpoints).
    """

    rule: str
    name: str
    version: str
    params: dict
    inputs: list[tuple[str, "Node"]] = field(default_factory=list)
    run: Callable[..., dict] | None = None
    arm: str = "default"
    param_paths: dict[str, str] = field(default_factory=dict)
    param_labels: dict[str, str] = field(default_factory=dict)
    produced_by: "Node | None" = None
    produces: list["Node"] = field(default_factory=list)
    payload: Any = None
    _key: str | None = None

    @property
    def key(self) -> str:
        if self._key is None:
            self._key = digest(
                {
                    "rule": self.rule,
                    "version": self.version,
                    "params": self.params,
                    "inputs": [[label, node.key] for label, node in self.inputs],
                }
            )
        return self._key

    def describe(self) -> dict:
        """What the planner remembers of this node in a ref."""
        return {
            "key": self.key,
            "rule": self.rule,
            "version": self.version,
            "params": self.params,
            "inputs": {label: {"key": n.key, "name": n.name} for label, n in self.inputs},
        }


class Graph:
    """Nodes deduplicated by key (arms share what they have in common), in a networkx DiGraph.

    networkx loads on first use, not at import: `evsys_build` must import fast. A cycle cannot
    be built (a node's key needs its inputs' keys first); the topological sort would still catch one.
    """

    def __init__(self):
        self._nodes: dict[str, Node] = {}
        self._edges: list[tuple[str, str]] = []
        self._dag = None
        self.arms_of: dict[str, list[str]] = {}
        self.by_arm: dict[str, list[Node]] = {}

    @property
    def dag(self):
        """The networkx DiGraph of node keys (built lazily)."""
        if self._dag is None:
            import networkx as nx

            self._dag = nx.DiGraph()
            self._dag.add_nodes_from(self._nodes)
            self._dag.add_edges_from(self._edges)
        return self._dag

    def add(self, node: Node) -> Node:
        """Add a node (and its edges); a node with an existing key returns the existing one."""
        existing = self._nodes.get(node.key)
        arms = self.arms_of.setdefault(node.key, [])
        if node.arm not in arms:
            arms.append(node.arm)
        self.by_arm.setdefault(node.arm, []).append(node)
        if existing is not None:
            return existing
        self._nodes[node.key] = node
        self._edges += [(parent.key, node.key) for _, parent in node.inputs]
        if node.produced_by is not None:
            self._edges.append((node.produced_by.key, node.key))
        self._dag = None
        return node

    def node(self, key: str) -> Node:
        return self._nodes[key]

    def nodes(self) -> list[Node]:
        """All nodes in a stable topological order."""
        import networkx as nx

        order = nx.lexicographical_topological_sort(self.dag, key=lambda k: (self._nodes[k].rule != "source", self._nodes[k].name))
        return [self._nodes[k] for k in order]

    def subgraph_for_arm(self, arm: str) -> "Graph":
        sub = Graph()
        keep = {n.key for n in self.by_arm.get(arm, [])}
        for n in self.nodes():
            if n.key in keep:
                sub._nodes[n.key] = n
                sub.arms_of[n.key] = [arm]
                sub.by_arm.setdefault(arm, []).append(n)
        sub._edges = [(a, b) for a, b in self._edges if a in keep and b in keep]
        return sub

    def to_mermaid(self) -> str:
        lines = ["graph TD"]
        for n in self.nodes():
            lines.append(f'  n{n.key[:10]}["{n.name}<br/>{n.rule} {n.key[:8]}"]')
        for a, b in sorted(self.dag.edges):
            lines.append(f"  n{a[:10]} --> n{b[:10]}")
        return "\n".join(lines) + "\n"

    def to_dot(self) -> str:
        lines = ["digraph evsys {", "  rankdir=LR;"]
        for n in self.nodes():
            lines.append(f'  "{n.key[:10]}" [label="{n.name}\\n{n.rule} {n.key[:8]}"];')
        for a, b in sorted(self.dag.edges):
            lines.append(f'  "{a[:10]}" -> "{b[:10]}";')
        return "\n".join(lines) + "\n}\n"
