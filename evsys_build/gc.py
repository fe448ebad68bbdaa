"""Garbage collection with a retention policy, and integrity checks of the store.

`gc` keeps every node that a retained run references (with the nodes they were built from):
per experiment the newest `keep_last` runs and every run younger than `keep_within`, plus each
arm's last complete run and the nodes its ref names (a partial build's), and every killed,
interrupted or failed run not yet concluded, with what it wrote (the next build resumes from it:
`pending_resumes`). On a local store it holds the store's lock exclusively, so it waits for running
builds and never removes what one is writing or about to reuse. A remote store cannot be locked
that way across machines: there gc removes nothing written after the oldest running build started
(builds register in the store with heartbeats, remote_bucket.py), and a build that reuses an old
entry gc removes at that moment finds it missing and rebuilds it (never serves it half there).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from .chunk_index import prune_indexes
from .errors import CorruptObject
from .store import Store, _safe as _safe_name, referenced_objects

DAY = 86400.0
STARTED_SLACK = 1.0  # a run's `started` is recorded to the second: what it wrote may stamp a second off


@dataclass
class RemovedNode:
    key: str
    name: str
    rule: str
    size: int  # bytes of its objects that nothing kept shares
    runs: list[str]  # the expired runs that referenced it


@dataclass
class GcReport:
    kept_runs: int = 0
    kept_nodes: int = 0
    removed_runs: list[dict] = field(default_factory=list)
    removed_nodes: list[RemovedNode] = field(default_factory=list)
    removed_objects: int = 0
    freed_bytes: int = 0
    removed_memos: int = 0
    removed_staging: int = 0
    pruned_indexes: int = 0  # machine-local stage indexes (chunkmaps/) that named removed objects
    service_refs: dict[str, list[str]] = field(default_factory=dict)  # service -> paths only removed nodes named (never deleted)


def collect_garbage(store: Store, keep_last: int = 5, keep_within_days: float = 14.0, dry_run: bool = False, on_wait=None, now: float | None = None,
                    keep_stopped_within_days: float | None = None) -> GcReport:
    """Apply the retention policy; with `dry_run`, only report what would go. A stopped run (killed,
    interrupted, failed) is kept until the next build resumes from it, however old, unless
    `keep_stopped_within_days` says how long to wait for that build: an older one falls under the policy."""
    with store.gc_lock(on_wait) as cutoff:
        return _collect(store, keep_last, keep_within_days, dry_run, now if now is not None else time.time(), cutoff, keep_stopped_within_days)


def _collect(store: Store, keep_last: int, keep_within_days: float, dry_run: bool, now: float, cutoff: float | None = None,
             keep_stopped_within_days: float | None = None) -> GcReport:
    """`cutoff`: entries written at or after it stay, referenced or not (a build may be writing them)."""
    old = (lambda entry: True) if cutoff is None else (lambda entry: entry is not None and entry.modified < cutoff)
    runs = list(store.iter_runs())
    refs = list(store.iter_refs())
    kept = retained_runs(runs, refs, keep_last, keep_within_days, now)
    roots = []  # runs whose nodes (and what they were built from) stay
    if cutoff is not None:  # a run recorded after the cutoff belongs to a build that may still run
        written = store.run_entries()
        running = [r for r in runs if not old(written.get((_safe_name(r["experiment"]), _safe_name(r["id"]))))]
        kept |= {(r["experiment"], r["id"]) for r in running}
        # such a build records what it served from the cache only when it ends: every node an
        # earlier run of its experiment named may be one it is reusing now
        busy = {r["experiment"] for r in running if r.get("status") == "running"}
        roots += [r for r in runs if r["experiment"] in busy]
    node_entries = store.entries("nodes")
    pending = pending_resumes(runs, _trainings_written(store, runs, node_entries), store.has_manifest)
    if keep_stopped_within_days is not None:  # the user stopped waiting for older ones: the policy decides
        started = {(r["experiment"], r["id"]): _started(r) for r in runs}
        pending = {run for run in pending if now - started[run] <= keep_stopped_within_days * DAY}
    kept |= pending
    expired = [r for r in runs if (r["experiment"], r["id"]) not in kept]
    fresh = [key for key, entry in node_entries.items() if not old(entry)]  # written after the cutoff: a running build's, with all they name
    roots += [r for r in runs if (r["experiment"], r["id"]) in kept]
    live = _live_nodes(store, roots, _written_by_unfinished(runs, kept, node_entries) + _ref_nodes(refs) + fresh + _producing_inputs(runs, kept))
    live_objects: set[str] = set()
    live_checkpoints: set[str] = set()
    for key, manifest in live.items():
        live_objects |= referenced_objects(manifest)
        if manifest.get("rule") == "checkpoint" and manifest.get("output_digest"):
            live_checkpoints.add(manifest["output_digest"])
    for run in runs:
        if (run["experiment"], run["id"]) in kept:
            live_objects |= referenced_objects(run.get("files", {}))
    memo_entries = store.entries("memo")
    resume_memos = set(_written_by_unfinished(runs, kept, memo_entries))  # a killed build's finished chunks: no manifest names them yet
    resume_memos |= {key for key, entry in memo_entries.items() if not old(entry)}  # a running build's, and the objects they name
    for key in resume_memos:
        live_objects |= referenced_objects(store.memo_get(key, quarantine=False) or {})
    report = GcReport(kept_runs=len(kept), kept_nodes=len(live))
    report.removed_runs = [{"experiment": r["experiment"], "id": r["id"], "status": r.get("status"), "started": r.get("started")} for r in expired]
    owners = _run_owners(expired)
    objects = store.entries("objects")
    counted: set[str] = set()
    for key, entry in node_entries.items():
        if key in live or not old(entry):
            continue
        manifest = store.read_manifest(key, quarantine=False) or {}
        own = referenced_objects(manifest) - live_objects - counted
        counted |= own
        size = sum(objects[o].size for o in own if o in objects)
        report.removed_nodes.append(RemovedNode(key, manifest.get("name", "?"), manifest.get("rule", "?"), size, sorted(owners.get(key, []))))
        for service, path in service_refs(manifest):
            report.service_refs.setdefault(service, []).append(path)
    still_named = {path for manifest in live.values() for _service, path in service_refs(manifest)}
    report.service_refs = {service: sorted(set(paths) - still_named) for service, paths in sorted(report.service_refs.items())}
    report.service_refs = {service: paths for service, paths in report.service_refs.items() if paths}
    dead_objects = [name for name, entry in objects.items() if name not in live_objects and old(entry)]
    report.removed_objects = len(dead_objects)
    report.freed_bytes = sum(objects[o].size for o in dead_objects)
    dead_memos = [k for k, entry in memo_entries.items() if old(entry) and k not in resume_memos and not _memo_live(store, k, live_objects, live_checkpoints)]
    report.removed_memos = len(dead_memos)
    report.removed_staging = len(store.stale_staging())
    if not dry_run:
        for run in expired:
            store.delete_run(run["experiment"], run["id"])
        for node in report.removed_nodes:  # manifests before their objects: a node never reads as built without them
            store.delete_manifest(node.key)
        for key in dead_memos:
            store.delete_memo(key)
        for name in dead_objects:
            store.delete_object(name)
        report.pruned_indexes = prune_indexes(store, set(dead_objects))
        store.clean_staging()
        store.remove_node_locks()
    else:
        report.pruned_indexes = prune_indexes(store, set(dead_objects), dry_run=True)
    return report


def service_refs(manifest: dict) -> list[tuple[str, str]]:
    """(service, path) of what a node keeps on a training service (`attachments.remote`: a Tinker
    checkpoint's tinker:// paths). gc never deletes these: another store may hold a copy of the
    node that still uses them."""
    remote = (manifest.get("attachments") or {}).get("remote") or {}
    service = remote.get("service") or {}
    label = " ".join(str(service[k]) for k in ("backend", "base_url") if service.get(k)) or "a service"
    return [(label, path) for path in (remote.get("refs") or {}).values() if isinstance(path, str)]


def retained_runs(runs: list[dict], refs: list[tuple[str, str, dict]], keep_last: int, keep_within_days: float, now: float) -> set[tuple[str, str]]:
    """(experiment, run id) of the runs the policy keeps: the newest `keep_last` per experiment,
    those started within `keep_within_days`, and the run each arm's ref points at."""
    kept: set[tuple[str, str]] = set()
    by_experiment: dict[str, list[dict]] = {}
    for run in runs:
        by_experiment.setdefault(run["experiment"], []).append(run)
    for experiment, items in by_experiment.items():
        items.sort(key=lambda r: r["id"], reverse=True)
        for i, run in enumerate(items):
            if i < keep_last or now - _started(run) <= keep_within_days * DAY:
                kept.add((experiment, run["id"]))
    for experiment, _arm, ref in refs:
        if ref.get("run"):
            kept.add((experiment, ref["run"]))
    return kept


UNFINISHED = ("running", "interrupted", "failed")  # killed (its record never ended), stopped, or failed: the next build resumes from what it stored


def pending_resumes(runs: list[dict], trainings_of: Callable[[dict], set[str]] = lambda run: set(), built: Callable[[str], bool] = lambda key: False) -> set[tuple[str, str]]:
    """Runs that did not complete (killed, interrupted, failed) whose stored work the next build
    resumes from: kept whatever the policy says. A run that stored checkpoints of a training
    (`trainings_of`: the producers of the nodes it wrote) is pending until each of those trainings
    is built, whichever build finishes it: a complete build of another config of the same arm does
    not conclude it. A run that stopped before any checkpoint is pending until a later complete
    build of each of its arms; another arm's build, or a partial (`--target`) one, records only
    what it built and does not conclude it."""
    concluded: dict[tuple[str, str], str] = {}  # (experiment, arm): the newest complete run's id
    for run in runs:
        if run.get("status") == "completed" and not run.get("partial"):
            for arm in run.get("arms", {}):
                slot = (run["experiment"], arm)
                concluded[slot] = max(run["id"], concluded.get(slot, ""))
    pending = set()
    for r in runs:
        if r.get("status") not in UNFINISHED:
            continue
        trainings = trainings_of(r)
        if trainings:
            waiting = not all(built(key) for key in trainings)
        else:
            waiting = any(r["id"] > concluded.get((r["experiment"], arm), "") for arm in r.get("arms") or {"": None})
        if waiting:
            pending.add((r["experiment"], r["id"]))
    return pending


def _trainings_written(store: Store, runs: list[dict], entries: dict) -> Callable[[dict], set[str]]:
    """For an unfinished run: the trainings it stored checkpoints of (the producers of the nodes
    written since it started, a second before), which the next build resumes from. A run records
    the trainings it started (`producing`, runs.record_producer): only those count, whatever other
    builds of its experiment wrote meanwhile. A record without that list (an older evsys's) takes
    the nodes written until the next run of its experiment started."""
    starts: dict[str, list[float]] = {}
    for run in runs:
        starts.setdefault(run["experiment"], []).append(_started(run))
    produced: dict[str, list[str]] = {}  # node key -> its producers' keys (read once)

    def producers(key: str) -> list[str]:
        if key not in produced:
            manifest = store.read_manifest(key, quarantine=False) or {}
            produced[key] = [i["key"] for i in manifest.get("inputs", []) if i.get("label") == "producer" and i.get("key")]
        return produced[key]

    def trainings_of(run: dict) -> set[str]:
        # the slack either side, for a remote store's clock too (taking another run's trainings only keeps more)
        since = _started(run) - STARTED_SLACK
        own = set(run["producing"]) if "producing" in run else None  # its own trainings, whenever their checkpoints were written
        if own == set():
            return set()
        until = float("inf") if own is not None else min((s for s in starts[run["experiment"]] if s > _started(run)), default=float("inf")) + STARTED_SLACK
        return {p for key, entry in entries.items() if entry is not None and since <= entry.modified < until for p in producers(key) if own is None or p in own}

    return trainings_of


def _producing_inputs(runs: list[dict], kept: set[tuple[str, str]]) -> list[str]:
    """What the trainings of kept runs read (runs.record_producer): a stopped training has no
    manifest to lead gc to its data, which the next build resumes with."""
    return [key for r in runs if (r["experiment"], r["id"]) in kept for keys in (r.get("producing") or {}).values() for key in keys]


def _ref_nodes(refs: list[tuple[str, str, dict]]) -> list[str]:
    """The nodes each arm's ref names: a partial build's nodes are there, not in the run it names."""
    return [entry["key"] for _exp, _arm, ref in refs for entry in ref.get("nodes", {}).values() if entry.get("key")]


def _written_by_unfinished(runs: list[dict], kept: set[tuple[str, str]], entries: dict) -> list[str]:
    """Nodes (or chunk memos) a kept run that did not complete may have published: a killed one's
    record names none (they are recorded when a build ends), and no record names the finished
    chunks of a stage that was stopped or failed; so every one written since it started is kept."""
    starts = [_started(r) for r in runs if (r["experiment"], r["id"]) in kept and r.get("status") in UNFINISHED]
    if not starts:
        return []
    since = min(starts) - STARTED_SLACK
    return [key for key, entry in entries.items() if entry is not None and entry.modified >= since]


def _started(run: dict) -> float:
    try:
        return datetime.fromisoformat(run["started"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return 0.0


def _live_nodes(store: Store, runs: list[dict], extra: list[str] = ()) -> dict[str, dict]:
    """Manifests of every node the runs reference (and `extra`), and of the nodes those were built from."""
    live: dict[str, dict] = {}
    stack = [entry["key"] for run in runs for arm in run.get("arms", {}).values() for entry in arm.get("nodes", {}).values() if entry.get("key")]
    stack += extra
    while stack:
        key = stack.pop()
        if key in live:
            continue
        manifest = store.read_manifest(key, quarantine=False)
        if manifest is None:
            continue
        live[key] = manifest
        stack += [i["key"] for i in manifest.get("inputs", []) if i.get("key")]
    return live


def _run_owners(runs: list[dict]) -> dict[str, list[str]]:
    owners: dict[str, list[str]] = {}
    for run in runs:
        for arm in run.get("arms", {}).values():
            for entry in arm.get("nodes", {}).values():
                if entry.get("key"):
                    owners.setdefault(entry["key"], []).append(run["id"])
    return owners


def _memo_live(store: Store, key: str, live_objects: set[str], live_checkpoints: set[str]) -> bool:
    """A chunk memo lives while its objects do; an eval memo while its checkpoint does."""
    value = store.memo_get(key, quarantine=False)
    if value is None:
        return False
    if "checkpoint" in value:
        return value["checkpoint"] in live_checkpoints
    names = referenced_objects(value)
    return bool(names) and names <= live_objects


def verify_store(store: Store, repair: bool = False, check_remote=None) -> list[str]:
    """Re-hash every object, check every manifest and memo; returns the problems, each naming the
    node that owns the bad object. Changes nothing unless `repair` (then bad objects, manifests
    and memos are quarantined and stale staging files removed; the next build rebuilds them).
    `check_remote(manifests)` (the frontend's) reports nodes whose references on a remote
    service (tinker:// checkpoints) are gone: nothing local to repair, the next build redoes them."""
    owners: dict[str, list[str]] = {}
    problems = []
    remote: list[dict] = []
    for key in store.iter_manifests():
        manifest = store.read_manifest(key, quarantine=repair)
        if manifest is None:
            problems.append(f"node {key[:12]}: manifest unreadable or its checksum does not match" + (" (quarantined)" if repair else ""))
            continue
        if (manifest.get("attachments") or {}).get("remote"):
            remote.append(manifest)
        label = f"{manifest.get('name')} node:{key[:12]}"
        for name in sorted(referenced_objects(manifest)):
            owners.setdefault(name, []).append(label)
            if not store.has_object(name):
                problems.append(f"{label}: object {name} is missing; the next build rebuilds it")
    for name in store.iter_objects():
        try:
            store.get_bytes(name, quarantine=False)
        except CorruptObject:
            who = ", ".join(owners.get(name, [])) or "no node (unreferenced)"
            problems.append(f"object {name}: corrupt (its bytes do not match its name); owned by {who}")
            if repair:
                store.quarantine_object(name, "verify --repair")
    for key in store.iter_memo_keys():
        if store.memo_get(key, quarantine=repair) is None:
            problems.append(f"memo {key[:12]}: its value does not match its digest" + (" (quarantined)" if repair else ""))
    if remote and check_remote is not None:
        problems += check_remote(remote)
    for f in store.stale_staging():
        problems.append(f"{f}: a staging file a killed build left behind" + (" (removed)" if repair else ""))
    if repair:
        store.clean_staging()
    return problems
