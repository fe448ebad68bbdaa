"""What runs inside a Ray worker: one node, rebuilt from its config, reported back through a channel.

Only keys and manifests cross between tasks. A worker gets the store's location, the config's path,
the node's id and key, and its inputs' manifests; it reopens the project from the config (once per
worker process), looks the node up by id, checks that the key it computes is the driver's, and runs
the node through `executor.run_node` — the same code the thread pool runs, so the same bytes.
Artifacts go through the store; events (progress, log lines, a checkpoint published while training
runs) go to the driver through a small actor, `BuildChannel`, which also carries Ctrl-C the other way.

Nothing here imports Ray at module level: the driver wraps these with `ray.remote` (ray_pool.py).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import traceback
from pathlib import Path

from .errors import EvsysError, NodeFailed
from .node_run import Event, run_node
from .planner import output_digest
from .project import frontend
from .store import open_store

PROGRESS_EVERY = 0.5  # seconds between progress events relayed per node
STOP_POLL = 0.5  # seconds between checks of the driver's stop flag

_opened: dict[tuple, tuple] = {}  # per worker process: (frontend, config, store, upstream) -> (store, project)
_open_lock = threading.Lock()


class BuildChannel:
    """A Ray actor on the driver's node: workers put events, the driver drains them; the driver's
    stop flag (Ctrl-C) goes the other way."""

    def __init__(self):
        self.events: list[dict] = []
        self.stop = False

    def put(self, events: list[dict]) -> None:
        self.events.extend(events)

    def drain(self) -> list[dict]:
        out, self.events = self.events, []
        return out

    def request_stop(self) -> None:
        self.stop = True

    def stopped(self) -> bool:
        return self.stop


def run_task(context: dict, spec: dict, channel) -> dict:
    """The Ray task of one node. Returns {"kind", "manifest" | "error", "ran", "ray_node"}."""
    import ray  # in a worker process, ray is loaded already

    ray_node = ray.get_runtime_context().get_node_id()
    stop = threading.Event()
    relay = _Relay(channel)
    poller = threading.Thread(target=_poll_stop, args=(channel, stop, relay), daemon=True)
    poller.start()
    try:
        with _in_directory(context["cwd"]):
            store, node = _node(context, spec)
            kind, _node_, payload, ran = run_node(store, node, spec["inputs"], relay.emit, stop, where={"ray_node": ray_node})
        if kind == "done":
            return {"kind": "done", "manifest": payload, "ran": ran, "ray_node": ray_node}
        return {"kind": kind, "error": payload, "traceback": getattr(payload, "traceback", None), "ray_node": ray_node}
    except EvsysError as exc:
        return {"kind": "failed", "error": exc, "traceback": getattr(exc, "traceback", None), "ray_node": ray_node}
    except Exception as exc:  # noqa: BLE001 - reopening the project failed in a way the driver must see
        return {"kind": "failed", "error": NodeFailed(f"{spec['name']}: the worker could not run it: {type(exc).__name__}: {exc}"), "traceback": traceback.format_exc(), "ray_node": ray_node}
    finally:
        relay.done.set()
        relay.flush()  # every event reaches the channel before the result reaches the driver


def _node(context: dict, spec: dict):
    """The store and this worker's copy of the node, its key resolved and checked against the driver's."""
    for fresh in (False, True):  # a config edited since this worker opened it: reopen once
        store, project = _project(context, fresh)
        feed = getattr(project, "feed_arms", None)  # a worker runs one task at a time: this build's arms
        if feed is not None and context.get("arms") is not None:
            feed(context["arms"])
        try:
            node = project.graph.node(spec["node_id"])
        except KeyError:
            continue
        node.resolve({label: output_digest(spec["inputs"][label]) for label, _ in node.inputs})
        if node.key == spec["key"]:
            return store, node
    raise NodeFailed(
        f"{spec['name']}: this Ray worker compiles a different node from {context['config']} than the driver "
        "(its config, data files, model folder, plugins or evsys code differ); every machine of the cluster "
        "needs the same files at the same paths and the same installed code (docs/scale-out.md)"
    )


def _project(context: dict, fresh: bool):
    key = (context["frontend"], context["config"], context["store"], context.get("upstream"))
    with _open_lock:
        if fresh or key not in _opened:
            store = open_store(context["store"], context.get("upstream"))
            _opened[key] = (store, frontend(context["frontend"]).open_project(Path(context["config"]), store))
        return _opened[key]


@contextlib.contextmanager
def _in_directory(path: str):
    """The driver's working directory, so paths in the config resolve as they did there (a Ray
    worker runs one task at a time, so changing it for the task is safe)."""
    before = os.getcwd()
    try:
        os.chdir(path)
    except OSError:
        yield
        return
    try:
        yield
    finally:
        os.chdir(before)


class _Relay:
    """Sends a worker's events to the driver (progress throttled); `flush` waits until they are in."""

    def __init__(self, channel):
        self.channel = channel
        self.done = threading.Event()
        self._last_progress: dict[str, float] = {}
        self._pending = None

    def emit(self, event: Event) -> None:
        if event.kind == "progress":
            now = time.monotonic()
            if now - self._last_progress.get(event.node.id, 0.0) < PROGRESS_EVERY and event.done != event.total:
                return
            self._last_progress[event.node.id] = now
        self._pending = self.channel.put.remote([_event_dict(event)])

    def flush(self) -> None:
        import ray

        if self._pending is not None:
            with contextlib.suppress(Exception):  # the driver is gone: nobody is listening
                ray.get(self._pending, timeout=30)  # an actor runs one caller's calls in order


def _event_dict(event: Event) -> dict:
    node = event.node
    return {
        "kind": event.kind,
        "node_id": node.id,
        "producer_id": node.produced_by.id if node.produced_by is not None else None,
        "manifest": event.manifest,
        "message": event.message,
        "seconds": event.seconds,
        "done": event.done,
        "total": event.total,
    }


def _poll_stop(channel, stop: threading.Event, relay: _Relay) -> None:
    import ray

    while not relay.done.wait(STOP_POLL):
        try:
            if ray.get(channel.stopped.remote(), timeout=10):
                stop.set()
                return
        except Exception:  # noqa: BLE001 - the driver is gone; the task ends on its own
            return
