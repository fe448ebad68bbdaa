"""Materialize the run dir after a build: each arm's report files, then experiment.md.

A run dir is written into a temporary folder beside it and renamed into place, so a reader (or
a crash) never sees it half-written. Files in it that evsys did not write are carried over.
"""

from __future__ import annotations

import errno
import glob
import os
import shutil
import threading
from pathlib import Path

from evsys_build.atomic import write_atomic
from evsys_build.errors import ConfigError, StoreError, UsageError
from evsys_build.hashing import digest_bytes
from evsys_build.processes import process_alive
from evsys_build.store import Store

from ..nodes.views import ReportFiles, TrainResult
from .experiment_md import experiment_markdown, headline_metric

EXPERIMENT_MD = "experiment.md"


def materialize(project, store: Store, results: dict, arms: list[str], echo) -> dict:
    """Write every built arm's run dir and experiment.md; returns the run's summary for its record."""
    try:
        return _materialize(project, store, arms, echo)
    except (StoreError, BrokenPipeError):
        raise  # a corrupt report blob (rebuilt), a full disk (its own message), a closed stdout
    except OSError as exc:
        raise ConfigError(f"output_dir: cannot write the run dir ({exc.strerror}: {exc.filename}); choose another output_dir") from None


def _materialize(project, store: Store, arms: list[str], echo) -> dict:
    loaded = project.loaded
    for hub in getattr(project, "hubs", {}).values():
        hub.echo = echo  # callbacks print here after the build (replayed history, warnings)
    summaries = arm_summaries(project, store)
    markdown = experiment_markdown(loaded, summaries).encode()
    base = loaded.output_dir / loaded.run_name
    single = len(project.arm_nodes) == 1
    markdown_blob = store.put_bytes(markdown)
    plans = []
    for nodes in project.arm_nodes:
        if nodes.arm.name not in arms:
            continue
        blobs = report_files(store, nodes)
        if single:
            blobs[EXPERIMENT_MD] = markdown_blob
        run_dir = arm_run_dir(loaded, nodes.arm.name, len(project.arm_nodes))
        if not dir_holds(run_dir, blobs):  # a cached build usually finds it whole: no rewrite
            files = {rel: store.get_bytes(blob) for rel, blob in blobs.items()}
            replace_dir(run_dir, files, owned=lambda rel: rel in files or rel.startswith("predictions/"))
        plans.append({"dir": str(run_dir), "files": blobs})
        echo(f"run dir: {run_dir}")
    if not single:
        if not dir_holds(base, {EXPERIMENT_MD: markdown_blob}, only_listed=False):
            write_atomic(base / EXPERIMENT_MD, markdown)
        plans.append({"dir": str(base), "files": {EXPERIMENT_MD: markdown_blob}})
    return {
        "run_name": loaded.run_name,
        "arms": {s["arm"]: {k: s[k] for k in ("completed", "metrics", "headline", "checkpoint_final", "report")} for s in summaries},
        "files": {EXPERIMENT_MD: {"blob": markdown_blob}},
        "run_dirs": plans,
    }


def dir_holds(folder: Path, blobs: dict[str, str], only_listed: bool = True) -> bool:
    """Whether `folder` holds exactly these files' bytes (each checked against its blob name)
    and, with `only_listed`, no stale prediction files besides."""
    for rel, blob in blobs.items():
        try:
            if digest_bytes((folder / rel).read_bytes()) != blob:
                return False
        except OSError:
            return False
    predictions = folder / "predictions"
    if only_listed and predictions.is_dir():
        return {f"predictions/{f.name}" for f in predictions.glob("*.jsonl")} <= set(blobs)
    return True


def write_run(store: Store, run: dict, dest: Path) -> list[Path]:
    """Rewrite a recorded run's run dir into `dest`: each arm's report files and experiment.md."""
    arms = run.get("arms", {})
    files: dict[str, bytes] = {}
    for arm, entry in arms.items():
        manifest = store.read_manifest(entry["report"]) if entry.get("report") else None
        if manifest is None:
            raise UsageError(f"run {run['id']}: the report of arm {arm} is not in the store (the run did not complete, or gc removed it)")
        prefix = "" if len(arms) == 1 else f"{arm}/"
        files.update({prefix + rel: store.get_bytes(blob) for rel, blob in ReportFiles.of(manifest).files.items()})
    markdown = run.get("files", {}).get(EXPERIMENT_MD)
    if markdown:
        files[EXPERIMENT_MD] = store.get_bytes(markdown["blob"])
    replace_dir(dest, files, owned=lambda rel: rel in files)
    return [dest / rel for rel in sorted(files)]


def report_files(store: Store, nodes) -> dict[str, str]:
    """The arm's run-dir files (relative path -> blob) from its report node."""
    return ReportFiles.of(store.read_manifest(nodes.report.key)).files


def replace_dir(target: Path, files: dict[str, bytes], owned=lambda rel: True) -> None:
    """Make `target` hold exactly `files` (plus the files already there that `owned` says evsys
    does not own), by writing a temporary folder beside it and renaming it into place. A build
    killed between the two renames left the user's files in its `.evsys-old-PID-THREAD` folder: they are
    carried over from there too, and what such a build left is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    mine = f"{os.getpid()}-{threading.get_ident()}"  # two builds of one process (threads) never share a folder
    staging = target.parent / f".{target.name}.evsys-new-{mine}"
    retired = target.parent / f".{target.name}.evsys-old-{mine}"
    shutil.rmtree(staging, ignore_errors=True)
    left = _left_by_killed_builds(target)
    try:
        for rel, data in files.items():
            write_atomic(staging / rel, data)
        for previous in [p for p in left if ".evsys-old-" in p.name]:
            _carry_over(previous, staging, owned)
        for attempt in range(5):  # another build may put its own folder in place between our two renames
            shutil.rmtree(retired, ignore_errors=True)
            try:
                os.replace(target, retired)
            except FileNotFoundError:  # no run dir yet, or another build has just moved it aside
                pass
            _carry_over(retired, staging, owned)  # what the run dir held as it was moved aside: nothing lost to another build's swap
            try:
                os.replace(staging, target)
                break
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or attempt == 4:
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
    for path in left:
        shutil.rmtree(path, ignore_errors=True)


def _carry_over(previous: Path, staging: Path, owned) -> None:
    """Copy the files of `previous` that evsys does not own into `staging`, unless already there."""
    if not previous.is_dir():
        return
    for f in previous.rglob("*"):
        rel = f.relative_to(previous).as_posix()
        if f.is_file() and not owned(rel) and not (staging / rel).exists():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, staging / rel)


def _left_by_killed_builds(target: Path) -> list[Path]:
    """The staging and retired folders beside `target` of builds whose process is gone."""
    out = []
    for path in target.parent.glob(f".{glob.escape(target.name)}.evsys-*-*"):
        kind, _, owner = path.name.rsplit(".evsys-", 1)[1].partition("-")
        pid = owner.split("-", 1)[0]  # PID, or PID-THREAD
        if kind in ("new", "old") and pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            out.append(path)
    return sorted(out)


def arm_run_dir(loaded, arm: str, n_arms: int) -> Path:
    """`<output_dir>/<run_name>/`, with one folder per arm when there are several."""
    base = loaded.output_dir / loaded.run_name
    return base if n_arms == 1 else base / arm


def arm_summaries(project, store: Store) -> list[dict]:
    """Per arm: completed or not, final eval metrics, final train loss, artifacts, and the shaping
    each held-out loss was scored with."""
    from ..nodes.heldout import heldout_shaping  # compiled already: the project's nodes are made

    out = []
    for nodes in project.arm_nodes:
        report = store.read_manifest(nodes.report.key) if nodes.report is not None and nodes.report.key else None
        train = store.read_manifest(nodes.train.key) if nodes.train is not None and nodes.train.key else None
        out.append(
            {
                "arm": nodes.arm.name,
                "completed": report is not None,
                "metrics": report["metrics"] if report else {},
                "headline": headline_metric(nodes.arm.config.metadata.benchmark, report["metrics"]) if report else None,
                "train": train["metrics"] if train else {},
                "checkpoint_final": TrainResult.of(train).checkpoint_final if train else None,
                "report": nodes.report.key if report else None,
                "overrides": nodes.arm.overrides,
                "scored_on": {f"{b.split}/{b.name}/nll": heldout_shaping(nodes.arm.params["algorithm"], b)
                              for b in nodes.arm.config.metadata.benchmark if b.kind == "nll"},
            }
        )
    return out
