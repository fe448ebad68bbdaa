"""Keys and the dry run: resolve each node's content key from what the store holds, and say
for every node whether it is cached, will run, or may run — and why, recorded when decided.

A node's key needs its inputs' output digests (early cutoff), so below a node that will run
the key is unknown until that node has run: such a node is `maybe` ("runs if <input>
changes") when its own recipe is unchanged since the last build, and `run` when not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .change_text import change_pair
from .graph import Graph, Node
from .hashing import canonical_json, digest
from .store import Store, referenced_objects


def output_digest(manifest: dict) -> str:
    """The content digest of a node's outputs: what the keys of the nodes below it are made of."""
    return manifest.get("output_digest") or digest(manifest.get("outputs", {}))


def cached_manifest(store: Store, node: Node, warn: Callable[[str], None] | None = None) -> dict | None:
    """The node's manifest when the node is fully stored (manifest, every object it names, and
    every node it produces, complete), else None. Needs `node.key`. `warn` hears about a node
    that was stored but lost part of itself (an object deleted or quarantined)."""
    manifest = _whole(store, node, warn, "rebuilding it")
    if manifest is None:
        return None
    for child in node.produces:
        if _whole(store, child, warn, f"{node.name} rebuilds it") is None:
            return None
    return manifest


def _whole(store: Store, node: Node, warn: Callable[[str], None] | None, then: str) -> dict | None:
    """The node's manifest when it and everything it names are stored (here and on any service),
    else None; `warn` hears what was lost of a node that was stored, and `then` what follows."""
    manifest = store.complete_manifest(node.key, label=node.name)
    if manifest is None:
        if warn is not None and store.has_manifest(node.key):
            warn(f"{node.name} (node:{node.key[:12]}) is stored but {_lost_part(store, node.key)}; {then}")
        return None
    gone = remote_loss(node, manifest)
    if gone:
        if warn is not None:
            warn(f"{node.name} (node:{node.key[:12]}) is stored but {gone}; {then}")
        return None
    return manifest


def remote_loss(node: Node, manifest: dict) -> str:
    """Why a stored node is unusable because what it references on a remote service is gone ('' if not)."""
    return (node.check_stored(manifest) or "") if node.check_stored is not None else ""


@dataclass
class PlanEntry:
    node: Node
    status: str  # "cached" | "run" | "maybe"
    reasons: list[str] = field(default_factory=list)
    arms: list[str] = field(default_factory=list)
    manifest: dict | None = None  # the cached manifest
    cost: dict | None = None  # what running it would cost (node.estimate), for nodes that run

    def as_json(self) -> dict:
        return {
            "key": self.node.key,
            "id": self.node.id,
            "rule": self.node.rule,
            "name": self.node.name,
            "arm": self.arms[0] if self.arms else self.node.arm,
            "arms": self.arms,
            "status": self.status,
            "reasons": self.reasons,
            **({"built_on": self.manifest["built_on"]} if self.manifest and self.manifest.get("built_on") else {}),
            **({"cost": self.cost} if self.cost else {}),
        }


def plan(store: Store, graph: Graph, refs: dict[str, dict]) -> list[PlanEntry]:
    """Status and reasons per node (keys resolved as far as the store allows), diffing against
    the last build's record per arm."""
    digests: dict[str, str] = {}
    statuses: dict[str, str] = {}
    manifests: dict[str, dict] = {}
    entries = []
    for node in graph.nodes():
        arms = graph.arms_of.get(node.id, [node.arm])
        previous = _previous(refs, arms, node.name)
        entry = _plan_node(store, node, arms, previous, digests, statuses)
        statuses[node.id] = entry.status
        if entry.manifest is not None:
            digests[node.id] = output_digest(entry.manifest)
            manifests[node.id] = entry.manifest
        elif node.estimate is not None:
            entry.cost = node.estimate(store, node, {label: manifests.get(parent.id) for label, parent in node.inputs})
        entries.append(entry)
    return entries


def resolve_keys(store: Store, graph: Graph) -> dict[str, dict]:
    """Resolve every key the store allows (cached chains); returns id -> cached manifest."""
    return {e.node.id: e.manifest for e in plan(store, graph, {}) if e.manifest is not None}


def _previous(refs: dict[str, dict], arms: list[str], name: str) -> dict | None:
    for arm in arms:
        found = refs.get(arm, {}).get("nodes", {}).get(name)
        if found:
            return found
    return None


def _plan_node(store: Store, node: Node, arms: list[str], previous: dict | None, digests: dict, statuses: dict) -> PlanEntry:
    producer = node.produced_by
    if producer is not None:
        if producer.key is None:
            return PlanEntry(node, statuses.get(producer.id, "run"), [f"produced by {producer.name}"], arms)
        node.key = node.key_for({})
    else:
        unknown = [parent for _, parent in node.inputs if parent.id not in digests]
        if unknown:
            node.key = None
            return _unresolved(node, arms, previous, unknown, statuses)
        node.resolve({label: digests[parent.id] for label, parent in node.inputs})
    manifest = cached_manifest(store, node)
    if manifest is not None:
        return PlanEntry(node, "cached", [], arms, manifest)
    if producer is not None:
        return PlanEntry(node, "run", [f"produced by {producer.name}"], arms)
    return PlanEntry(node, "run", explain(store, node, previous, digests), arms)


def _unresolved(node: Node, arms: list[str], previous: dict | None, unknown: list[Node], statuses: dict) -> PlanEntry:
    """A node below one that will run: `run` if its own recipe changed, else `maybe`."""
    if previous is None:
        return PlanEntry(node, "run", ["never built"], arms)
    own = _recipe_reasons(node, previous)
    if own:
        return PlanEntry(node, "run", own, arms)
    return PlanEntry(node, "maybe", [f"runs if {parent.name} changes" for parent in unknown], arms)


def explain(store: Store, node: Node, previous: dict | None, digests: dict) -> list[str]:
    """Why `node` (key known, not fully stored) must run, against the last build's record of it."""
    if previous is None:  # this config never built it; another may have (an arm, a copy of the config)
        return [_why_not_stored(store, node)] if store.has_manifest(node.key) else ["never built"]
    if previous.get("key") == node.key:
        return [_why_not_stored(store, node)]
    reasons = _recipe_reasons(node, previous)
    old_inputs = previous.get("inputs", {})
    for label, parent in node.inputs:
        old = old_inputs.get(label) or {}
        if old.get("digest") != digests.get(parent.id):
            reasons.append(f"input changed: {parent.name}")
    return reasons or ["key changed"]


def _why_not_stored(store: Store, node: Node) -> str:
    manifest = store.read_manifest(node.key)
    if manifest is None:
        return "not in store (interrupted, removed by gc, or quarantined)"
    lost = _lost_part(store, node.key)
    if lost:
        return f"not in store: {lost}"
    gone = remote_loss(node, manifest)
    if gone:
        return gone
    incomplete = []
    for child in node.produces:
        child_manifest = store.complete_manifest(child.key)
        gone = remote_loss(child, child_manifest) if child_manifest is not None else ""
        if child_manifest is None or gone:
            incomplete.append(f"{child.name}" + (f" ({gone})" if gone else ""))
    return f"not stored: {', '.join(incomplete)}" if incomplete else "not in store"


def _lost_part(store: Store, key: str) -> str:
    """What a stored manifest lacks: '' when all its objects are there."""
    manifest = store.read_manifest(key, quarantine=False)
    missing = store.missing_objects(referenced_objects(manifest)) if manifest else []
    return f"{len(missing)} of its objects are missing or were quarantined (e.g. {missing[0][:12]})" if missing else ""


def _recipe_reasons(node: Node, previous: dict) -> list[str]:
    reasons = []
    if previous.get("version") != node.version:
        reasons.append(f"{node.rule} code changed")
    return reasons + _param_reasons(node, previous.get("params", {}))


def _param_reasons(node: Node, old_params: dict) -> list[str]:
    old_flat = _flatten(old_params)
    new_flat = _flatten(node.params)
    reasons: list[str] = []
    labelled: set[str] = set()
    for path in sorted(set(old_flat) | set(new_flat)):
        old, new = old_flat.get(path, _MISSING), new_flat.get(path, _MISSING)
        if old is not _MISSING and new is not _MISSING and canonical_json(old) == canonical_json(new):
            continue
        if {} in (old, new) and _MISSING in (old, new):  # an empty block that gained or lost entries: they are the reasons
            continue
        top = path.split(".", 1)[0].split("[", 1)[0]
        if top in node.param_labels:
            label = node.param_labels[top]
            if "{name}" in label:  # per entry of the param (a file of a folder): which one changed
                label = label.replace("{name}", path[len(top) + 1:] or top)
            if label not in labelled:
                reasons.append(label)
                labelled.add(label)
            continue
        shown_old, shown_new = change_pair(_as_text(old), _as_text(new))
        reasons.append(f"{_display_path(node, path)}: {shown_old} → {shown_new}")
    return reasons


def _display_path(node: Node, path: str) -> str:
    top, _, rest = path.partition(".")
    prefix = node.param_paths.get(top)
    if prefix is None:
        return path
    return prefix + ("." + rest if rest else "")


_MISSING = object()


def _as_text(value) -> str:
    if value is _MISSING:
        return "(default)"
    return value if isinstance(value, str) else canonical_json(value)


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict) and value:
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else k))
        return out
    return {prefix: value} if prefix else {}
