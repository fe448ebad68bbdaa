"""The seam between the engine and the rules that compile a config (the "frontend").

The engine imports the frontend lazily by module name (`EVSYS_FRONTEND`, default
`evsys_rules.frontend`), so `evsys_build` never imports ML code. `Frontend` and `Project`
below are the whole interface; tests check the rules' frontend against them.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .graph import Graph
    from .store import Store

DEFAULT_FRONTEND = "evsys_rules.frontend"


@runtime_checkable
class Project(Protocol):
    """A config opened for building: its graph of every arm, and what to do around a build."""

    graph: "Graph"
    experiment: str
    arm_names: list[str]
    config_path: Path  # what it was opened from: a Ray worker reopens the project from it

    def graph_for(self, arm: str | None) -> "Graph":
        """The whole graph (arm None) or one arm's nodes."""
        ...

    # optional: `feed_arms(arms)`, whose arms' callbacks runners feed (a Ray worker is told the build's)

    def refs(self, store: "Store") -> dict[str, dict]:
        """Per arm, what the last build recorded (the planner diffs against it)."""
        ...

    def describe_run(self) -> dict:
        """What a run record keeps of the config (run_name, a snapshot of the config)."""
        ...

    def finish(self, store: "Store", results: dict[str, dict], arms: list[str], echo: Callable[[str], None]) -> dict:
        """After a successful build: write the run dir; return the run's summary
        ({"arms": {arm: {"metrics", ...}}, "files": {...}}) for its record."""
        ...

    def close(self, store: "Store", results: dict[str, dict], arms: list[str], status: str) -> None:
        """After any build (completed, failed, interrupted, partial): let observers finish
        (callbacks get what they did not see live, then the end of the run)."""
        ...

# Optional on a Project: `incomplete` (bool) and `expand(store) -> bool` for a graph that grows
# once data is built (build_project builds what there is, expands, builds again); `notes`
# (list[str]) that `plan` prints below its lines.


@runtime_checkable
class Frontend(Protocol):
    """What a frontend module provides."""

    def open_project(self, config_path: Path, store: "Store") -> Project:
        """Load, validate and compile a config; a mistake raises a one-line ConfigError."""
        ...

    def validate(self, config_path: Path, deep: bool = False) -> list[str]:
        """Check a config offline; informative lines when it is fine, a ConfigError when not."""
        ...

    def preview(self, store: "Store", manifest: dict, rows: int, color: bool, text: bool = True) -> tuple[str, list]:
        """(text for a terminal, rows as JSON) showing a node's outputs."""
        ...

    def write_run(self, store: "Store", run: dict, dest: Path) -> list[Path]:
        """Rewrite a recorded run's run dir into `dest` from the store; returns the files written."""
        ...

    def export_node(self, store: "Store", key: str, dest: Path, merge: bool = False, base_model: str | None = None, dtype: str = "auto") -> list[Path]:
        """Write a stored checkpoint as a folder other tools load (an adapter, or a merged model)."""
        ...

    def arm_snapshots(self, store: "Store", source: "Path | dict") -> dict[str, dict]:
        """Per arm of a config file (Path) or a run record (dict): its effective config flattened
        to dotted paths, its nodes (name -> key, id) and its report's metric rows, for `evsys diff`."""
        ...


def frontend_name() -> str:
    return os.environ.get("EVSYS_FRONTEND", DEFAULT_FRONTEND)


def frontend(name: str | None = None) -> Frontend:
    return importlib.import_module(name or frontend_name())
