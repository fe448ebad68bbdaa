"""`build` and `plan` as plain functions (the CLI and tests share them)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Callable

from .errors import CorruptObject, Interrupted, NodeFailed, UsageError
from .executor import Event, Executor
from .fastpath import save as save_snapshot
from .fastpath import try_fast_build
from .interrupts import stop_on_signals
from .planner import PlanEntry, plan
from .pools import NodePool, make_pool
from .project import frontend
from .runs import finish_run, start_run
from .store import Store, referenced_objects
from .watch import watching


def _project_and_graph(config: Path, store: Store, arm: str | None):
    project = frontend().open_project(config, store)
    return (project, *_graph_for(project, arm))


def _graph_for(project, arm: str | None):
    if arm is not None and arm not in project.arm_names:
        raise UsageError(f"--arm {arm}: no such arm; the config has: {', '.join(project.arm_names)}")
    return project.graph_for(arm), ([arm] if arm else project.arm_names)


def plan_entries(config: Path, store: Store, arm: str | None = None) -> list[PlanEntry]:
    project, graph, _ = _project_and_graph(config, store, arm)
    return plan(store, graph, project.refs(store))


def run_build(config: Path, store: Store, arm: str | None = None, jobs: int = 2, echo: Callable[[str], None] = print, executor: "str | NodePool" = "threads", ray_address: str | None = None) -> int:
    """Build; returns the exit code (0 ok, 1 a node failed). Config errors and Interrupted raise.

    A config that nothing about has changed since its last fully cached build into a local
    store takes the fast path (fastpath.py); a fully cached build leaves the snapshot that path
    checks. A remote store is shared with other machines, so its builds always compile.
    Otherwise a frontend's `fetch(config, strict=False)` first downloads what the config needs
    and is not here yet (when the network is allowed; else opening the project says what is missing).
    """
    local = getattr(store.bucket, "root", None) is not None
    if local and try_fast_build(store, config, arm, echo):
        return 0
    fetch = getattr(frontend(), "fetch", None)
    if fetch is not None:
        fetch(config, strict=False)
    lines: list[str] = []

    def tee(text: str) -> None:
        lines.append(text)
        echo(text)

    with watching() as watcher:
        project = frontend().open_project(config, store)
    code, run, runner, printer = _build(project, store, arm, jobs, tee, executor=executor, ray_address=ray_address)
    if local and code == 0 and runner.executions == 0 and not printer.warned and getattr(project, "fast_path_ok", False):
        graph, _ = _graph_for(project, arm)
        save_snapshot(store, config, arm, watcher, [n.key for n in graph.nodes()], lines, run)
    return code


def build_project(project, store: Store, arm: str | None = None, jobs: int = 2, echo: Callable[[str], None] = print, stop: threading.Event | None = None, executor: "str | NodePool" = "threads", ray_address: str | None = None) -> int:
    """Build an already opened project and record the run; returns the exit code.

    `executor` says where nodes run (pools.py: threads, inline, ray; or a NodePool). The whole
    build holds the store's build lock (gc waits for it, or on a remote store spares what it
    writes); Ctrl-C/SIGTERM set `stop` (see interrupts.py): nodes finish their step, the run is
    recorded as interrupted, and Interrupted is raised (exit 130).
    """
    return _build(project, store, arm, jobs, echo, stop, executor, ray_address)[0]


def _build(project, store: Store, arm: str | None, jobs: int, echo: Callable[[str], None], stop: threading.Event | None = None, executor: "str | NodePool" = "threads", ray_address: str | None = None):
    """(exit code, the run record, the executor, the printer) of one build."""
    graph, arms = _graph_for(project, arm)
    preflight = getattr(project, "preflight", None)
    if preflight is not None:  # e.g. a service's key and base model, checked before any node runs
        preflight(arms)
    printer = BuildPrinter(echo, multi_arm=len(project.arm_names) > 1, arms_of=graph.arms_of)
    pool = make_pool(executor, jobs, ray_address, project) if isinstance(executor, str) else executor
    executor = Executor(store, jobs=jobs, on_event=printer, stop=stop, pool=pool)
    with store.build_lock(), stop_on_signals(executor.stop):
        store.clean_staging()
        run = start_run(store, project, arms)
        status, summary = "failed", None
        try:
            summary = _build_and_finish(project, store, graph, arms, executor, printer, echo)
            status = "completed"
        except Interrupted:
            status = "interrupted"
            raise
        except NodeFailed as exc:
            printer.clear()
            tb = getattr(exc, "traceback", None)
            if tb:
                _err(tb.rstrip())
            _err(f"evsys: error: {exc.message}")
            return 1, run, executor, printer
        finally:
            printer.clear()
            finish_run(store, run, status, graph, getattr(executor, "results", {}), summary, list(getattr(executor, "unplanned", {}).values()))
            if pool.name == "ray":
                _err(f"evsys: ray: {pool.submitted} task(s) submitted")
    return 0, run, executor, printer


def _build_and_finish(project, store: Store, graph, arms: list[str], executor: Executor, printer, echo) -> dict:
    """Run the graph, then write the run dir; a corrupt report blob found while writing it is
    quarantined, the report rebuilt, and the run dir written again."""
    for attempt in range(3):
        results = executor.run(graph)
        try:
            return project.finish(store, results, arms, echo) or {}
        except CorruptObject as exc:
            if attempt == 2:
                raise
            owners = [m["name"] for m in results.values() if exc.name in referenced_objects(m)]
            printer.warn(f"evsys: warning: {exc.message}; rebuilding {', '.join(owners) or 'what needs it'}")
    raise AssertionError("unreachable")


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class BuildPrinter:
    """One line per node (`cached` / `ran` + time); a progress line on a terminal for long nodes."""

    def __init__(self, echo: Callable[[str], None], multi_arm: bool, arms_of: dict):
        self.echo = echo
        self.multi_arm = multi_arm
        self.arms_of = arms_of
        self.tty = sys.stderr.isatty()
        self._lock = threading.Lock()
        self._progress_shown = False
        self._progress_start: dict[str, tuple[int, float]] = {}
        self.warned = False

    def __call__(self, event: Event) -> None:
        with self._lock:
            node = event.node
            label = node.name
            if self.multi_arm:
                label = f"[{','.join(self.arms_of.get(node.id, [node.arm]))}] {label}"
            if event.kind == "warning":
                self.warn(f"evsys: warning: {label}: {event.message}")
            elif event.kind == "cached" and event.message == "published":
                self._line(f"saved   {label}  {node.key[:12]}")
            elif event.kind == "cached":
                self._line(f"cached  {label}  {node.key[:12]}")
            elif event.kind == "ran":
                self._line(f"ran     {label}  {event.seconds:.2f}s  {node.key[:12]}")
            elif event.kind == "failed":
                self._line(f"failed  {label}")
            elif event.kind == "log":
                self._line(f"        {event.message}")
            elif event.kind == "progress" and self.tty and event.total:
                width = 30
                filled = int(width * event.done / event.total)
                bar = "#" * filled + "." * (width - filled)
                first_done, started = self._progress_start.setdefault(node.id, (event.done, time.perf_counter()))
                eta = ""
                if event.done > first_done:
                    rate = (time.perf_counter() - started) / (event.done - first_done)
                    eta = f" eta {rate * (event.total - event.done):.0f}s"
                sys.stderr.write(f"\r  {label} [{bar}] {event.done}/{event.total} {event.message}{eta}"[:120].ljust(120))
                sys.stderr.flush()
                self._progress_shown = True

    def _line(self, text: str) -> None:
        self.clear()
        self.echo(text)

    def warn(self, text: str) -> None:
        """A warning line on stderr (not mixed into the node lines on stdout)."""
        self.warned = True
        self.clear()
        _err(text)

    def clear(self) -> None:
        if self._progress_shown:
            sys.stderr.write("\r" + " " * 120 + "\r")
            sys.stderr.flush()
            self._progress_shown = False
