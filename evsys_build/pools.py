"""Where nodes run: the small interface every executor implements, and the two that need nothing
beyond Python — inline (one at a time, in the calling thread: for a debugger) and a thread pool
(the default). Ray is in ray_pool.py, loaded only when asked for.

The scheduler (executor.py) owns what runs and in what order; a pool only runs what it is handed,
through `executor.run_node`, and reports each outcome exactly once through `finish`.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable, Protocol

from .errors import UsageError
from .graph import Graph, Node
from .store import Store

if TYPE_CHECKING:  # the rest loads when a pool runs: `evsys plan` imports this module for EXECUTORS
    from concurrent.futures import ThreadPoolExecutor

    from .node_run import Event

EXECUTORS = ("threads", "inline", "ray")

Finish = Callable[[tuple], None]


class NodePool(Protocol):
    name: str
    submitted: int  # nodes handed to the pool in this run (a fully cached rerun submits none)

    def open(self, graph: Graph, store: Store, emit: Callable[[Event], None], stop: threading.Event) -> None:
        """Before a run: what nodes will report to (`emit`) and the build's stop flag."""

    def submit(self, node: Node, inputs: dict[str, dict], finish: Finish) -> None:
        """Run `node` (its key resolved; `inputs` are its inputs' manifests); call `finish(outcome)` once."""

    def close(self) -> None:
        """After a run (the scheduler has every outcome it waits for)."""


class InlinePool:
    """One node at a time in the scheduler's own thread: breakpoints and tracebacks where you expect them."""

    name = "inline"
    runs_here = True  # nodes run in this process: warming one here helps it (`Node.warm`)

    def __init__(self):
        self.submitted = 0

    def open(self, graph, store, emit, stop) -> None:
        self.store, self.emit, self.stop = store, emit, stop
        self.submitted = 0

    def submit(self, node: Node, inputs: dict[str, dict], finish: Finish) -> None:
        from .node_run import run_node

        self.submitted += 1
        finish(run_node(self.store, node, inputs, self.emit, self.stop))

    def close(self) -> None:
        pass


class ThreadPool:
    """`jobs` nodes at once in threads of this process (the default executor)."""

    name = "threads"
    runs_here = True

    def __init__(self, jobs: int = 2):
        self.jobs = max(1, jobs)
        self.submitted = 0
        self._pool: ThreadPoolExecutor | None = None

    def open(self, graph, store, emit, stop) -> None:
        self.store, self.emit, self.stop = store, emit, stop
        self.submitted = 0
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="evsys-node")

    def submit(self, node: Node, inputs: dict[str, dict], finish: Finish) -> None:
        from .node_run import run_node

        self.submitted += 1
        self._pool.submit(lambda: finish(run_node(self.store, node, inputs, self.emit, self.stop)))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def make_pool(executor: str = "threads", jobs: int = 2, ray_address: str | None = None, project=None) -> NodePool:
    """The pool `evsys build --executor` names. Ray needs the opened project (its workers reopen it
    from the config) and `pip install 'evsys[ray]'`."""
    if executor == "threads":
        return ThreadPool(jobs)
    if executor == "inline":
        return InlinePool()
    if executor == "ray":
        from .ray_pool import RayPool  # lazily: ray loads only for --executor ray

        return RayPool(project, address=ray_address)
    raise UsageError(f"--executor {executor}: choose one of {', '.join(EXECUTORS)}")
