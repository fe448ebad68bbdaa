"""Materialize the run dir after a build: each arm's report files, then experiment.md."""

from __future__ import annotations

from evsys_build.atomic import write_atomic
from evsys_build.errors import ConfigError

from .experiment_md import experiment_markdown
from .report import write_run_dir


def materialize(project, store, results: dict, arms: list[str], echo) -> None:
    """Write every built arm's run dir and experiment.md; an unwritable output_dir is a config error."""
    try:
        _materialize(project, store, results, arms, echo)
    except OSError as exc:
        raise ConfigError(f"output_dir: cannot write the run dir ({exc.strerror}: {exc.filename}); choose another output_dir") from None


def _materialize(project, store, results: dict, arms: list[str], echo) -> None:
    built = [n for n in project.arm_nodes if n.arm.name in arms]
    for nodes in built:
        run_dir = write_run_dir(project, store, results, nodes, echo)
        echo(f"run dir: {run_dir}")
    base = project.loaded.output_dir / project.loaded.run_name
    summaries = arm_summaries(project, store)
    write_atomic(base / "experiment.md", experiment_markdown(project.loaded, summaries).encode())


def arm_summaries(project, store) -> list[dict]:
    """Per arm: completed or not, final eval metrics, final train loss, artifacts."""
    out = []
    for nodes in project.arm_nodes:
        report = store.read_manifest(nodes.report.key)
        train = store.read_manifest(nodes.train.key)
        out.append(
            {
                "arm": nodes.arm.name,
                "completed": report is not None,
                "metrics": report["metrics"] if report else {},
                "train": train["metrics"] if train else {},
                "checkpoint_final": train["outputs"]["checkpoint-final"] if train else None,
                "overrides": next((a.set for a in project.loaded.config.arms if a.name == nodes.arm.name), {}),
            }
        )
    return out
