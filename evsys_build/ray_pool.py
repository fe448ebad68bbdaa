"""The Ray executor (`evsys build --executor ray [--ray-address auto|ray://host:10001]`).

Each node that must run becomes one Ray task, `ray.remote(run_task).options(num_cpus, num_gpus,
resources, max_retries)` with the node's resources (declared by its rule, overridden by the
config's `resources:` block). The driver keeps scheduling (executor.py): it serves cached nodes
itself, so a fully cached rebuild submits no task at all. A task receives the node's id and key and
its inputs' manifests, nothing else (ray_worker.py); artifacts travel through the store, which
must therefore be one every node of the cluster reaches (a shared folder, or s3://, gs://).

A task may run twice — Ray retries it when its worker or node dies, and a worker of a killed node
can still finish — which is safe: the per-node lock (a flock, or a lease on a remote store)
keeps two live copies from running together, and objects and manifests are create-only, so a
late duplicate adopts what the first one stored.
"""

from __future__ import annotations

import os
import threading
import time

from .errors import NodeFailed, UsageError
from .node_run import Event
from .graph import Graph, Node
from .project import frontend_name
from .ray_worker import BuildChannel, run_task
from .store import Store

DEFAULT_RESOURCES = {"num_cpus": 1, "num_gpus": 0, "max_retries": 3}
FORWARDED_ENV = ("EVSYS_", "HF_", "TRANSFORMERS_")  # settings workers need; never credentials (docs/scale-out.md)
CREDENTIAL_MARKERS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "CREDENTIAL", "AUTH")  # HF_TOKEN, EVSYS_*_KEY: left out


def forwarded_env(environ) -> dict:
    """The settings a build hands its Ray workers: evsys's, Hugging Face's and transformers'
    switches, but no variable whose name marks a credential (workers bring their own)."""
    return {k: v for k, v in environ.items() if k.startswith(FORWARDED_ENV) and not any(m in k.upper() for m in CREDENTIAL_MARKERS)}


def task_options(node: Node) -> dict:
    """Ray task options for a node: its resources over the defaults (1 CPU, no GPU, 3 retries)."""
    options = {**DEFAULT_RESOURCES, **node.resources}
    options = {k: v for k, v in options.items() if v is not None and k in ("num_cpus", "num_gpus", "resources", "max_retries", "memory")}
    options["retry_exceptions"] = False  # a node that raises fails the build; only lost workers are retried
    return options


def import_ray():
    try:
        import ray  # lazily: only `--executor ray` needs it
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'evsys[ray]'") from None
    return ray


class RayPool:
    """Runs nodes as Ray tasks on the cluster at `address` (None: a local Ray, started if needed)."""

    name = "ray"

    def __init__(self, project, address: str | None = None):
        if project is None or getattr(project, "config_path", None) is None:
            raise UsageError("--executor ray needs a project opened from a config file")
        self.project = project
        self.address = address
        self.submitted = 0
        self.placement: dict[str, str] = {}  # node id -> Ray node id of the task that finished it
        self.ray = import_ray()

    # -- NodePool -------------------------------------------------------------------------------
    def open(self, graph: Graph, store: Store, emit, stop: threading.Event) -> None:
        ray = self.ray
        if not ray.is_initialized():
            env = forwarded_env(os.environ)
            ray.init(address=self.address, runtime_env={"env_vars": env} if env else None)
        self.nodes = {n.id: n for n in graph.nodes()}
        self.emit, self.stop = emit, stop
        self.submitted = 0
        self.inflight: dict = {}  # ObjectRef -> (node, finish)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        here = ray.get_runtime_context().get_node_id()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # on the driver's node; if that node dies anyway, Ray restarts it elsewhere and the
        # handles workers hold stay valid (events in flight are lost: they are progress, not results)
        self.channel = ray.remote(BuildChannel).options(
            num_cpus=0, max_restarts=-1, max_task_retries=-1, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True)
        ).remote()
        self.task = ray.remote(run_task)
        self.context = ray.put({
            "store": store.location,
            "upstream": store.upstream.location if store.upstream is not None else None,
            "config": os.path.abspath(self.project.config_path),
            "cwd": os.getcwd(),
            "frontend": frontend_name(),
            "arms": sorted(graph.by_arm),  # whose callbacks the workers feed (`build --arm`: that one)
        })
        self._loop = threading.Thread(target=self._drive, name="evsys-ray", daemon=True)
        self._loop.start()

    def submit(self, node: Node, inputs: dict[str, dict], finish) -> None:
        spec = {"node_id": node.id, "key": node.key, "name": node.name, "inputs": inputs}
        ref = self.task.options(**task_options(node)).remote(self.context, spec, self.channel)
        with self._lock:
            self.inflight[ref] = (node, finish)
            self.submitted += 1

    def close(self) -> None:
        self._closing.set()
        self._loop.join()
        self._drain()
        try:
            self.ray.kill(self.channel)
        except Exception:  # noqa: BLE001 - already gone with its node
            pass

    # -- the driver's loop: completions and relayed events ---------------------------------------
    def _drive(self) -> None:
        """Until closed: relay workers' events, pass Ctrl-C on, and hand each finished task's
        outcome to the scheduler. Nothing here may end the loop: the scheduler waits on it."""
        ray = self.ray
        while True:
            with self._lock:
                refs = list(self.inflight)
            if not refs and self._closing.is_set():
                return
            try:
                ready = ray.wait(refs, num_returns=len(refs), timeout=0.1)[0] if refs else []
            except Exception:  # noqa: BLE001 - the cluster is reconnecting: look again
                ready = []
            if not refs:
                time.sleep(0.05)
            if self.stop.is_set():
                self._quietly(lambda: self.channel.request_stop.remote())  # again each round: a restarted channel forgets
            self._drain()  # events first: a task's events precede its result
            for ref in ready:
                with self._lock:
                    node, finish = self.inflight.pop(ref)
                finish(self._outcome(ref, node))

    def _drain(self) -> None:
        events = self._quietly(lambda: self.ray.get(self.channel.drain.remote(), timeout=30))
        self._relay(events or [])

    @staticmethod
    def _quietly(call):
        try:
            return call()
        except Exception:  # noqa: BLE001 - the channel's node died; Ray restarts it, outcomes still arrive
            return None

    def _outcome(self, ref, node: Node) -> tuple:
        try:
            out = self.ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - a task Ray gave up on (its node died more often than max_retries)
            return ("failed", node, NodeFailed(f"{node.name} failed on Ray: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"), False)
        self.placement[node.id] = out.get("ray_node", "")
        if out["kind"] == "done":
            return ("done", node, out["manifest"], out["ran"])
        error = out["error"]
        if out.get("traceback"):
            error.traceback = out["traceback"]
        return (out["kind"], node, error, False)

    def _relay(self, events: list[dict]) -> None:
        for e in events:
            node = self.nodes.get(e["node_id"]) or _produced_node(e, self.nodes)
            if node is None:
                continue
            try:
                self.emit(Event(e["kind"], node, e["seconds"], e["manifest"], e["message"], e["done"], e["total"]))
            except Exception:  # noqa: BLE001 - a broken printer must not stop the build
                pass


def _produced_node(event: dict, nodes: dict[str, Node]) -> Node | None:
    """A node a running task produced that the graph does not hold (a checkpoint saved when a build
    is interrupted), rebuilt from its manifest so the run records it and gc keeps it."""
    producer = nodes.get(event.get("producer_id") or "")
    manifest = event.get("manifest")
    if producer is None or not manifest:
        return None
    node = Node(manifest["rule"], manifest["name"], manifest["version"], manifest["params"], inputs=[("train", producer)], arm=producer.arm, produced_by=producer)
    node.key = manifest["key"]
    return node if node.id == event["node_id"] else None
