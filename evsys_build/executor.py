"""Run a graph: cached nodes are skipped, the rest run under a per-node lock, in parallel where independent.

A node's runner gets a RunContext and returns {"outputs", "metrics", "stats"}; the executor
writes the manifest atomically afterwards, so a failed or killed node leaves nothing behind.
"""

from __future__ import annotations

import queue
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from .errors import EvsysError, NodeFailed
from .graph import Graph, Node
from .planner import is_cached
from .store import Store


@dataclass
class Event:
    kind: str  # "cached" | "start" | "ran" | "published" | "failed" | "progress" | "log"
    node: Node
    seconds: float = 0.0
    manifest: dict | None = None
    message: str = ""
    done: int = 0
    total: int = 0


@dataclass
class RunContext:
    """What a node's runner sees: its store, its input manifests, and ways to report."""

    store: Store
    node: Node
    inputs: dict[str, dict]
    emit: Callable[[Event], None]
    published: dict[str, dict] = field(default_factory=dict)

    def progress(self, done: int, total: int, message: str = "") -> None:
        self.emit(Event("progress", self.node, done=done, total=total, message=message))

    def log(self, message: str) -> None:
        self.emit(Event("log", self.node, message=message))

    def publish(self, child: Node, body: dict) -> dict:
        """Write the manifest of a node this one produces (a checkpoint) while still running."""
        manifest = _manifest(child, body, seconds=0.0)
        self.store.write_manifest(child.key, manifest)
        self.published[child.key] = manifest
        self.emit(Event("published", child, manifest=manifest))
        return manifest


class Executor:
    """Builds every node of a graph, `jobs` at a time."""

    def __init__(self, store: Store, jobs: int = 1, on_event: Callable[[Event], None] | None = None):
        self.store = store
        self.jobs = max(1, jobs)
        self.on_event = on_event or (lambda e: None)
        self.executions = 0

    def run(self, graph: Graph) -> dict[str, dict]:
        """Build the graph; returns key -> manifest. Raises the first node failure after running work stops."""
        nodes = graph.nodes()
        results: dict[str, dict] = {}
        pending = {n.key: n for n in nodes}
        completions: queue.Queue = queue.Queue()
        running: set[str] = set()
        failure: BaseException | None = None

        def finish(key: str, manifest: dict) -> None:
            results[key] = manifest
            pending.pop(key, None)

        def emit(event: Event) -> None:
            if event.kind == "published":
                completions.put(("published", event.node.key, event.manifest))
            self.on_event(event)

        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            while pending or running:
                if failure is None:
                    for node in list(pending.values()):
                        if node.produced_by is not None:
                            if node.produced_by.key in results:  # its producer was cached or has finished
                                manifest = self.store.read_manifest(node.key)
                                if manifest is None:
                                    raise NodeFailed(f"{node.produced_by.name} is built but {node.name} is not stored")
                                self.on_event(Event("cached", node, manifest=manifest))
                                finish(node.key, manifest)
                            continue
                        if node.key in running or not all(p.key in results for _, p in node.inputs):
                            continue
                        if is_cached(self.store, node):
                            manifest = self.store.read_manifest(node.key)
                            if manifest is not None:
                                self.on_event(Event("cached", node, manifest=manifest))
                                finish(node.key, manifest)
                                continue
                        running.add(node.key)
                        pool.submit(self._run_node, node, results, emit, completions)
                if not running:
                    if pending and failure is None:
                        stuck = ", ".join(n.name for n in pending.values())
                        raise NodeFailed(f"nothing can run but these nodes are not built: {stuck}")
                    break
                kind, key, payload = completions.get()
                if kind == "published":
                    if key in pending:
                        self.on_event(Event("cached", pending[key], manifest=payload, message="published"))
                        finish(key, payload)
                    continue
                running.discard(key)
                if kind == "failed":
                    failure = failure or payload
                else:
                    finish(key, payload)
        if failure is not None:
            raise failure
        return results

    def _run_node(self, node: Node, results: dict, emit, completions: queue.Queue) -> None:
        """Run one node; exactly one completion is always queued, whatever happens (even if
        printing an event fails), so the scheduler never waits forever."""
        outcome: tuple = ("failed", node.key, NodeFailed(f"{node.name} stopped without a result"))
        try:
            outcome = ("done", node.key, self._build_node(node, results, emit))
        except EvsysError as exc:
            outcome = ("failed", node.key, exc)
            _quietly(emit, Event("failed", node, message=str(exc)))
        except BaseException as exc:  # a bug in a rule: keep its traceback
            wrapped = NodeFailed(f"{node.name} failed: {type(exc).__name__}: {exc}")
            wrapped.traceback = traceback.format_exc()
            outcome = ("failed", node.key, wrapped)
            _quietly(emit, Event("failed", node, message=wrapped.message))
        finally:
            completions.put(outcome)

    def _build_node(self, node: Node, results: dict, emit) -> dict:
        with self.store.lock(node.key):
            if is_cached(self.store, node):  # another build finished it while we waited
                manifest = self.store.read_manifest(node.key)
                if manifest is not None:
                    emit(Event("cached", node, manifest=manifest))
                    return manifest
            emit(Event("start", node))
            ctx = RunContext(self.store, node, {label: results[p.key] for label, p in node.inputs}, emit)
            started = time.perf_counter()
            body = node.run(ctx)
            seconds = time.perf_counter() - started
            self.executions += 1
            manifest = _manifest(node, body, seconds)
            for child in node.produces:
                if not self.store.has_manifest(child.key):
                    raise NodeFailed(f"{node.name} finished without producing {child.name}")
            self.store.write_manifest(node.key, manifest)
        emit(Event("ran", node, seconds=seconds, manifest=manifest))
        return manifest


def _quietly(emit, event: Event) -> None:
    """Report a failure without letting a broken reporter (a closed pipe) hide the failure itself."""
    try:
        emit(event)
    except Exception:  # noqa: BLE001 - the original failure is what gets raised
        return


def _manifest(node: Node, body: dict, seconds: float) -> dict:
    return {
        "key": node.key,
        "rule": node.rule,
        "version": node.version,
        "name": node.name,
        "params": node.params,
        "inputs": [{"label": label, "key": p.key, "name": p.name, "rule": p.rule} for label, p in node.inputs],
        "outputs": body.get("outputs", {}),
        "metrics": body.get("metrics", {}),
        "stats": body.get("stats", {}),
        "timings": {"seconds": round(seconds, 4)},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
