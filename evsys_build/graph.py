"""Nodes and the DAG. A node's content key is the digest of its recipe and its inputs' output digests."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any, Callable

from .hashing import canonical_json, digest_bytes


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

    `params` go into both; `payload` is runtime data that must not (paths, callbacks), nor may
    `resources`: what running it asks of a cluster (num_cpus, num_gpus, custom resources,
    max_retries; see ray_pool.py), declared by its rule and overridable per config.
    `disk_stamps` are the stat identities of the files whose content the compile's keys hold (data,
    model and tokenizer files), as they were read: a node is neither run nor stored once one of
    them changed since (node_run.py), so no key is made of content other than what ran.
    `param_paths` maps a top-level param to the config path shown in plan reasons;
    `param_labels` gives a fixed reason for a param (e.g. "data file content changed"); a
    `{name}` in it names the entry of a dict param that changed ("tokenizer file {name} changed").
    `check_stored(manifest)`, for a node whose output lives partly on a remote service (a
    checkpoint on Tinker), says why a stored manifest can no longer be used (None: it can).
    `estimate(store, node, input manifests)` gives `plan` what running it would cost (tokens, requests).
    `warm(store)` is work the node's run would start with that needs none of its inputs (loading
    a tokenizer): a build on this machine starts it in the background once a node this one
    depends on starts running. It may only fill caches, or start what its run adopts (a worker
    process): the node may yet turn out cached. What it returns, if not None, is closed when
    the build ends.
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
    resources: dict = field(default_factory=dict)
    check_stored: Callable[[dict], str | None] | None = None
    estimate: Callable[..., dict | None] | None = None
    warm: Callable[[Any], Any] | None = None
    disk_stamps: dict[str, list] | None = None
    key: str | None = None  # set by resolve(); None while an input is not built yet
    _id: str | None = None
    _recipe_text: tuple[str, str] | None = None  # canonical JSON around the params: made once for id and key

    @property
    def recipe(self) -> dict:
        return {"rule": self.rule, "version": self.version, "params": self.params}

    @property
    def id(self) -> str:
        if self._id is None:
            self._id = self._digest_with("inputs", [[label, node.id] for label, node in self.inputs])
        return self._id

    def key_for(self, input_digests: dict[str, str]) -> str:
        """The content key, given each input label's output digest (a produced node needs its producer's key)."""
        if self.produced_by is not None:
            return self._digest_with("producer", self._producer_key())
        return self._digest_with("inputs", [[label, input_digests[label]] for label, _ in self.inputs])

    def key_material(self, input_digests: dict[str, str]) -> dict:
        """What the content key is the digest of."""
        if self.produced_by is not None:
            return {**self.recipe, "producer": self._producer_key()}
        return {**self.recipe, "inputs": [[label, input_digests[label]] for label, _ in self.inputs]}

    def _producer_key(self) -> str:
        if self.produced_by.key is None:
            raise ValueError(f"{self.name}: its producer {self.produced_by.name} has no key yet")
        return self.produced_by.key

    def _digest_with(self, field_name: str, value) -> str:
        """`digest({**recipe, field_name: value})` for "inputs" or "producer", with the params'
        canonical JSON (the bulk of a key) made once per node: both names sort before "rule" and
        "version", "inputs" before "params" and "producer" after it."""
        if self._recipe_text is None:
            params = canonical_json(self.params)
            self._recipe_text = (f'"params":{params}', f'"rule":{canonical_json(self.rule)},"version":{canonical_json(self.version)}}}')
        params, tail = self._recipe_text
        item = f'"{field_name}":{canonical_json(value)}'
        head = f"{{{item},{params}" if field_name < "params" else f"{{{params},{item}"
        return digest_bytes(f"{head},{tail}".encode())

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
    """Nodes deduplicated by id (arms share what they have in common), and their edges.

    A cycle cannot be built (a node's id needs its inputs' ids first); the topological sort
    would still catch one. The sort is a few lines of Kahn's algorithm: a graph library would
    cost more to import than a no-op build may take.
    """

    def __init__(self):
        self._nodes: dict[str, Node] = {}
        self._edges: list[tuple[str, str]] = []
        self._order: list[Node] | None = None
        self.arms_of: dict[str, list[str]] = {}
        self._arm_sets: dict[str, set[str]] = {}
        self.by_arm: dict[str, list[Node]] = {}

    def add(self, node: Node) -> Node:
        """Add a node (and its edges) for `node.arm`; a node with an existing id returns the
        existing one, which the arm then lists as its own."""
        existing = self._nodes.get(node.id)
        arms = self.arms_of.setdefault(node.id, [])
        seen = self._arm_sets.get(node.id)  # membership in O(1): a shared node of a 1,000-arm sweep
        if seen is None:
            seen = self._arm_sets[node.id] = set(arms)
        if node.arm not in seen:
            seen.add(node.arm)
            arms.append(node.arm)
        members = self.by_arm.setdefault(node.arm, [])
        if existing is not None:  # the arm shares the node built for an earlier arm: that one (it gets the key)
            if all(m is not existing for m in members):
                members.append(existing)
            return existing
        members.append(node)
        self._nodes[node.id] = node
        self._edges += [(parent.id, node.id) for _, parent in node.inputs]
        if node.produced_by is not None:
            self._edges.append((node.produced_by.id, node.id))
        self._order = None
        return node

    def node(self, node_id: str) -> Node:
        return self._nodes[node_id]

    def edges(self) -> list[tuple[str, str]]:
        """(parent id, child id) pairs, sorted."""
        return sorted(set(self._edges))

    def nodes(self) -> list[Node]:
        """All nodes in a stable topological order (ties: sources first, then by name, then id)."""
        if self._order is None:
            self._order = self._sorted()
        return list(self._order)

    def _sorted(self) -> list[Node]:
        children: dict[str, list[str]] = {k: [] for k in self._nodes}
        waiting = dict.fromkeys(self._nodes, 0)
        for parent, child in set(self._edges):
            children[parent].append(child)
            waiting[child] += 1
        rank = {k: (n.rule != "source", n.name, k) for k, n in self._nodes.items()}
        ready = [rank[k] for k, n in waiting.items() if n == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            node_id = heapq.heappop(ready)[2]
            order.append(self._nodes[node_id])
            for child in children[node_id]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    heapq.heappush(ready, rank[child])
        if len(order) != len(self._nodes):
            raise ValueError("the build graph has a cycle")
        return order

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
        parents: dict[str, list[str]] = {}
        for a, b in self._edges:
            parents.setdefault(b, []).append(a)
        seen: set[str] = set()
        stack = list(parents.get(node_id, []))
        while stack:
            current = stack.pop()
            if current not in seen:
                seen.add(current)
                stack.extend(parents.get(current, []))
        return seen

    def to_mermaid(self) -> str:
        lines = ["graph TD"]
        for n in self.nodes():
            lines.append(f'  n{n.id[:10]}["{n.name}<br/>{n.rule} {n.id[:8]}"]')
        for a, b in self.edges():
            lines.append(f"  n{a[:10]} --> n{b[:10]}")
        return "\n".join(lines) + "\n"

    def to_dot(self) -> str:
        lines = ["digraph evsys {", "  rankdir=LR;"]
        for n in self.nodes():
            lines.append(f'  "{n.id[:10]}" [label="{n.name}\\n{n.rule} {n.id[:8]}"];')
        for a, b in self.edges():
            lines.append(f'  "{a[:10]}" -> "{b[:10]}";')
        return "\n".join(lines) + "\n}\n"
