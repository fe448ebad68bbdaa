"""Copy nodes between stores: `evsys push`, `evsys pull`, and a build reading through a remote store.

A node is copied as Nix copies a path: its objects first (each checked against its name when read),
then its manifest, create-only — so the destination never holds a manifest whose objects are
missing, and a node already there is left alone. Runs and refs follow, so the destination's gc
keeps what was copied and `plan` there diffs against the run that built it (refs move only forward).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable

from .errors import CorruptObject
from .store import Store, referenced_objects

COPY_THREADS = 8  # objects copied at once (network round trips overlap)


@dataclass
class SyncReport:
    nodes_copied: int = 0
    nodes_present: int = 0
    nodes_unavailable: list[str] = field(default_factory=list)  # keys the source does not hold complete
    objects_copied: int = 0
    bytes_copied: int = 0
    runs_copied: int = 0


def copy_node(src: Store, dst: Store, key: str, report: SyncReport | None = None, pool: ThreadPoolExecutor | None = None) -> bool:
    """Copy node `key` (objects, then manifest) from `src` to `dst` when `src` holds it complete.
    True when `dst` holds it afterwards."""
    report = report if report is not None else SyncReport()
    manifest = src.read_manifest(key)
    if manifest is None:
        return False
    names = sorted(referenced_objects(manifest))
    if src.missing_objects(names):
        return False
    missing = dst.missing_objects(names)

    def copy(name: str) -> int:
        data = src.get_bytes(name)  # digest-checked: a corrupt source object is never copied
        dst.put_bytes(data)
        return len(data)

    try:
        sizes = list(pool.map(copy, missing)) if pool is not None and len(missing) > 1 else [copy(n) for n in missing]
    except CorruptObject:  # quarantined there by get_bytes: the node is not complete upstream any more
        return False
    report.objects_copied += len(sizes)
    report.bytes_copied += sum(sizes)
    dst.write_manifest(key, manifest)
    return True


def sync_nodes(src: Store, dst: Store, keys: Iterable[str], runs: Iterable[dict] = ()) -> SyncReport:
    """Copy every node of `keys` that `dst` lacks, then the run records, then point refs at the
    newest of those runs. Holds both stores' build locks, so gc on either spares what is being copied."""
    report = SyncReport()
    with src.build_lock(), dst.build_lock(), ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="evsys-copy") as pool:
        for key in dict.fromkeys(keys):
            if dst.complete_manifest(key) is not None:
                report.nodes_present += 1
            elif copy_node(src, dst, key, report, pool):
                report.nodes_copied += 1
            else:
                report.nodes_unavailable.append(key)
        for run in runs:
            dst.write_run(run)
            report.runs_copied += 1
            for arm, entry in run.get("arms", {}).items():
                if entry.get("nodes") and run.get("finished"):
                    dst.write_ref(run["experiment"], arm, {"experiment": run["experiment"], "arm": arm, "run": run["id"], "nodes": entry["nodes"]})
    return report


def run_node_keys(store: Store, runs: Iterable[dict]) -> list[str]:
    """Every node the runs name, and every node those were built from (what gc keeps for them)."""
    from .gc import _live_nodes  # gc imports store; keep this module light

    return list(_live_nodes(store, list(runs)))


def runs_naming(store: Store, experiment: str, arm_keys: dict[str, set[str]]) -> tuple[list[dict], list[str]]:
    """For each arm, the newest complete run whose record of that arm names every key in
    `arm_keys[arm]` (a config's built nodes): the run that makes the destination's gc keep them
    and its `plan` diff against them. Not the arm's newest run, which another config of the same
    experiment may have made. Returns the runs and the arms no such run covers."""
    runs = [r for r in store.iter_runs(experiment) if r.get("status") == "completed" and not r.get("partial")]
    chosen: dict[str, dict] = {}
    uncovered = []
    for arm, keys in arm_keys.items():
        if not keys:  # nothing of this arm is built: no run to copy for it
            continue
        for run in reversed(runs):  # newest first
            named = {entry.get("key") for entry in run.get("arms", {}).get(arm, {}).get("nodes", {}).values()}
            if keys <= named:
                chosen[run["id"]] = run
                break
        else:
            uncovered.append(arm)
    return [chosen[i] for i in sorted(chosen)], uncovered
