"""Run a graph: resolve each node's key once its inputs are built, serve it from cache or run it
under a per-node lock, in parallel where independent.

The scheduler here decides *what* runs; a NodePool (pools.py: inline, threads; ray_pool.py: Ray)
decides *where*. Every pool runs a node through `node_run.run_node`, so results are the same
bytes whichever runs them.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable

from .errors import CorruptObject, Interrupted, NodeFailed
from .graph import Graph, Node
from .node_run import Event, RunContext  # noqa: F401  (RunContext: node runners import it from here)
from .planner import cached_manifest, output_digest
from .pools import NodePool, ThreadPool
from .store import Store, referenced_objects

MAX_HEALS = 3  # rebuilds of corrupt inputs per node before the corruption is reported as a failure


class Executor:
    """Builds every node of a graph, `jobs` at a time (or as a given NodePool runs them).

    run(graph)
      _schedule()      every pending node whose inputs are built: resolve its key, then serve it
                       from the store or submit it to the pool
      _settle(...)     one completion: a result, a published checkpoint, a failure, or a corrupt
                       input, whose owner is rebuilt (`_heal`) before the node is retried
      then             raise Interrupted or the first failure, once running nodes have stopped
    """

    def __init__(self, store: Store, jobs: int = 1, on_event: Callable[[Event], None] | None = None, stop: threading.Event | None = None, pool: NodePool | None = None):
        self.store = store
        self.jobs = max(1, jobs)
        self.on_event = on_event or (lambda e: None)
        self.stop = stop or threading.Event()
        self.pool = pool or ThreadPool(self.jobs)
        self.executions = 0
        # called (in the scheduling thread) before a node that publishes others (a training's
        # checkpoints) is submitted, with its input manifests: the run records what it trains
        self.on_producer_start: Callable[[Node, dict[str, dict]], None] | None = None

    def run(self, graph: Graph) -> dict[str, dict]:
        """Build the graph; returns node id -> manifest. Raises the first failure, or Interrupted."""
        self.results: dict[str, dict] = {}
        self.pending = {n.id: n for n in graph.nodes()}
        self.running: set[str] = set()
        self.completions: queue.Queue = queue.Queue()
        self.failure: BaseException | None = None
        self.heals: dict[str, int] = {}
        self.warm_ups = WarmUps()
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
            self.warm_ups.close()
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
            if node.produces and self.on_producer_start is not None:
                self.on_producer_start(node, inputs)
            self._warm_after(node)
            self.warm_ups.wait_for(node)
            self.pool.submit(node, inputs, self.completions.put)

    def _warm_after(self, node: Node) -> None:
        """`node` is about to run: start warming (`Node.warm`) the pending nodes that depend on it,
        each once, in a background thread, when nodes run in this process."""
        if not getattr(self.pool, "runs_here", False):
            return
        for other in self.pending.values():
            if other.warm is not None and other.id not in self.warm_ups.started and _depends_on(other, node):
                self.warm_ups.start(other, self.store)

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
        elif isinstance(self.failure, Interrupted) and isinstance(payload, Interrupted):
            self.failure = Interrupted(f"{self.failure.message}; {payload.message}")  # each stopped node says what it kept
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


def _depends_on(node: Node, ancestor: Node) -> bool:
    """Whether `ancestor` is among the nodes `node` reads, directly or not."""
    seen, stack = set(), [p for _, p in node.inputs]
    while stack:
        current = stack.pop()
        if current.id == ancestor.id:
            return True
        if current.id not in seen:
            seen.add(current.id)
            stack.extend(p for _, p in current.inputs)
    return False


class WarmUps:
    """The warm-ups of one build (`Node.warm`), each in a thread of its own, and what they left to
    close: a warm-up may return an object with `close()` (a worker process started ahead), closed
    when the build ends, or at once when its warm-up finishes after that. A node's run starts once
    its warm-up has finished (warm-ups are short: they start things, or fill caches)."""

    WAIT_SECONDS = 10  # the longest a node's run waits for its warm-up to finish

    def __init__(self):
        self.lock = threading.Lock()
        self.started: dict[str, threading.Thread] = {}
        self.left: list = []
        self.closed = False

    def start(self, node: Node, store: Store) -> None:
        thread = threading.Thread(target=self.run, args=(node, store), name=f"evsys-warm-{node.name}", daemon=True)
        self.started[node.id] = thread
        thread.start()

    def wait_for(self, node: Node) -> None:
        """Before a node runs: its warm-up, if one started, has finished (what it started is there to adopt)."""
        thread = self.started.get(node.id)
        if thread is not None:
            thread.join(self.WAIT_SECONDS)

    def run(self, node: Node, store: Store) -> None:
        """A node's warm-up, in its own thread; a failure is left for its run to meet and report."""
        try:
            left = node.warm(store)
        except Exception:  # noqa: BLE001 - the node's own run raises it, naming the node
            return
        if left is None:
            return
        with self.lock:
            if not self.closed:
                self.left.append(left)
                return
        left.close()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            left, self.left = self.left, []
        for each in left:
            try:
                each.close()
            except Exception:  # noqa: BLE001 - closing a warm-up's leftovers must not fail the build
                pass
