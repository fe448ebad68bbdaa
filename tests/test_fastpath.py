"""The no-op fast path: a config nothing about has changed builds from a snapshot without
compiling — and any change to what the compile read (data, config, plugin code, tasks, a
folder's listing, the environment), to the store or to the run dir sends it down the normal path."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from evsys_build.store import Store
from evsys_testkit import EXPERIMENT, copy_project, evsys, ok


def age(project: Path) -> None:
    """Push every file's mtime into the past: the fast path never trusts a file changed in the last 2 s."""
    past = time.time() - 60
    for f in project.rglob("*"):
        if "cache" not in f.parts:
            os.utime(f, (past, past))


@pytest.fixture(autouse=True)
def aged_model(tiny_model_dir):
    """The session's tiny model may have been written seconds ago; it is read by every compile."""
    age(tiny_model_dir)


def build(project: Path, env: dict | None = None, experiment: str = EXPERIMENT) -> tuple[str, dict]:
    proc = ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project, env={"EVSYS_FASTPATH_DEBUG": "1", **(env or {})}))
    runs = list(Store(project / "cache").iter_runs(experiment))
    return proc.stdout, dict(runs[-1], stderr=proc.stderr)


@pytest.fixture
def warm(built_project, tmp_path) -> Path:
    """A copy of the built project whose last build left a snapshot (a fully cached build)."""
    project = copy_project(built_project, tmp_path / "p")
    age(project)
    out, run = build(project)
    assert not run.get("fast_path") and "ran " not in out
    return project


def test_an_unchanged_config_builds_from_the_snapshot_with_the_same_output(warm):
    slow = ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=warm, env={"EVSYS_NO_FASTPATH": "1"})).stdout
    fast, run = build(warm)
    assert run.get("fast_path") is True and run["status"] == "completed"
    assert fast == slow
    refs = Store(warm / "cache").read_ref(EXPERIMENT, "default")
    assert refs["run"] == run["id"]


def edit_data(p: Path) -> None:
    data = p / "data" / "train.jsonl"
    data.write_text(data.read_text().replace("request 3:", "request 3;"))  # same size, other bytes


def edit_config_comment(p: Path) -> None:
    with open(p / "config.yaml", "a") as f:
        f.write("# a comment changes no key, but the file changed\n")


def touch_data(p: Path) -> None:
    os.utime(p / "data" / "train.jsonl")


def remove_run_dir_file(p: Path) -> None:
    (p / "out" / "first_run" / "metrics.jsonl").unlink()


def stale_prediction_file(p: Path) -> None:
    (p / "out" / "first_run" / "predictions").mkdir(exist_ok=True)
    (p / "out" / "first_run" / "predictions" / "old.jsonl").write_text("{}\n")


def remove_an_object(p: Path) -> None:
    store = Store(p / "cache")
    train = store.read_manifest(store.read_ref(EXPERIMENT, "default")["nodes"]["train"]["key"])
    store.object_path(train["outputs"]["history"]["blob"]).unlink()


def change_environment(p: Path) -> dict:
    return {"HF_HOME": str(p / "elsewhere")}


CHANGES = {
    "data bytes": (edit_data, {"source"}),
    "config file": (edit_config_comment, set()),
    "data touched": (touch_data, set()),
    "run dir file removed": (remove_run_dir_file, set()),
    "stale prediction file": (stale_prediction_file, set()),
    "object removed": (remove_an_object, {"train"}),
    "environment": (change_environment, set()),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_any_change_takes_the_normal_path(warm, change):
    make_change, expected_ran = CHANGES[change]
    env = make_change(warm)
    out, run = build(warm, env=env)
    assert not run.get("fast_path"), f"{change}: served from the snapshot"
    ran = {line.split()[1] for line in out.splitlines() if line.startswith("ran ")}
    assert expected_ran <= ran
    if change == "run dir file removed":
        assert (warm / "out" / "first_run" / "metrics.jsonl").is_file()
    if change == "stale prediction file":
        assert not (warm / "out" / "first_run" / "predictions" / "old.jsonl").exists()


def test_a_plugin_edit_takes_the_normal_path(built_evals, tmp_path):
    project = copy_project(built_evals, tmp_path / "p")
    age(project)
    build(project, experiment="cutoff")  # leaves the snapshot
    _, run = build(project, experiment="cutoff")
    assert run.get("fast_path") is True, run["stderr"]
    (project / "tag.py").write_text((project / "tag.py").read_text().replace("text.upper()", "text.upper() + ''"))
    out, run = build(project, experiment="cutoff")
    assert not run.get("fast_path") and "ran     transform[0] tag_rows" in out


def test_a_new_shard_in_a_data_folder_takes_the_normal_path(built_project, tmp_path):
    project = copy_project(built_project, tmp_path / "p")
    (project / "config.yaml").write_text((project / "config.yaml").read_text().replace("path: data/train.jsonl", "path: data"))
    age(project)
    build(project)
    age(project)
    build(project)  # fully cached with the new path: leaves the snapshot
    _, run = build(project)
    assert run.get("fast_path") is True, run["stderr"]
    (project / "data" / "more.jsonl").write_text(json.dumps({"query": "one more", "tool_slug": "X"}) + "\n")
    out, run = build(project)
    assert not run.get("fast_path") and "ran     source" in out


def test_a_recently_changed_file_leaves_no_snapshot(built_project, tmp_path):
    project = copy_project(built_project, tmp_path / "p")
    age(project)
    os.utime(project / "data" / "train.jsonl")  # changed just now: its stat identity is not trusted yet
    build(project)
    _, run = build(project)
    assert not run.get("fast_path")


def test_a_config_that_compiles_on_every_build_says_why_under_the_debug_switch(built_project, tmp_path):
    """A callback beyond local_logger must see every build: no snapshot, and EVSYS_FASTPATH_DEBUG
    says that, not a bare "no snapshot"."""
    project = copy_project(built_project, tmp_path / "p")
    (project / "config.yaml").write_text((project / "config.yaml").read_text().replace("callbacks:\n", "callbacks:\n  - kind: tensorboard\n", 1))
    age(project)
    build(project)
    _, run = build(project)
    assert not run.get("fast_path")
    assert "evsys: fast path not taken: no snapshot saved: this config compiles on every build (a callback beyond local_logger sees every build)" in run["stderr"]


def test_a_credential_in_the_environment_never_reaches_the_snapshot(built_project, tmp_path):
    """The snapshot notices a changed environment variable without storing its value: a key the
    user exported (TINKER_API_KEY, HF_TOKEN, ...) is nowhere in the store, and a new value of it
    still sends the build down the normal path."""
    project = copy_project(built_project, tmp_path / "p")
    age(project)
    secrets = {"TINKER_API_KEY": "tml-CANARY-0001", "HF_TOKEN": "hf_CANARY0002", "AWS_SECRET_ACCESS_KEY": "CANARY0003"}
    _, run = build(project, env=secrets)
    assert not run.get("fast_path")
    _, run = build(project, env=secrets)
    assert run.get("fast_path") is True  # the snapshot was written, and serves an unchanged environment
    leaked = [str(f) for f in (project / "cache").rglob("*") if f.is_file() and b"CANARY" in f.read_bytes()]
    assert leaked == []
    _, run = build(project, env={**secrets, "HF_TOKEN": "hf_CANARY0004"})
    assert not run.get("fast_path")
