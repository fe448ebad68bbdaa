"""`build` as plain functions (the CLI, the Python API and tests share them); `plan` is plans.py."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import collector
from .errors import CorruptObject, EvsysError, Interrupted, NodeFailed, StoreError, UsageError
from .executor import Event, Executor
from .fastpath import save as save_snapshot
from .fastpath import try_fast_build
from .fastpath import why_not as explain_fast_path
from .interrupts import stop_on_signals
from .plans import ArmLabels, graph_for, incomplete_project
from .pools import NodePool, make_pool
from .project import frontend
from .runs import finish_run, record_producer, start_run
from .store import Store, referenced_objects
from .targets import no_target_message, select_targets
from .watch import watching


def run_build(config: Path, store: Store, arm: str | None = None, jobs: int = 2, echo: Callable[[str], None] = print, targets: list[str] | None = None, executor: "str | NodePool" = "threads", ray_address: str | None = None) -> int:
    """Build; returns the exit code (0 ok, 1 a node failed). Config errors and Interrupted raise.

    A config that nothing about has changed since its last fully cached build into a local
    store takes the fast path (fastpath.py); a fully cached full build leaves the snapshot that
    path checks. A remote store is shared with other machines, so its builds always compile.
    Otherwise a frontend's `fetch(config, strict=False)` first downloads what the config needs
    and is not here yet (when the network is allowed; else opening the project says what is missing).
    """
    local = getattr(store.bucket, "root", None) is not None and not targets
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
    outcome, runner, printer = _build(project, store, arm, jobs, tee, None, targets, executor, ray_address)
    if local and outcome.code == 0 and runner.executions == 0 and not printer.warned:
        if getattr(project, "fast_path_ok", False):
            graph, _ = graph_for(project, arm)
            save_snapshot(store, config, arm, watcher, [n.key for n in graph.nodes()], lines, outcome.run)
        else:
            explain_fast_path(f"no snapshot saved: this config compiles on every build ({getattr(project, 'no_fast_path', None) or 'its project says so'})")
    return outcome.code


@dataclass
class BuildOutcome:
    """What a build did: its exit code, its run record, and the failure (a node's error) if any."""

    code: int
    run: dict
    error: str | None = None
    traceback: str | None = None


def build_project(project, store: Store, arm: str | None = None, jobs: int = 2, echo: Callable[[str], None] = print, stop: threading.Event | None = None, targets: list[str] | None = None, executor: "str | NodePool" = "threads", ray_address: str | None = None) -> int:
    """Build an already opened project and record the run; returns the exit code (see build_outcome)."""
    return build_outcome(project, store, arm, jobs, echo, stop, targets, executor, ray_address).code


def build_outcome(project, store: Store, arm: str | None = None, jobs: int = 2, echo: Callable[[str], None] = print, stop: threading.Event | None = None, targets: list[str] | None = None, executor: "str | NodePool" = "threads", ray_address: str | None = None) -> BuildOutcome:
    """Build an already opened project (only what `targets` need, when given) and record the run.

    `executor` says where nodes run (pools.py: threads, inline, ray; or a NodePool). The whole
    build holds the store's build lock (gc waits for it, or on a remote store spares what it
    writes); Ctrl-C/SIGTERM set `stop` (see interrupts.py): nodes finish their step, the run is
    recorded as interrupted, and Interrupted is raised (exit 130). A node that fails makes code 1
    (its error in the outcome); config errors raise.
    """
    return _build(project, store, arm, jobs, echo, stop, targets, executor, ray_address)[0]


def _build(project, store: Store, arm: str | None, jobs: int, echo: Callable[[str], None], stop: threading.Event | None, targets: list[str] | None, executor: "str | NodePool", ray_address: str | None):
    """(the outcome, the executor, the printer) of one build."""
    graph, arms = graph_for(project, arm)  # resolves a short label (`a2`), as each later graph_for does
    if targets and not incomplete_project(project):  # a mistyped target is bad usage: no run is recorded for it
        unmatched = select_targets(graph, store, targets)[1]
        if unmatched:
            raise UsageError(no_target_message(unmatched[0], graph, False))
    preflight = getattr(project, "preflight", None)
    if preflight is not None:  # e.g. a service's key and base model, checked before any node runs
        preflight(arms, writes_run_dir=not targets)  # a --target build writes no run dir
    printer = BuildPrinter(echo, arm_names=project.arm_names, arms_of=graph.arms_of)
    collector.resume()  # nodes run from here: a training may allocate for hours
    pool = make_pool(executor, jobs, ray_address, project) if isinstance(executor, str) else executor
    runner = Executor(store, jobs=jobs, on_event=printer, stop=stop, pool=pool)
    with store.build_lock(on_wait=lambda: echo("evsys: waiting for a gc of this store to finish...")), stop_on_signals(runner.stop):
        store.clean_staging()
        run = start_run(store, project, arms)
        runner.on_producer_start = lambda node, inputs: record_producer(store, run, node, inputs)
        if targets:
            run["targets"] = list(targets)
        status, summary, outcome, failing = "failed", None, None, False
        built = {"graph": graph}  # the graph being built (a project that expands gets a new one)
        try:
            summary = _build_and_finish(project, store, arm, targets, runner, printer, echo, built)
            status = "completed"
        except Interrupted:
            status, failing = "interrupted", True
            raise
        except NodeFailed as exc:
            printer.clear()
            tb = getattr(exc, "traceback", None)
            if tb:
                _err(tb.rstrip())
            _err(f"evsys: error: {exc.message}")
            run["error"] = exc.message
            outcome = BuildOutcome(1, run, exc.message, tb)
        except BaseException:
            failing = True  # recording the run must not hide this error (a full disk fails both)
            raise
        finally:
            printer.clear()
            results = getattr(runner, "results", {})
            try:
                finish_run(store, run, status, built["graph"], results, summary, list(getattr(runner, "unplanned", {}).values()), partial=bool(targets))
            except StoreError as exc:
                if not failing:
                    raise
                _err(f"evsys: warning: this run could not be recorded ({exc.message})")
            _close(project, store, results, arms, "partial" if targets and status == "completed" else status, printer)
            if pool.name == "ray":
                _err(f"evsys: ray: {pool.submitted} task(s) submitted")
    return outcome or BuildOutcome(0, run), runner, printer


def _build_and_finish(project, store: Store, arm: str | None, targets: list[str] | None, executor: Executor, printer, echo, built: dict) -> dict:
    """Run the graph (only the targets' part of it, when given; `built["graph"]` says which), then
    write the run dir; returns the run's summary. A project that learns more of its graph from built data
    (`expand`, e.g. a step count from the dataset size) is built again with the rest. A corrupt
    report blob found while writing the run dir is quarantined, the report rebuilt, and the run dir
    written again."""
    while True:
        graph, _ = graph_for(project, arm)
        selected, unmatched = select_targets(graph, store, targets) if targets else (graph, [])
        if unmatched and not incomplete_project(project):
            raise UsageError(no_target_message(unmatched[0], graph, False))
        built["graph"] = graph if unmatched else selected
        printer.arms_of = graph.arms_of
        results = executor.run(built["graph"])
        if not _expand(project, store):
            break
    if unmatched:
        raise UsageError(no_target_message(unmatched[0], graph, False))
    if targets:
        return {"partial": True}
    for attempt in range(3):
        try:
            return project.finish(store, results, graph_for(project, arm)[1], echo) or {}
        except CorruptObject as exc:
            if attempt == 2:
                raise
            owners = [m["name"] for m in results.values() if exc.name in referenced_objects(m)]
            printer.warn(f"evsys: warning: {exc.message}; rebuilding {', '.join(owners) or 'what needs it'}")
            results = executor.run(graph)
    raise AssertionError("unreachable")


def _expand(project, store: Store) -> bool:
    expand = getattr(project, "expand", None)
    return bool(expand(store)) if expand is not None and incomplete_project(project) else False


def _close(project, store: Store, results: dict, arms: list[str], status: str, printer) -> None:
    """Let the project's observers (callbacks) finish; a failing observer is a warning, never a lost build."""
    close = getattr(project, "close", None)
    if close is None:
        return
    try:
        close(store, results, arms, status)
    except EvsysError as exc:
        printer.warn(f"evsys: warning: {exc.message}")


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class BuildPrinter:
    """One line per node (`cached` / `ran` + time); a progress line on a terminal for long nodes.

    With several arms each line says which arms the node belongs to: `[all arms]`, or the arm
    names, where a long name (a sweep arm's `lora_rank=8,learning_rate=0.0001`) is shown by a
    short label explained once at the start."""

    def __init__(self, echo: Callable[[str], None], arm_names: list[str], arms_of: dict):
        self.echo = echo
        self.arm_names = list(arm_names)
        self.multi_arm = len(self.arm_names) > 1
        self.arms_of = arms_of
        self.labels = ArmLabels(self.arm_names)
        self.tty = sys.stderr.isatty()
        self._lock = threading.Lock()
        self._progress_shown = False
        self._progress_start: dict[str, tuple[int, float]] = {}
        self._shown_cached: set[str] = set()
        self.warned = False  # a build that warned leaves no fast-path snapshot
        legend = self.labels.legend()
        if legend:
            echo(legend)

    def arm_label(self, node) -> str:
        return self.labels.label(self.arms_of.get(node.id, [node.arm]))

    def __call__(self, event: Event) -> None:
        with self._lock:
            node = event.node
            label = node.name
            if self.multi_arm:
                label = f"{self.arm_label(node)} {label}"
            if event.kind == "warning":
                self.warn(f"evsys: warning: {label}: {event.message}")
            elif event.kind == "cached" and event.message == "published":
                self._line(f"saved   {label}  {node.key[:12]}")
            elif event.kind == "cached":
                if node.id in self._shown_cached:  # a build that expands its graph passes built nodes again
                    return
                self._shown_cached.add(node.id)
                self._line(f"cached  {label}  {node.key[:12]}")
            elif event.kind == "ran":
                self._shown_cached.add(node.id)
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
