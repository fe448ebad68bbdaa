"""The frontend the engine loads: open a config as a buildable project, validate, preview nodes."""

from __future__ import annotations

from pathlib import Path

from evsys_build.errors import ConfigError
from evsys_build.graph import Graph
from evsys_build.statcache import StatCache
from evsys_build.store import Store

from .compile import compile_graph, model_need, trains_by_name
from .config.loading import LoadedConfig, load_config
from .models.resolve import cached_snapshot, fetch_model, hub_model, hub_offline
from .nodes.train import make_backend
from .plugins import kinds
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
        # local logger (which prints nothing for cached nodes) must see every build; a backend
        # that keeps checkpoints on a service must be asked each build whether they still exist
        self.fast_path_ok = all(
            c.kind == "local_logger" for a in loaded.arms for c in a.config.callbacks
        ) and not any(trains_by_name(a) for a in loaded.arms)

    def graph_for(self, arm: str | None) -> Graph:
        return self.graph if arm is None else self.graph.subgraph_for_arm(arm)

    def refs(self, store: Store) -> dict[str, dict]:
        return {arm: store.read_ref(self.experiment, arm) for arm in self.arm_names}

    def describe_run(self) -> dict:
        """The config as this run saw it: its path and text, so any run can be read back later."""
        return {"run_name": self.loaded.run_name, "config": {"path": str(self.loaded.path), "text": self.loaded.text}}

    def preflight(self, arms: list[str]) -> None:
        """Before any node runs: each backend's own readiness check (Tinker: the key, the SDK, a
        key the service accepts, a base model it offers), once per backend, service and model."""
        seen = set()
        for nodes in self.arm_nodes:
            arm = nodes.arm
            if arm.name not in arms:
                continue
            backend = make_backend(arm)
            check = getattr(backend, "check_ready", None)
            if check is None:
                continue
            by_name = getattr(backend, "trains_by_name", False)
            args = {"base_model": arm.config.model.name, "lora_rank": arm.params["algorithm"].lora_rank} if by_name else {}
            ident = (arm.config.backend.kind, repr(getattr(backend, "cfg", None)), tuple(sorted(args.items())))
            if ident not in seen:
                seen.add(ident)
                check(**args)

    def finish(self, store: Store, results: dict, arms: list[str], echo) -> dict:
        """Write the run dir of every built arm and experiment.md; return the run's summary."""
        return materialize(self, store, results, arms, echo)


def open_project(config_path: Path, store: Store) -> Project:
    return Project(load_config(config_path), store)


def fetch(config_path: Path, strict: bool = True) -> list[str]:
    """Download from the Hugging Face Hub what the config's models need and the local cache lacks
    (a service's base model: its tokenizer and chat template; the local backend: the model).
    `strict=False` (a build): when that is not possible, do nothing and let opening the project
    say what is missing."""
    loaded = load_config(config_path)
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
