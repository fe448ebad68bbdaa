"""One node, wherever a pool runs it: the context its runner gets, the events it emits, and
`run_node` (lock, run, write the manifest), shared by every executor so results are the same
bytes whichever runs them.

A node's runner gets a RunContext and returns {"outputs", "metrics", "stats", "attachments",
"built_on"}; the manifest is written atomically afterwards, so a failed or killed node leaves
nothing behind. `outputs` is what the nodes below read and key on (its digest is the node's
output digest); `attachments` are blobs kept beside it (for `show`) that no key depends on.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from .errors import CorruptObject, EvsysError, Interrupted, NodeFailed
from .graph import Node
from .hashing import digest
from .planner import cached_manifest, output_digest
from .store import Store


@dataclass
class Event:
    kind: str  # "cached" | "start" | "ran" | "published" | "failed" | "progress" | "log" | "warning"
    node: Node
    seconds: float = 0.0
    manifest: dict | None = None
    message: str = ""
    done: int = 0
    total: int = 0


@dataclass
class RunContext:
    """What a node's runner sees: its store, its input manifests, ways to report, and the stop flag."""

    store: Store
    node: Node
    inputs: dict[str, dict]
    emit: Callable[[Event], None]
    stop: threading.Event = field(default_factory=threading.Event)
    published: dict[str, dict] = field(default_factory=dict)
    where: dict = field(default_factory=dict)  # added to built_on (a Ray worker's node id)

    def progress(self, done: int, total: int, message: str = "") -> None:
        self.emit(Event("progress", self.node, done=done, total=total, message=message))

    def log(self, message: str) -> None:
        self.emit(Event("log", self.node, message=message))

    def stop_requested(self) -> bool:
        """True once the build was asked to stop (Ctrl-C, SIGTERM): finish the current step and return."""
        return self.stop.is_set()

    def check_stop(self) -> None:
        """Raise Interrupted when the build was asked to stop (for runners that stop between items)."""
        if self.stop.is_set():
            raise Interrupted(f"{self.node.name} stopped")

    def publish(self, child: Node, body: dict) -> dict:
        """Write the manifest of a node this one produces (a checkpoint) while still running."""
        manifest = node_manifest(child, body, 0.0, [("producer", self.node, None)], self.where)
        manifest = self.store.write_manifest(child.key, manifest, stale=_stale_test(child))
        self.published[child.id] = manifest
        self.emit(Event("published", child, manifest=manifest))
        return manifest


def run_node(store: Store, node: Node, inputs: dict[str, dict], emit: Callable[[Event], None], stop: threading.Event, where: dict | None = None) -> tuple:
    """Run one node; returns its outcome (kind, node, manifest or error, ran), whatever happens
    (even if printing an event fails), so the scheduler never waits forever."""
    try:
        manifest, ran = build_node(store, node, inputs, emit, stop, where or {})
        return ("done", node, manifest, ran)
    except CorruptObject as exc:
        return ("corrupt", node, exc, False)
    except Interrupted as exc:
        return ("failed", node, exc, False)
    except EvsysError as exc:
        _quietly(emit, Event("failed", node, message=str(exc)))
        return ("failed", node, exc, False)
    except BaseException as exc:  # a bug in a rule: keep its traceback
        wrapped = NodeFailed(f"{node.name} failed: {type(exc).__name__}: {exc}")
        wrapped.traceback = traceback.format_exc()
        _quietly(emit, Event("failed", node, message=wrapped.message))
        return ("failed", node, wrapped, False)


_BUILDING_HERE: dict[str, str] = {}  # node key -> the name of the node this process builds under it


def build_node(store: Store, node: Node, inputs: dict[str, dict], emit: Callable[[Event], None], stop: threading.Event, where: dict) -> tuple[dict, bool]:
    """Under the node's lock: serve it if another build finished it meanwhile, else run it and
    write its manifest (after its objects). Returns (the stored manifest, whether it ran)."""
    def waiting() -> None:
        twin = _BUILDING_HERE.get(node.key)  # another arm's node that came out the same (early cutoff)
        who = f"{twin} of this build computes the same thing (same key)" if twin else "another build on this store is running it"
        print(f"evsys: {node.name}: waiting, {who}", file=sys.stderr, flush=True)

    with store.lock(node.key, waiting, stop):
        _BUILDING_HERE[node.key] = node.name
        try:
            manifest = cached_manifest(store, node)
            if manifest is not None:  # another build finished it while we waited
                emit(Event("cached", node, manifest=manifest))
                return manifest, False
            manifest, seconds = _run_and_store(store, node, inputs, emit, stop, where)
        finally:
            _BUILDING_HERE.pop(node.key, None)
    emit(Event("ran", node, seconds=seconds, manifest=manifest))
    return manifest, True


def _run_and_store(store: Store, node: Node, inputs: dict[str, dict], emit: Callable[[Event], None], stop: threading.Event, where: dict) -> tuple[dict, float]:
    """Run the node and write its manifest; returns it and the seconds it ran."""
    emit(Event("start", node))
    ctx = RunContext(store, node, inputs, emit, stop, where=where)
    check_keyed_files(node)
    started = time.perf_counter()
    body = node.run(ctx)
    seconds = time.perf_counter() - started
    check_keyed_files(node)  # changed while it ran: what it read may be either content
    manifest = node_manifest(node, body, seconds, [(label, p, inputs[label]) for label, p in node.inputs], where)
    for child in node.produces:
        if store.complete_manifest(child.key, label=child.name) is None:
            raise NodeFailed(f"{node.name} finished without producing {child.name}")
    return store.write_manifest(node.key, manifest, stale=_stale_test(node)), seconds


def check_keyed_files(node: Node) -> None:
    """Refuse to run or store a node once a file the build's keys were made of changed since the
    config was compiled (a data file, a model or tokenizer file edited during the build): the
    node would read other bytes than its key holds. A file absent here (a worker on another
    machine) is not checked here; the node cannot read it either."""
    for path, stamp in (node.disk_stamps or {}).items():
        try:
            st = os.stat(path)
        except OSError:
            continue
        if [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, st.st_dev] != stamp:
            raise NodeFailed(f"{node.name}: {path} changed while this build ran (its key holds the content read when the config was compiled); build again")


def _quietly(emit, event: Event) -> None:
    """Report a failure without letting a broken reporter (a closed pipe) hide the failure itself."""
    try:
        emit(event)
    except Exception:  # noqa: BLE001 - the original failure is what gets raised
        return


def node_manifest(node: Node, body: dict, seconds: float, inputs: list[tuple[str, Node, dict | None]], where: dict | None = None) -> dict:
    """The manifest of a built node: its recipe, its inputs (with the output digests its key was
    made of), outputs and their digest, attachments, metrics, timings, and where it was built."""
    outputs = body.get("outputs", {})
    return {
        "key": node.key,
        "id": node.id,
        "rule": node.rule,
        "version": node.version,
        "name": node.name,
        "params": node.params,
        "inputs": [
            {"label": label, "key": p.key, "id": p.id, "name": p.name, "rule": p.rule, "digest": output_digest(m) if m else None}
            for label, p, m in inputs
        ],
        "outputs": outputs,
        "output_digest": digest(outputs),
        "attachments": body.get("attachments", {}),
        "metrics": body.get("metrics", {}),
        "stats": body.get("stats", {}),
        "timings": {"seconds": round(seconds, 4)},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "built_on": {"host": socket.gethostname(), **(where or {}), **body.get("built_on", {})},
    }


def _stale_test(node: Node) -> Callable[[dict], bool] | None:
    """For a node whose output lives partly on a service: whether an already stored manifest of it
    references what the service lost, so the fresh one replaces it instead of being dropped."""
    check = node.check_stored
    return (lambda manifest: bool(check(manifest))) if check is not None else None
