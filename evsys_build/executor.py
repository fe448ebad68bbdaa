"""Run a graph: resolve each node's key once its inputs are built, serve it from cache or run it
under a per-node lock, in parallel where independent.

A node's runner gets a RunContext and returns {"outputs", "metrics", "stats", "attachments",
"built_on"}; the executor writes the manifest atomically afterwards, so a failed or killed node
leaves nothing behind. `outputs` is what the nodes below read and key on (its digest is the
node's output digest); `attachments` are blobs kept beside it (for `show`) that no key depends on.

The scheduler here decides *what* runs; a NodePool (pools.py: inline, threads; ray_pool.py: Ray)
decides *where*. Every pool runs a node through `run_node` below, so results are the same bytes
whichever runs them.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable

from .errors import CorruptObject, EvsysError, Interrupted, NodeFailed
from .graph import Graph, Node
from .hashing import digest
from .planner import cached_manifest, output_digest
from .store import Store, referenced_objects

if TYPE_CHECKING:
    from .pools import NodePool

MAX_HEALS = 3  # rebuilds of corrupt inputs per node before the corruption is reported as a failure


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


class Executor:
    """Builds every node of a graph, `jobs` at a time (or as a given NodePool runs them).

    run(graph)
      _schedule()      every pending node whose inputs are built: resolve its key, then serve it
                       from the store or submit it to the pool
      _settle(...)     one completion: a result, a published checkpoint, a failure, or a corrupt
                       input, whose owner is rebuilt (`_heal`) before the node is retried
      then             raise Interrupted or the first failure, once running nodes have stopped
    """

    def __init__(self, store: Store, jobs: int = 1, on_event: Callable[[Event], None] | None = None, stop: threading.Event | None = None, pool: "NodePool | None" = None):
        from .pools import ThreadPool

        self.store = store
        self.jobs = max(1, jobs)
        self.on_event = on_event or (lambda e: None)
        self.stop = stop or threading.Event()
        self.pool = pool or ThreadPool(self.jobs)
        self.executions = 0

    def run(self, graph: Graph) -> dict[str, dict]:
        """Build the graph; returns node id -> manifest. Raises the first failure, or Interrupted."""
        self.results: dict[str, dict] = {}
        self.pending = {n.id: n for n in graph.nodes()}
        self.running: set[str] = set()
        self.completions: queue.Queue = queue.Queue()
        self.failure: BaseException | None = None
        self.heals: dict[str, int] = {}
        self.unplanned: dict[str, tuple[Node, dict]] = {}  # published nodes the graph does not hold (a checkpoint saved on interrupt)
        self.pool.open(graph, self.store, self._emit, self.stop)
        try:
            while self.pending or self.running:
                if self.failure is None and not self.stop.is_set():
                    self._schedule()
                if not self.running:
                    if self.pending and self.failure is None and not self.stop.is_set():
                        stuck = ", ".join(n.name for n in self.pending.values())
                        raise NodeFailed(f"nothing can run but these nodes are not built: {stuck}")
                    break
                self._settle(*self.completions.get())
        finally:
            self.pool.close()
        if self.stop.is_set():
            raise self.failure if isinstance(self.failure, Interrupted) else Interrupted("the build was stopped")
        if self.failure is not None:
            raise self.failure
        return self.results

    # -- scheduling -------------------------------------------------------------
    def _schedule(self) -> None:
        for node in list(self.pending.values()):
            if node.id in self.running or node.id not in self.pending:
                continue
            if node.produced_by is not None:
                if node.produced_by.id in self.results:  # its producer was cached or has finished
                    manifest = self.store.complete_manifest(node.key)
                    if manifest is None:
                        raise NodeFailed(f"{node.produced_by.name} is built but {node.name} is not stored")
                    self._done(node, manifest, "cached")
                continue
            if not all(p.id in self.results for _, p in node.inputs):
                continue
            node.resolve({label: output_digest(self.results[p.id]) for label, p in node.inputs})
            manifest = cached_manifest(self.store, node, warn=lambda text, node=node: self.on_event(Event("warning", node, message=text)))
            if manifest is not None:
                self._done(node, manifest, "cached")
                continue
            self.running.add(node.id)
            inputs = {label: self.results[p.id] for label, p in node.inputs}
            self.pool.submit(node, inputs, self.completions.put)

    def _done(self, node: Node, manifest: dict, event: str, message: str = "") -> None:
        self.results[node.id] = manifest
        self.pending.pop(node.id, None)
        self.on_event(Event(event, node, manifest=manifest, message=message))

    def _settle(self, kind: str, node: Node, payload, ran: bool = False) -> None:
        if kind == "published":
            if node.id in self.pending:
                self._done(node, payload, "cached", "published")
            elif node.id not in self.results:
                self.unplanned[node.id] = (node, payload)
            return
        self.running.discard(node.id)
        if kind == "done":
            self.executions += ran
            self.results[node.id] = payload
            self.pending.pop(node.id, None)
        elif kind == "corrupt" and self.failure is None and not self.stop.is_set() and self._heal(node, payload):
            return
        else:
            self.failure = self.failure or payload

    # -- healing ------------------------------------------------------------------
    def _heal(self, node: Node, exc: CorruptObject) -> bool:
        """A runner read a corrupt or missing object (already quarantined): rebuild the node that
        owns it, then retry this one. False when this node has healed too often already."""
        self.heals[node.id] = self.heals.get(node.id, 0) + 1
        if self.heals[node.id] > MAX_HEALS:
            return False
        owners = self._owners(node, exc.name)
        for owner in owners:
            stale = [owner] + ([owner.produced_by] if owner.produced_by else [])  # a checkpoint is rebuilt by its training
            for again in stale:
                self.results.pop(again.id, None)
                self.pending[again.id] = again
        names = ", ".join(o.name for o in owners) or node.name
        self.on_event(Event("warning", node, message=f"{exc.message}; rebuilding {names}"))
        return True

    def _owners(self, node: Node, name: str) -> list[Node]:
        """The inputs (or produced nodes) of `node` whose manifests reference object `name`."""
        candidates = [p for _, p in node.inputs] + list(node.produces)
        owners = []
        for candidate in candidates:
            manifest = self.results.get(candidate.id) or (self.store.read_manifest(candidate.key) if candidate.key else None)
            if manifest is not None and name in referenced_objects(manifest):
                owners.append(candidate)
        return owners

    def _emit(self, event: Event) -> None:
        """Events from running nodes (in a pool thread, or relayed from a Ray worker)."""
        if event.kind == "published":
            self.completions.put(("published", event.node, event.manifest))
        self.on_event(event)


# -- one node, wherever a pool runs it ------------------------------------------------------------
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


def build_node(store: Store, node: Node, inputs: dict[str, dict], emit: Callable[[Event], None], stop: threading.Event, where: dict) -> tuple[dict, bool]:
    """Under the node's lock: serve it if another build finished it meanwhile, else run it and
    write its manifest (after its objects). Returns (the stored manifest, whether it ran)."""
    with store.lock(node.key):
        manifest = cached_manifest(store, node)
        if manifest is not None:  # another build finished it while we waited
            emit(Event("cached", node, manifest=manifest))
            return manifest, False
        emit(Event("start", node))
        ctx = RunContext(store, node, inputs, emit, stop, where=where)
        started = time.perf_counter()
        body = node.run(ctx)
        seconds = time.perf_counter() - started
        manifest = node_manifest(node, body, seconds, [(label, p, inputs[label]) for label, p in node.inputs], where)
        for child in node.produces:
            if store.complete_manifest(child.key, label=child.name) is None:
                raise NodeFailed(f"{node.name} finished without producing {child.name}")
        manifest = store.write_manifest(node.key, manifest, stale=_stale_test(node))
    emit(Event("ran", node, seconds=seconds, manifest=manifest))
    return manifest, True


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
