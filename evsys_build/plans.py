"""`plan` as plain functions (the CLI and tests share them): open a config's project, plan it,
print it, or print it again from its snapshot (fastpath.py). Building is build.py."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .errors import UsageError
from .fastpath import save_plan, try_fast_plan
from .planner import PlanEntry, plan
from .project import frontend
from .read_journal import JournalBucket
from .store import Store
from .targets import no_target_message, select_targets
from .watch import watching


def project_and_graph(config: Path, store: Store, arm: str | None):
    project = frontend().open_project(config, store)
    return (project, *graph_for(project, arm))


def resolve_arm(arm_names: list[str], arm: str | None) -> str | None:
    """An arm's name from its name or from the short label plan and build print (`a2`)."""
    if arm is None or arm in arm_names:
        return arm
    return ArmLabels(arm_names).full(arm) or arm


def graph_for(project, arm: str | None):
    arm = resolve_arm(project.arm_names, arm)
    if arm is not None and arm not in project.arm_names:
        raise UsageError(f"--arm {arm}: no such arm; the config has: {', '.join(project.arm_names)}")
    return project.graph_for(arm), ([arm] if arm else project.arm_names)


def plan_entries(config: Path, store: Store, arm: str | None = None, targets: list[str] | None = None) -> list[PlanEntry]:
    return plan_with_notes(config, store, arm, targets)[0]


def plan_with_notes(config: Path, store: Store, arm: str | None = None, targets: list[str] | None = None) -> tuple[list[PlanEntry], list[str]]:
    """The plan, and the project's notes (e.g. nodes that appear once the data is built)."""
    project, entries = planned(config, store, arm, targets)
    return entries, list(getattr(project, "notes", []))


def planned(config: Path, store: Store, arm: str | None, targets: list[str] | None):
    project, graph, _ = project_and_graph(config, store, arm)
    if targets:
        graph, unmatched = select_targets(graph, store, targets)
        if unmatched:
            raise UsageError(no_target_message(unmatched[0], project.graph_for(arm), incomplete_project(project)))
    return project, plan(store, graph, project.refs(store))


def run_plan(config: Path, store: Store, arm: str | None, view: str, render: Callable[[list[PlanEntry], list[str]], list[str]], echo: Callable[[str], None] = print, targets: list[str] | None = None) -> None:
    """`evsys plan`: print what `render` makes of the plan. A plan of a local store that nothing it
    read has changed since the same plan (same config, arm, `view`, folder and store) is printed
    from that plan's snapshot without compiling (fastpath.py); a compiled one leaves the snapshot."""
    local = getattr(store.bucket, "root", None) is not None and store.upstream is None and not targets
    if local and try_fast_plan(store, config, arm, view, echo):
        return
    with watching() as watcher:  # the planner too: an estimate may read files, or what cannot be watched
        journal = JournalBucket(store.bucket, watcher) if local else None
        project, entries = planned(config, Store(journal) if journal is not None else store, arm, targets)
    lines = render(entries, list(getattr(project, "notes", [])) + _remote_notes(store))
    for line in lines:
        echo(line)
    if journal is not None and getattr(project, "plan_fast_path_ok", False):
        save_plan(store, config, arm, view, watcher, journal, lines)


def _remote_notes(store: Store) -> list[str]:
    """How many cached nodes a plan found only in the remote store (plan --remote)."""
    hits = getattr(store, "remote_hits", None)
    if not hits:
        return []
    return [f"{len(hits)} of the cached nodes are in {store.upstream} only: `evsys build --remote` copies them here instead of running them"]


def incomplete_project(project) -> bool:
    """Whether the project's graph is still missing nodes that built data will tell (see `expand`)."""
    return bool(getattr(project, "incomplete", False))


def _label_prefix(names: frozenset[str]) -> str | None:
    """`a` for labels a1, a2, ...; another prefix when an arm is itself named like a label (`a2`),
    so a label never reads as, or resolves to, another arm; None (no labels) if every prefix is taken."""
    for prefix in ("a", "arm", "arm_"):
        if not any(name.startswith(prefix) and name[len(prefix):].isdigit() for name in names):
            return prefix
    return None


SHORT_ARM = 12  # longer arm names (sweep arms) are shown as a1, a2, ... in build and plan lines, with a legend


class ArmLabels:
    """Which arms a node belongs to, as build and plan lines say it: `[all arms]` (of three or
    more), else the names, a long one (a sweep arm's `lora_rank=8,learning_rate=0.0001`, which
    holds commas) shown by a short label that `legend` explains once."""

    def __init__(self, arm_names: list[str]):
        self.arm_names = list(arm_names)
        self._every = frozenset(self.arm_names)  # made once: a 1,000-arm sweep labels thousands of lines
        several = len(self.arm_names) > 1
        prefix = _label_prefix(self._every)
        self.short = {name: (f"{prefix}{i + 1}" if several and prefix and len(name) > SHORT_ARM else name) for i, name in enumerate(self.arm_names)}

    def full(self, label: str) -> str | None:
        """The arm a short label (`a2`) stands for; None when it is no arm's label."""
        return next((name for name, short in self.short.items() if short == label and short != name), None)

    def legend(self) -> str | None:
        shortened = [f"{short} = {name}" for name, short in self.short.items() if short != name]
        return "arms: " + "; ".join(shortened) if shortened else None

    def label(self, arms: list[str]) -> str:
        if len(self.arm_names) > 2 and len(arms) >= len(self._every) and self._every.issubset(arms):
            return "[all arms]"
        return "[" + ",".join(self.short.get(a, a) for a in arms) + "]"
