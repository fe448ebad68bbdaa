"""Runs: every build leaves a record in the store — when, which config, every arm's nodes
(keys and output digests), status and headline metrics. `plan` diffs against the newest record
of each arm (refs/), `gc` keeps what recent runs reference, `evsys runs` lists them."""

from __future__ import annotations

import os
import secrets
import socket
from datetime import datetime, timezone

from . import __version__
from .graph import Graph
from .planner import output_digest
from .store import Store


def new_run_id() -> str:
    """Sortable by time, to the microsecond: `20261126T213012.123456Z-a1b2c3`."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ") + "-" + secrets.token_hex(3)


def start_run(store: Store, project, arms: list[str]) -> dict:
    """Write the run's record (status `running`) before any node runs."""
    run = {
        "id": new_run_id(),
        "experiment": project.experiment,
        "status": "running",
        "started": now(),
        "finished": None,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "evsys_version": __version__,
        "arms": {arm: {} for arm in arms},
        "producing": {},  # the trainings it starts (record_producer): none yet
        **project.describe_run(),
    }
    store.write_run(run)
    return run


def record_producer(store: Store, run: dict, node, inputs: dict[str, dict]) -> None:
    """Before a node that publishes checkpoints (a training) runs, note in the run's record its key
    and the keys of what it reads. A killed run's record names no node otherwise: this is how gc
    knows which training a stopped run was doing (its checkpoints wait for the next build) and
    keeps the data that training resumes from, whoever built it."""
    run.setdefault("producing", {})[node.key] = sorted({m["key"] for m in inputs.values() if m.get("key")})
    store.write_run(run)


def finish_run(store: Store, run: dict, status: str, graph: Graph, results: dict[str, dict], summary: dict | None = None, unplanned: list | None = None, partial: bool = False) -> dict:
    """Record the outcome: each arm's nodes as built (keys, output digests), status, summary
    (headline metrics, run-dir files); then point each arm's ref at this run. `unplanned` nodes
    (a checkpoint saved when a build was interrupted) are recorded under their producer's arms,
    so gc keeps what the next build resumes from.

    A partial build (`--target`) records only the nodes it built; each arm's ref keeps the nodes
    it already had with the built ones updated, and keeps pointing at the last full run (so `plan`
    still diffs every node, and gc keeps that run's checkpoints)."""
    digests = {node_id: output_digest(m) for node_id, m in results.items()}
    for node, manifest in unplanned or []:
        digests[node.id] = output_digest(manifest)
    for arm in run["arms"]:
        members = list(graph.by_arm.get(arm, []))
        members += [n for n, _ in unplanned or [] if arm in graph.arms_of.get(n.produced_by.id, [])]
        nodes = {n.name: n.describe(digests) for n in members}
        run["arms"][arm] = {"nodes": nodes, **((summary or {}).get("arms", {}).get(arm, {}))}
    run.update(**{k: v for k, v in (summary or {}).items() if k != "arms"})
    return finish_record(store, run, status, partial)


def finish_record(store: Store, run: dict, status: str, partial: bool = False) -> dict:
    """Write a run's final record and point each of its arms' refs at it. A partial build's refs
    keep the nodes they had, with the built ones updated, and keep naming the last full run; so
    do a failed or interrupted build's, with the nodes it built or served."""
    run.update(status=status, finished=now())
    if partial:
        run["partial"] = True
    store.write_run(run)
    for arm, entry in run["arms"].items():
        ref = {"experiment": run["experiment"], "arm": arm, "run": run["id"], "nodes": entry["nodes"]}
        if partial or status != "completed":
            before = store.read_ref(run["experiment"], arm)
            # a failed or interrupted build never reached some nodes (no key, or inputs not built):
            # the ref keeps the entries it had for those, and its last complete run
            reached = entry["nodes"] if partial else {name: e for name, e in entry["nodes"].items() if e.get("digest") is not None}
            ref["nodes"] = {**before.get("nodes", {}), **reached}
            ref["run"] = before.get("run") or run["id"]
        store.write_ref(run["experiment"], arm, ref)
    return run


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
