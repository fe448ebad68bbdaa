"""What a manifest references, garbage collection, and integrity checks of the store."""

from __future__ import annotations

from dataclasses import dataclass, field

from .hashing import digest_bytes
from .store import Store


def referenced_objects(value) -> set[str]:
    """Object names a manifest or memo names: values under `blob`, and inside `blobs` dicts."""
    found: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "blob" and isinstance(v, str):
                found.add(v)
            elif k == "blobs" and isinstance(v, dict):
                found.update(x for x in v.values() if isinstance(x, str))
            else:
                found |= referenced_objects(v)
    elif isinstance(value, list):
        for v in value:
            found |= referenced_objects(v)
    return found


@dataclass
class GcReport:
    kept_nodes: int = 0
    removed_nodes: list[str] = field(default_factory=list)
    removed_objects: list[str] = field(default_factory=list)
    removed_memos: int = 0
    freed_bytes: int = 0


def collect_garbage(store: Store, dry_run: bool = False) -> GcReport:
    """Keep the nodes the refs name (and their inputs) plus their objects; remove the rest."""
    keep_nodes: set[str] = set()
    stack = [entry["key"] for _, _, ref in store.iter_refs() for entry in ref.get("nodes", {}).values()]
    while stack:
        key = stack.pop()
        if key in keep_nodes:
            continue
        manifest = store.read_manifest(key)
        if manifest is None:
            continue
        keep_nodes.add(key)
        stack += [i["key"] for i in manifest.get("inputs", [])]
    report = GcReport(kept_nodes=len(keep_nodes))
    keep_objects: set[str] = set()
    for key in store.iter_manifests():
        if key in keep_nodes:
            keep_objects |= referenced_objects(store.read_manifest(key))
        else:
            report.removed_nodes.append(key)
    memos_to_drop = []
    for key, memo in store.iter_memos():
        names = referenced_objects(memo)
        if names <= keep_objects:
            continue
        memos_to_drop.append(key)
    for name in store.iter_objects():
        if name not in keep_objects:
            report.removed_objects.append(name)
            report.freed_bytes += store.object_path(name).stat().st_size
    report.removed_memos = len(memos_to_drop)
    if not dry_run:
        for key in report.removed_nodes:
            store.delete_manifest(key)
        for key in memos_to_drop:
            store.delete_memo(key)
        for name in report.removed_objects:
            store.object_path(name).unlink(missing_ok=True)
    return report


def verify_store(store: Store) -> list[str]:
    """Re-hash every object and check every manifest's objects exist; returns the problems."""
    problems = []
    for name in store.iter_objects():
        if digest_bytes(store.object_path(name).read_bytes()) != name:
            problems.append(f"object {name}: content does not match its name (corrupt)")
    for key in store.iter_manifests():
        manifest = store.read_manifest(key)
        if manifest is None:
            problems.append(f"node {key}: manifest unreadable (quarantined)")
            continue
        for name in sorted(referenced_objects(manifest)):
            if not store.has_object(name):
                problems.append(f"node {key} ({manifest.get('name')}): object {name} is missing")
    return problems
