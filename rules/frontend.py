"""The frontend the engine loads: open a config as a buildable project, validate, preview nodes,
export checkpoints, describe arms for `evsys diff`."""

from __future__ import annotations

from pathlib import Path

from evsys_build.graph import Graph
from evsys_build.statcache import StatCache
from evsys_build.store import Store

from .compile import compile_graph
from .config.loading import LoadedConfig, load_config
from .config.validate import validate  # noqa: F401  (part of the frontend contract)
from .outputs.arm_snapshots import arm_snapshots, effective_config  # noqa: F401  (arm_snapshots: part of the frontend contract)
from .outputs.export import export_node  # noqa: F401  (part of the frontend contract)
from .outputs.hub import ArmCallbacks
from .outputs.preview import preview  # noqa: F401  (part of the frontend contract)
from .outputs.replay import replay_and_close
from .outputs.run_dir import arm_run_dir, materialize, write_run  # noqa: F401  (write_run: part of the frontend contract)


class Project:
    """A compiled config: the graph of every arm, and what to do after a build.

    An arm whose training length comes from its data (`num_epochs`) compiles up to tokenize until
    that is stored: the project is then `incomplete`, and `expand` compiles the rest once the
    build has made the data (nodes/steps.py)."""

    def __init__(self, loaded: LoadedConfig, store: Store):
        self.loaded = loaded
        self.experiment = loaded.experiment_name
        self.arm_names = [a.name for a in loaded.arms]
        self.hubs = {
            arm.name: ArmCallbacks(arm.name, arm.config.callbacks, self._callback_info(arm))
            for arm in loaded.arms
        }
        self._compile(store)

    def _compile(self, store: Store) -> None:
        statcache = StatCache(store.root / "stat-cache.json")
        self.graph, self.arm_nodes = compile_graph(self.loaded, statcache, store, self.hubs)
        statcache.save()

    def _callback_info(self, arm) -> dict:
        return {
            "experiment": self.experiment,
            "run_name": self.loaded.run_name,
            "arm": arm.name,
            "config": effective_config(arm.config.model_dump(mode="json")),
            "run_dir": str(arm_run_dir(self.loaded, arm.name, len(self.loaded.arms))),
            "output_dir": str(self.loaded.output_dir),
            "arms": len(self.loaded.arms),
        }

    @property
    def incomplete(self) -> bool:
        """Whether some arm's graph still waits for its data to be built (num_epochs)."""
        return any(nodes.train is None for nodes in self.arm_nodes)

    @property
    def notes(self) -> list[str]:
        """What `plan` adds below its lines."""
        waiting = [nodes.arm.name for nodes in self.arm_nodes if nodes.train is None]
        if not waiting:
            return []
        return [
            f"train and what follows it are planned once tokenize is built: num_epochs needs the number of rows "
            f"(arm{'s' if len(waiting) > 1 else ''} {', '.join(waiting)}; `evsys build` builds the data first)"
        ]

    def expand(self, store: Store) -> bool:
        """Compile again with what the store now holds; True when the graph grew."""
        before = len(self.graph.nodes())
        self._compile(store)
        if self.incomplete:
            raise AssertionError("tokenize was built but its output is not stored")
        return len(self.graph.nodes()) > before

    def graph_for(self, arm: str | None) -> Graph:
        return self.graph if arm is None else self.graph.subgraph_for_arm(arm)

    def refs(self, store: Store) -> dict[str, dict]:
        return {arm: store.read_ref(self.experiment, arm) for arm in self.arm_names}

    def describe_run(self) -> dict:
        """The config as this run saw it: its path and text, and each arm's overrides, so any run
        can be read back (and diffed) later."""
        return {
            "run_name": self.loaded.run_name,
            "config": {"path": str(self.loaded.path), "text": self.loaded.text},
            "arm_configs": {arm.name: {"overrides": _plain(arm.overrides)} for arm in self.loaded.arms},
        }

    def finish(self, store: Store, results: dict, arms: list[str], echo) -> dict:
        """Write the run dir of every built arm and experiment.md; return the run's summary."""
        return materialize(self, store, results, arms, echo)

    def close(self, store: Store, results: dict, arms: list[str], status: str) -> None:
        """After any build: replay to each arm's callbacks what they did not see live, then end their run."""
        replay_and_close(self, store, results, arms, status)


def _plain(value):
    """JSON-safe overrides (a run record is JSON)."""
    import json

    return json.loads(json.dumps(value, default=str))


def open_project(config_path: Path, store: Store) -> Project:
    return Project(load_config(config_path), store)
