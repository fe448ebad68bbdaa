"""The frontend the engine loads: open a config as a buildable project, validate, preview nodes,
export checkpoints, describe arms for `evsys diff`."""

from __future__ import annotations

import functools
from pathlib import Path

from evsys_build.errors import ConfigError
from evsys_build.graph import Graph
from evsys_build.statcache import StatCache
from evsys_build.store import Store

from .compile import compile_graph, model_need, trains_by_name
from .config.loading import LoadedConfig, check_output_writable, load_config
from .models.resolve import cached_snapshot, fetch_model, hub_model, hub_offline
from .nodes.train import make_backend, ready_args
from .plugins import kinds
from .plugins.code_identity import use_identity_cache
from .plugins.identity_cache import IdentityCache
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
        self.config_path = loaded.path
        self.experiment = loaded.experiment_name
        self.arm_names = [a.name for a in loaded.arms]
        self.hubs = {
            arm.name: ArmCallbacks(arm.name, arm.config.callbacks, functools.partial(self._callback_info, arm))
            for arm in loaded.arms
        }
        self._compile(store)
        # the no-op fast path prints and writes what a cached build does; callbacks beyond the
        # local logger (which prints nothing for cached nodes) must see every build; a backend
        # that keeps checkpoints on a service must be asked each build (and plan) whether they
        # still exist
        no_plan_fast_path = ("a backend keeps checkpoints on a service, asked every build" if any(trains_by_name(a) for a in loaded.arms)
                             else "part of the graph is known only once data is built" if self.incomplete else None)
        self.no_fast_path = no_plan_fast_path or ("a callback beyond local_logger sees every build"
                                                  if any(c.kind != "local_logger" for a in loaded.arms for c in a.config.callbacks) else None)  # EVSYS_FASTPATH_DEBUG says it
        self.plan_fast_path_ok = no_plan_fast_path is None
        self.fast_path_ok = self.no_fast_path is None

    def _compile(self, store: Store) -> None:
        statcache = StatCache(store.local_dir / "stat-cache.json")
        identities = IdentityCache(store.local_dir / "identity-cache.json")
        use_identity_cache(identities)
        try:
            self.graph, self.arm_nodes = compile_graph(self.loaded, statcache, store, self.hubs)
        finally:
            use_identity_cache(None)
        stamps = dict(statcache.keyed)  # every node checks them before it runs and before it is stored
        for node in self.graph.nodes():
            node.disk_stamps = stamps
        statcache.save()
        identities.save()

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
        """Every arm's graph, or one arm's; runners then feed only the callbacks of the arms it
        builds (a node shared with an arm left out must not start that arm's tracker)."""
        self.feed_arms(self.arm_names if arm is None else [arm])
        return self.graph if arm is None else self.graph.subgraph_for_arm(arm)

    def feed_arms(self, arms: list[str]) -> None:
        """Runners feed only these arms' callbacks (a Ray worker is told the build's arms)."""
        wanted = set(arms)
        for name, hub in self.hubs.items():
            hub.active = name in wanted

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

    def preflight(self, arms: list[str], writes_run_dir: bool = True) -> None:
        """Before any node runs: each backend's own readiness check (Tinker: the key, the SDK, a
        key the service accepts, a base model it offers), once per backend, service and model; and
        that the run dir can be written, when the build writes one, so a long training does not
        end in that error."""
        if writes_run_dir:
            check_output_writable(self.loaded)
        seen = set()
        for nodes in self.arm_nodes:
            arm = nodes.arm
            if arm.name not in arms:
                continue
            backend = make_backend(arm)
            check = getattr(backend, "check_ready", None)
            if check is None:
                continue
            args = ready_args(backend, arm)
            ident = (arm.config.backend.kind, repr(getattr(backend, "cfg", None)), tuple(sorted(args.items())))
            if ident not in seen:
                seen.add(ident)
                check(**args)

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


def fetch(config: "Path | LoadedConfig", strict: bool = True) -> list[str]:
    """Download from the Hugging Face Hub what the config's models need and the local cache lacks
    (a service's base model: its tokenizer and chat template; the local backend: the model).
    `strict=False` (a build): when that is not possible, do nothing and let opening the project
    say what is missing."""
    loaded = config if isinstance(config, LoadedConfig) else load_config(config)
    lines, seen = [], set()
    for arm in loaded.arms:
        model, need = arm.config.model, model_need(arm)
        if (model.name, model.revision, need) in seen:
            continue
        seen.add((model.name, model.revision, need))
        what = "tokenizer" if need == "tokenizer" else "model"
        if not hub_model(model.name):
            lines.append(f"{model.name}: local, nothing to fetch")
            continue
        found = cached_snapshot(model.name, model.revision, need)
        if found is not None:
            lines.append(f"{model.name}: {what} already in the Hugging Face cache ({found})")
            continue
        if not strict and hub_offline():
            continue
        try:
            found = fetch_model(model.name, model.revision, need)
        except ConfigError:
            if strict:
                raise
            continue
        lines.append(f"{model.name}: fetched the {what} into {found}")
    return lines


def check_remote(manifests: list[dict]) -> list[str]:
    """`evsys verify`: nodes whose references on a service (tinker:// checkpoints) no longer exist."""
    problems = []
    for manifest in manifests:
        remote = manifest["attachments"]["remote"]
        service = remote.get("service", {})
        check = getattr(kinds.backends.get(service.get("backend", "")), "missing_remote", None) if service.get("backend") in kinds.backends else None
        missing = check(sorted(remote.get("refs", {}).values()), service) if check else None
        for reason in sorted((missing or {}).values()):
            problems.append(f"{manifest.get('name')} node:{manifest['key'][:12]}: {reason}; the next build trains it again")
    return problems
