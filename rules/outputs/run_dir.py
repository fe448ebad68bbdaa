"""Materialize the run dir after a build: each arm's report files, then experiment.md."""

from __future__ import annotations

from pathlib import Path

from evsys_build.atomic import write_atomic
from evsys_build.errors import ConfigError

from ..nodes.views import ReportFiles, TrainResult
from .experiment_md import experiment_markdown


def materialize(project, store, results: dict, arms: list[str], echo) -> None:
    """Write every built arm's run dir and experiment.md; an unwritable output_dir is a config error."""
    try:
        _materialize(project, store, results, arms, echo)
    except OSError as exc:
        raise ConfigError(f"output_dir: cannot write the run dir ({exc.strerror}: {exc.filename}); choose another output_dir") from None


def _materialize(project, store, results: dict, arms: list[str], echo) -> None:
    built = [n for n in project.arm_nodes if n.arm.name in arms]
    for nodes in built:
        run_dir = write_run_dir(project, store, results, nodes)
        echo(f"run dir: {run_dir}")
    base = project.loaded.output_dir / project.loaded.run_name
    summaries = arm_summaries(project, store)
    write_atomic(base / "experiment.md", experiment_markdown(project.loaded, summaries).encode())


def write_run_dir(project, store, results: dict, nodes) -> Path:
    """Copy the report's files into the arm's run dir; stale prediction files are removed."""
    run_dir = arm_run_dir(project.loaded, nodes.arm.name, len(project.arm_nodes))
    files = ReportFiles.of(results.get(nodes.report.key) or store.read_manifest(nodes.report.key)).files
    wanted = {run_dir / rel for rel in files}
    for stale in (run_dir / "predictions").glob("*.jsonl") if (run_dir / "predictions").is_dir() else []:
        if stale not in wanted:
            stale.unlink()
    for rel, blob in files.items():
        write_atomic(run_dir / rel, store.get_bytes(blob))
    return run_dir


def arm_run_dir(loaded, arm: str, n_arms: int) -> Path:
    """`<output_dir>/<run_name>/`, with one folder per arm when there are several."""
    base = loaded.output_dir / loaded.run_name
    return base if n_arms == 1 else base / arm


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
                "checkpoint_final": TrainResult.of(train).checkpoint_final if train else None,
                "overrides": next((a.set for a in project.loaded.config.arms if a.name == nodes.arm.name), {}),
            }
        )
    return out
