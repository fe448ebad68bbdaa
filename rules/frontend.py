"""The frontend the engine loads: open a config as a buildable project, validate, preview nodes."""

from __future__ import annotations

from pathlib import Path

from evsys_build.graph import Graph
from evsys_build.statcache import StatCache
from evsys_build.store import Store

from .compile import compile_graph
from .config.loading import LoadedConfig, load_config
from .config.validate import validate  # noqa: F401  (part of the frontend contract)
from .outputs.preview import preview  # noqa: F401  (part of the frontend contract)
from .plugins.code_identity import IdentityCache, use_identity_cache
from .outputs.run_dir import materialize, write_run  # noqa: F401  (write_run: part of the frontend contract)


class Project:
    """A compiled config: the graph of every arm, and what to do after a build."""

    def __init__(self, loaded: LoadedConfig, store: Store):
        self.loaded = loaded
        self.config_path = loaded.path
        statcache = StatCache(store.local_dir / "stat-cache.json")
        identities = IdentityCache(store.local_dir / "identity-cache.json")
        use_identity_cache(identities)
        try:
            self.graph, self.arm_nodes = compile_graph(loaded, statcache)
        finally:
            use_identity_cache(None)
        statcache.save()
        identities.save()
        self.experiment = loaded.experiment_name
        self.arm_names = [a.arm.name for a in self.arm_nodes]
        # the no-op fast path prints and writes what a cached build does; callbacks beyond the
        # local logger (which prints nothing for cached nodes) must see every build
        self.fast_path_ok = all(c.kind == "local_logger" for a in loaded.arms for c in a.config.callbacks)

    def graph_for(self, arm: str | None) -> Graph:
        return self.graph if arm is None else self.graph.subgraph_for_arm(arm)

    def refs(self, store: Store) -> dict[str, dict]:
        return {arm: store.read_ref(self.experiment, arm) for arm in self.arm_names}

    def describe_run(self) -> dict:
        """The config as this run saw it: its path and text, so any run can be read back later."""
        return {"run_name": self.loaded.run_name, "config": {"path": str(self.loaded.path), "text": self.loaded.text}}

    def finish(self, store: Store, results: dict, arms: list[str], echo) -> dict:
        """Write the run dir of every built arm and experiment.md; return the run's summary."""
        return materialize(self, store, results, arms, echo)


def open_project(config_path: Path, store: Store) -> Project:
    return Project(load_config(config_path), store)
