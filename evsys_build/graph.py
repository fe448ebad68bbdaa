"""Nodes and the DAG. A node's content key is the digest of its recipe and its inputs' output digests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .hashing import digest


@dataclass(eq=False)
class Node:
    """One build step: a recipe (rule, code identity, params) applied to its inputs.

    Two names identify a node:
    - `id`, static: the recipe plus the inputs' ids. Arms share nodes with equal ids, and the
      planner finds "the same node in the last build" by name within an arm.
    - `key`, the content key, known once every input is built: the recipe plus the digests of
      the inputs' *outputs* (Shake/Bazel/DVC early cutoff: an input that reruns and writes the
      same bytes leaves this key, and so this node's cache entry, unchanged). A node another
      node produces while it runs (a checkpoint) is keyed by (recipe, producer's key).

    `params` go into both; `payload` is runtime data that must not (paths, callbacks).
    `param_paths` maps a top-level param to the config path shown in plan reasons;
    `param_labels` gives a fixed reason for a param (e.g. "data file content changed").
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
    key: str | None = None  # set by resolve(); None while an input is not built yet
    _id: str | None = None

    @property
    def recipe(self) -> dict:
        return {"rule": self.rule, "version": self.version, "params": self.params}

    @property
    def id(self) -> str:
        if self._id is None:
            self._id = digest({**self.recipe, "inputs": [[label, node.id] for label, node in self.inputs]})
        return self._id

    def key_for(self, input_digests: dict[str, str]) -> str:
        """The content key, given each input label's output digest (a produced node needs its producer's key)."""
        if self.produced_by is not None:
            if self.produced_by.key is None:
                raise ValueError(f"{self.name}: its producer {self.produced_by.name} has no key yet")
            return digest({**self.recipe, "producer": self.produced_by.key})
        return digest({**self.recipe, "inputs": [[label, input_digests[label]] for label, _ in self.inputs]})

    def resolve(self, input_digests: dict[str, str]) -> str:
        """Set (and return) the content key; produced nodes get theirs at the same time."""
        self.key = self.key_for(input_digests)
        for child in self.produces:
            child.key = child.key_for({})
        return self.key

    def describe(self, digest_of: dict[str, str | None]) -> dict:
        """What a run remembers of this node: the planner diffs the next build against it.
        `digest_of` maps node ids to output digests (None: not built)."""
        return {
            "id": self.id,
            "key": self.key,
            "digest": digest_of.get(self.id),
            "rule": self.rule,
            "version": self.version,
            "params": self.params,
            "inputs": {label: {"id": n.id, "name": n.name, "digest": digest_of.get(n.id)} for label, n in self.inputs},
        }


class Graph:
    """Nodes deduplicated by id (arms share what they have in common), in a networkx DiGraph.

    networkx loads on first use, not at import: `evsys_build` must import fast. A cycle cannot
    be built (a node's id needs its inputs' ids first); the topological sort would still catch one.
    """

    def __init__(self):
        self._nodes: dict[str, Node] = {}
        self._edges: list[tuple[str, str]] = []
        self._dag = None
        self.arms_of: dict[str, list[str]] = {}
        self.by_arm: dict[str, list[Node]] = {}

    @property
    def dag(self):
        """The networkx DiGraph of node ids (built lazily)."""
        if self._dag is None:
            import networkx as nx

            self._dag = nx.DiGraph()
            self._dag.add_nodes_from(self._nodes)
            self._dag.add_edges_from(self._edges)
        return self._dag

    def add(self, node: Node) -> Node:
        """Add a node (and its edges); a node with an existing id returns the existing one."""
        existing = self._nodes.get(node.id)
        arms = self.arms_of.setdefault(node.id, [])
        if node.arm not in arms:
            arms.append(node.arm)
        self.by_arm.setdefault(node.arm, []).append(node)
        if existing is not None:
            return existing
        self._nodes[node.id] = node
        self._edges += [(parent.id, node.id) for _, parent in node.inputs]
        if node.produced_by is not None:
            self._edges.append((node.produced_by.id, node.id))
        self._dag = None
        return node

    def node(self, node_id: str) -> Node:
        return self._nodes[node_id]

    def nodes(self) -> list[Node]:
        """All nodes in a stable topological order."""
        import networkx as nx

        order = nx.lexicographical_topological_sort(self.dag, key=lambda k: (self._nodes[k].rule != "source", self._nodes[k].name))
        return [self._nodes[k] for k in order]

    def subgraph_for_arm(self, arm: str) -> "Graph":
        sub = Graph()
        keep = {n.id for n in self.by_arm.get(arm, [])}
        for n in self.nodes():
            if n.id in keep:
                sub._nodes[n.id] = n
                sub.arms_of[n.id] = [arm]
                sub.by_arm.setdefault(arm, []).append(n)
        sub._edges = [(a, b) for a, b in self._edges if a in keep and b in keep]
        return sub

    def subgraph(self, keep: set[str]) -> "Graph":
        """The nodes whose ids are in `keep`, with their arms and the edges among them."""
        sub = Graph()
        for n in self.nodes():
            if n.id in keep:
                sub._nodes[n.id] = n
                sub.arms_of[n.id] = list(self.arms_of.get(n.id, [n.arm]))
        for arm, members in self.by_arm.items():
            kept = [n for n in members if n.id in keep]
            if kept:
                sub.by_arm[arm] = kept
        sub._edges = [(a, b) for a, b in self._edges if a in keep and b in keep]
        return sub

    def ancestors(self, node_id: str) -> set[str]:
        """Ids of every node `node_id` is built from (not itself)."""
        import networkx as nx

        return set(nx.ancestors(self.dag, node_id))

    def to_mermaid(self) -> str:
        lines = ["graph TD"]
        for n in self.nodes():
            lines.append(f'  n{n.id[:10]}["{n.name}<br/>{n.rule} {n.id[:8]}"]')
        for a, b in sorted(self.dag.edges):
            lines.append(f"  n{a[:10]} --> n{b[:10]}")
        return "\n".join(lines) + "\n"

    def to_dot(self) -> str:
        lines = ["digraph evsys {", "  rankdir=LR;"]
        for n in self.nodes():
            lines.append(f'  "{n.id[:10]}" [label="{n.name}\\n{n.rule} {n.id[:8]}"];')
        for a, b in sorted(self.dag.edges):
            lines.append(f'  "{a[:10]}" -> "{b[:10]}";')
        return "\n".join(lines) + "\n}\n"
