"""The Python API: `Experiment(cfg).run()` and `run_experiment(cfg)` build through the same engine as the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from evsys_build.build import build_project
from evsys_build.store import cache_location, open_store

from .config.loading import LoadedConfig
from .frontend import fetch, open_project
from .outputs.experiment_md import conclusion
from .outputs.run_dir import arm_run_dir, arm_summaries


@dataclass
class ExperimentResult:
    status: str  # "completed" | "failed"
    artifacts: dict = field(default_factory=dict)  # run_dir, checkpoint-final, state-final, ...
    conclusion: str = ""
    logs: Path | None = None
    arms: list[dict] = field(default_factory=list)


class Experiment:
    """An experiment config (a path or a loaded config), buildable from Python."""

    def __init__(self, cfg: str | Path | LoadedConfig, cache_dir: str | Path | None = None, echo=print):
        self.config_path = Path(cfg.path if isinstance(cfg, LoadedConfig) else cfg)
        self.store = open_store(cache_location(str(cache_dir) if cache_dir else None))
        self.echo = echo

    def run(self, arm: str | None = None, jobs: int = 2, executor: str = "threads", ray_address: str | None = None) -> ExperimentResult:
        """Build every node (callbacks fire, the run dir is written) and summarise the outcome.
        `executor`: threads, inline or ray (see `evsys build --executor`)."""
        fetch(self.config_path, strict=False)  # what the config needs from the Hub, when the network allows
        project = open_project(self.config_path, self.store)
        code = build_project(project, self.store, arm=arm, jobs=jobs, echo=self.echo, executor=executor, ray_address=ray_address)
        summaries = arm_summaries(project, self.store)
        loaded = project.loaded
        artifacts: dict = {"run_dir": str(loaded.output_dir / loaded.run_name)}
        for s in summaries:
            prefix = "" if len(summaries) == 1 else f"{s['arm']}/"
            if s["checkpoint_final"]:
                artifacts[f"{prefix}checkpoint-final"] = f"node:{s['checkpoint_final']}"
                artifacts[f"{prefix}state-final"] = f"node:{s['checkpoint_final']}#state"
                artifacts[f"{prefix}metrics"] = str(arm_run_dir(loaded, s["arm"], len(summaries)) / "metrics.jsonl")
        return ExperimentResult(
            status="completed" if code == 0 and all(s["completed"] for s in summaries) else "failed",
            artifacts=artifacts,
            conclusion=conclusion(summaries),
            logs=loaded.output_dir,
            arms=summaries,
        )


def run_experiment(cfg: str | Path | LoadedConfig, **kw) -> ExperimentResult:
    """Build an experiment without keeping an Experiment object around."""
    return Experiment(cfg, **kw).run()
