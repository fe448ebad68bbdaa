"""One arm's callbacks for one build: fed live by the runners, then the stored history of what
they did not see live, then `on_run_end`.

A build's callbacks are created on the first event (so `plan` and `dag` start no tracker) and
shared by every node of the arm, so a tracker sees one run. Each event reaches each callback
once: what a runner delivered live is remembered, and `replay` delivers the rest (a cached
training's history, cached evals, the steps a resumed training did before this build) in step
order. A callback that raises is reported once and then left out; a logger never fails a build.

Nothing here is part of any key: the runners call it through `@not_keyed` functions.
"""

from __future__ import annotations

import contextlib
import threading
import traceback
from typing import Callable

from ..plugins.code_identity import not_keyed
from .callbacks import make_callbacks


class ArmCallbacks:
    def __init__(self, arm: str, specs: list, info: "dict | Callable[[], dict]"):
        self.arm = arm
        self.specs = list(specs)
        self._info = info  # what on_run_start gets, or what makes it when the first callback starts
        self.echo: Callable[[str], None] = print  # where callbacks print outside a node (replay, run end)
        self._instances: list | None = None
        self._lock = threading.RLock()
        self._local = threading.local()
        self._broken: set[int] = set()
        self.seen_steps: set[int] = set()
        self.seen_evals: set[tuple[str, int]] = set()
        self.active = True  # whether this build builds the arm (`Project.graph_for`): runners feed only those

    @property
    def info(self) -> dict:
        """What on_run_start gets: made on first use (a `plan` of 1,000 arms starts no callback)."""
        if callable(self._info):
            self._info = self._info()
        return self._info

    # -- where callbacks print: the running node's log inside a runner, else `echo`
    @contextlib.contextmanager
    def printing_to(self, log: Callable[[str], None]):
        before = getattr(self._local, "sink", None)
        self._local.sink = log
        try:
            yield
        finally:
            self._local.sink = before

    def _say(self, text: str) -> None:
        (getattr(self._local, "sink", None) or self.echo)(text)

    # -- events
    def train_step(self, step: int, metrics: dict, live: bool = True) -> None:
        with self._lock:
            if step in self.seen_steps:
                return
            self.seen_steps.add(step)
            shown = {k: v for k, v in metrics.items() if k != "step"}  # the step is its own argument, live and replayed alike
            self._deliver("on_train_step", (self.arm, step, shown), live)

    def eval(self, step: int, benchmark: str, metrics: dict, live: bool = True) -> None:
        with self._lock:
            if (benchmark, step) in self.seen_evals:
                return
            self.seen_evals.add((benchmark, step))
            self._deliver("on_eval", (self.arm, step, benchmark, dict(metrics)), live)

    def replay(self, history: list[dict], evals: list[tuple[int, str, dict]]) -> None:
        """Deliver what was not seen live: each train step, and each eval after its step's training."""
        events = [(m["step"], 0, "", m) for m in history] + [(step, 1, bench, metrics) for step, bench, metrics in evals]
        for step, kind, bench, metrics in sorted(events, key=lambda e: (e[0], e[1], e[2])):
            if kind == 0:
                self.train_step(step, metrics, live=False)
            else:
                self.eval(step, bench, metrics, live=False)

    def run_end(self, run_dir, status: str) -> None:
        with self._lock:
            if self._instances is None:
                return  # no event reached this arm: nothing was started
            self._deliver("on_run_end", (self.arm, run_dir, status), live=True)
            self._instances = None

    def _deliver(self, hook: str, args: tuple, live: bool) -> None:
        for i, cb in enumerate(self._callbacks()):
            if i in self._broken or (not live and not getattr(cb, "replay", True)):
                continue
            method = getattr(cb, hook, None)
            if method is None:
                continue
            try:
                method(*args)
            except Exception as exc:  # noqa: BLE001 - an observer never fails the build
                self._broken.add(i)
                self._say(f"evsys: warning: callback {self.specs[i].kind} failed in {hook} and is skipped for the rest of this build: {type(exc).__name__}: {exc}")
                self._say(traceback.format_exc().rstrip())

    def _callbacks(self) -> list:
        if self._instances is None:
            self._instances = make_callbacks(self.specs, self._say)
            for i, cb in enumerate(self._instances):
                start = getattr(cb, "on_run_start", None)
                if start is None:
                    continue
                try:
                    start(self.arm, dict(self.info))
                except Exception as exc:  # noqa: BLE001
                    self._broken.add(i)
                    self._say(f"evsys: warning: callback {self.specs[i].kind} failed to start and is skipped for this build: {type(exc).__name__}: {exc}")
        return self._instances


class SharedCallbacks:
    """The callbacks of every arm that shares one node (a sweep's arms share their data, often their
    training and evals): a runner's event reaches each such arm this build builds (an arm left out
    by `--arm` never starts a tracker), an eval's metrics named by that arm's own benchmark."""

    def __init__(self, hub: ArmCallbacks, bench=None):
        self.members: list[tuple[ArmCallbacks, object]] = [(hub, bench)]
        self._ids = {id(hub)}

    def add(self, hub: ArmCallbacks, bench=None) -> None:
        if id(hub) not in self._ids:
            self._ids.add(id(hub))
            self.members.append((hub, bench))

    def eval(self, step: int, benchmark: str, metrics: dict) -> None:
        """`metrics` are named by the node's own (first) arm's benchmark: `split/name/metric`."""
        first = self.members[0][1]
        for hub, bench in self.active():
            if bench is not None and first is not None:
                before, after = f"{first.split}/{first.name}/", f"{bench.split}/{bench.name}/"
                hub.eval(step, bench.name, {after + k.removeprefix(before): v for k, v in metrics.items()})
            else:
                hub.eval(step, benchmark, metrics)

    def active(self) -> list[tuple[ArmCallbacks, object]]:
        return [(hub, bench) for hub, bench in self.members if hub.active]


def share_callbacks(kept, added) -> None:
    """After `Graph.add(added)` returned `kept` (itself, or the node an earlier arm added with the
    same id): the kept node's runner feeds the callbacks of `added`'s arm too."""
    hub = (added.payload or {}).get("callbacks")
    if not isinstance(hub, ArmCallbacks):
        return
    if kept is added:
        added.payload["callbacks"] = SharedCallbacks(hub, added.payload.get("bench"))
    elif isinstance((kept.payload or {}).get("callbacks"), SharedCallbacks):
        kept.payload["callbacks"].add(hub, added.payload.get("bench"))


def _hubs(hub) -> list[ArmCallbacks]:
    if hub is None:
        return []
    if isinstance(hub, SharedCallbacks):
        return [h for h, _ in hub.active()]
    return [hub] if hub.active else []


@not_keyed
def notify_train_step(hub: "ArmCallbacks | SharedCallbacks | None", step: int, metrics: dict) -> None:
    """What a training runner calls each step (an observer: not part of the train key)."""
    for one in _hubs(hub):
        one.train_step(step, metrics)


@not_keyed
def notify_eval(hub: "ArmCallbacks | SharedCallbacks | None", step: int, benchmark: str, metrics: dict) -> None:
    """What an eval runner calls once scored (an observer: not part of the eval key)."""
    if isinstance(hub, SharedCallbacks):
        hub.eval(step, benchmark, metrics)
    else:
        for one in _hubs(hub):
            one.eval(step, benchmark, metrics)


@not_keyed
def printing_to(hub: "ArmCallbacks | SharedCallbacks | None", log: Callable[[str], None]):
    """Inside a runner: callbacks print through the node's log."""
    stack = contextlib.ExitStack()
    for one in _hubs(hub):
        stack.enter_context(one.printing_to(log))
    return stack
