"""The Python API: `Experiment(config).run()` and `run_experiment(config)` build through the same
engine as the CLI.

    from evsys_sdk import Experiment, ExperimentConfig, load_config

    result = Experiment("config.yaml").run()                  # a path
    result = Experiment({"data": {...}, "model": {...}}).run()  # a dict, as the YAML would be
    result = Experiment(ExperimentConfig(...)).run()           # a config object
    result = Experiment(load_config("config.yaml")).run()      # a loaded config

    result.status                     # "completed" | "failed"
    result.error                      # the failed node's error, else None
    result.open("checkpoint-final")   # a stored artifact (see StoredArtifact); or a path for run_dir
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

from evsys_build.build import build_outcome
from evsys_build.errors import UsageError
from evsys_build.store import cache_location, open_store

from .config.any_config import ConfigLike, load_any
from .config.loading import LoadedConfig
from .frontend import Project, fetch
from .outputs.artifacts import StoredArtifact
from .outputs.experiment_md import conclusion
from .outputs.run_dir import arm_run_dir, arm_summaries


@dataclass
class ExperimentResult:
    """What `Experiment.run()` returns.

    `artifacts` maps names to where each thing is: `run_dir` and `metrics` (paths), and
    `checkpoint-final` / `state-final` (`node:<key>` and `node:<key>#state`, which `evsys show`
    opens and `open()` returns as StoredArtifact). With several arms each name is prefixed
    `<arm>/`.
    """

    status: str  # "completed" | "failed"
    artifacts: dict[str, str] = field(default_factory=dict)
    conclusion: str = ""
    logs: Path | None = None  # the output folder (run dirs, experiment.md)
    arms: list[dict] = field(default_factory=list)  # per arm: completed, metrics, train, checkpoint_final, overrides
    error: str | None = None  # why the build failed (the failed node's error)
    traceback: str | None = None  # the failed node's traceback, when it was a bug rather than a known error
    run_id: str | None = None  # the run's record in the store (`evsys runs show RUN_ID`)
    store: str | None = None  # the store the artifacts live in (a folder, or s3://… / gs://…)

    def open(self, name: str) -> Union[Path, StoredArtifact]:
        """An artifact by its name in `artifacts`: a Path for files and folders, a StoredArtifact
        for what lives in the store (read its files, write them out, or export a checkpoint)."""
        if name not in self.artifacts:
            known = ", ".join(self.artifacts) or "none (the build failed before any was made)"
            raise UsageError(f"no artifact {name!r}; this result has: {known}")
        ref = self.artifacts[name]
        if ref.startswith("node:"):
            return StoredArtifact(open_store(self.store or cache_location(None)), ref)
        return Path(ref)


class Experiment:
    """An experiment config, buildable from Python.

    `config` is a path to a YAML file, a dict shaped like the YAML, an `ExperimentConfig`, or a
    config from `load_config`. It is validated at once: a mistake raises `ConfigError` (one line
    naming the field and the fix). Relative paths in it (data, benchmarks, plugins, output_dir, a
    local model folder) resolve against the working directory, or against `base_dir` when given.
    `cache_dir` is the store (default: $EVSYS_CACHE or ./.evsys-cache); `echo` receives the build's
    lines (one per node, the logger's lines, the run dir); warnings and a failed node's error
    and traceback go to stderr, and the result carries the error and traceback too.
    """

    def __init__(
        self,
        config: ConfigLike,
        cache_dir: str | os.PathLike | None = None,
        echo: Callable[[str], None] = print,
        base_dir: str | os.PathLike | None = None,
    ):
        self._config = config
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self.loaded: LoadedConfig = load_any(config, self.base_dir)
        self.store = open_store(cache_location(str(cache_dir) if cache_dir else None))
        self.echo = echo

    @property
    def config_path(self) -> Path:
        """The config file (for a dict or an ExperimentConfig, a `<python config>` placeholder)."""
        return self.loaded.path

    def run(self, arm: str | None = None, jobs: int = 2, targets: list[str] | None = None, executor: str = "threads", ray_address: str | None = None) -> ExperimentResult:
        """Build every node (or only what `targets` need: node names, rule names or node:<key>),
        firing callbacks and writing the run dir, and summarise the outcome. `executor`: threads,
        inline or ray (see `evsys build --executor`).

        A node that fails makes `status` "failed" with its `error`; a config or data mistake
        raises ConfigError, and Ctrl-C raises Interrupted (finished work stays stored)."""
        loaded = load_any(self._config, self.base_dir)  # again: the file or a plugin may have changed
        fetch(loaded, strict=False)  # what the config needs from the Hub, when the network allows
        project = Project(loaded, self.store)
        outcome = build_outcome(project, self.store, arm=arm, jobs=jobs, echo=self.echo, targets=targets, executor=executor, ray_address=ray_address)
        summaries = arm_summaries(project, self.store)
        artifacts: dict[str, str] = {"run_dir": str(loaded.output_dir / loaded.run_name)}
        for s in summaries:
            prefix = "" if len(summaries) == 1 else f"{s['arm']}/"
            if s["checkpoint_final"]:
                artifacts[f"{prefix}checkpoint-final"] = f"node:{s['checkpoint_final']}"
                artifacts[f"{prefix}state-final"] = f"node:{s['checkpoint_final']}#state"
            if s["completed"]:
                artifacts[f"{prefix}metrics"] = str(arm_run_dir(loaded, s["arm"], len(summaries)) / "metrics.jsonl")
        built = [s for s in summaries if arm is None or s["arm"] == arm]
        completed = outcome.code == 0 and (bool(targets) or all(s["completed"] for s in built))
        return ExperimentResult(
            status="completed" if completed else "failed",
            artifacts=artifacts,
            conclusion=conclusion(summaries),
            logs=loaded.output_dir,
            arms=summaries,
            error=outcome.error,
            traceback=outcome.traceback,
            run_id=outcome.run["id"],
            store=self.store.location,
        )


def run_experiment(config: ConfigLike, **kw) -> ExperimentResult:
    """Build an experiment without keeping an Experiment object around (keywords as Experiment's)."""
    return Experiment(config, **kw).run()
