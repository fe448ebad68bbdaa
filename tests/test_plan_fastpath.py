"""`evsys plan`'s fast path: an unchanged plan is printed from its snapshot without importing the
frontend; anything the plan read changing (the config and its files, the store's manifests,
objects and refs) sends it down the normal path, which prints what a plan without snapshots prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evsys_build.bucket import LocalBucket
from evsys_build.read_journal import JournalBucket, first_changed
from evsys_build.store import Store, referenced_objects
from evsys_testkit import EXPERIMENT, copy_project, edit_config, evsys, ok

NOT_TAKEN = "fast path not taken"


def age(*roots: Path) -> None:
    """Every file and folder written a minute ago: a snapshot never trusts what changed in the last 2 s."""
    past = time.time() - 60
    for root in roots:
        for f in [root, *root.rglob("*")]:
            os.utime(f, (past, past), follow_symlinks=False)


def plan(project: Path, *extra: str) -> subprocess.CompletedProcess:
    return ok(evsys("plan", "config.yaml", "--cache-dir", "cache", *extra, cwd=project, env={"EVSYS_FASTPATH_DEBUG": "1"}))


def slow_plan(project: Path, *extra: str) -> str:
    return ok(evsys("plan", "config.yaml", "--cache-dir", "cache", *extra, cwd=project, env={"EVSYS_NO_FASTPATH": "1"})).stdout


@pytest.fixture
def planned(built_project, tiny_model_dir, tmp_path) -> Path:
    """A copy of the built project with a new learning rate (train and its checkpoint to run, with
    reasons), all of it aged, whose plan (text and --json) left its snapshots."""
    project = copy_project(built_project, tmp_path / "p")
    edit_config(project, "learning_rate: 1.0e-4", "learning_rate: 3.0e-4")
    age(project, tiny_model_dir)
    for extra in ((), ("--json",)):
        first = plan(project, *extra)
        assert "no snapshot" in first.stderr
    return project


def test_an_unchanged_plan_is_printed_from_its_snapshot_without_the_frontend(planned):
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "evsys_build.cli", "plan", "config.yaml", "--cache-dir", "cache"],
        cwd=planned, capture_output=True, text=True, env={**os.environ, "EVSYS_FASTPATH_DEBUG": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert NOT_TAKEN not in proc.stderr
    assert not {m for m in imported if m.split(".")[0] in ("evsys_rules", "pydantic", "yaml")}, "the fast plan compiled"
    assert proc.stdout == slow_plan(planned)
    assert "learning_rate: (default) → 0.0003" in proc.stdout
    as_json = plan(planned, "--json")
    assert NOT_TAKEN not in as_json.stderr
    assert as_json.stdout == slow_plan(planned, "--json")
    assert {n["name"]: n["status"] for n in json.loads(as_json.stdout)["nodes"]}["train"] == "run"


def remove_cached_object(p: Path) -> None:
    store = Store(p / "cache")
    tokens = store.read_manifest(store.read_ref(EXPERIMENT, "default")["nodes"]["tokenize"]["key"])
    store.object_path(sorted(referenced_objects(tokens))[0]).unlink()


def corrupt_manifest_keeping_its_times(p: Path) -> None:
    """Same size, other bytes, and its mtime put back: only the ctime and the bytes tell."""
    store = Store(p / "cache")
    path = store.root / "nodes" / (key := store.read_ref(EXPERIMENT, "default")["nodes"]["source"]["key"])[:2] / f"{key}.json"
    st = path.stat()
    data = path.read_bytes()
    path.write_bytes(data.replace(b'"source"', b'"sourcf"', 1))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def remove_ref(p: Path) -> None:
    next((p / "cache" / "refs").rglob("*.json")).unlink()


def build_it(p: Path) -> None:
    ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=p))


def collect_everything(p: Path) -> None:
    """No run or record left to keep anything: gc removes every node and object."""
    for record in [*(p / "cache" / "refs").rglob("*.json"), *(p / "cache" / "runs").rglob("*.json")]:
        record.unlink()
    out = ok(evsys("gc", "--keep-last", "0", "--keep-within", "0d", "--cache-dir", "cache", cwd=p)).stdout
    assert "removed 0 runs, 0 nodes" not in out and "0 nodes, 0 objects" not in out


def edit_data(p: Path) -> None:
    data = p / "data" / "train.jsonl"
    data.write_text(data.read_text().replace("request 3:", "request 3;"))


STORE_CHANGES = {
    "an object of a cached node removed": (remove_cached_object, "tokenize"),
    "a manifest corrupted in place, its mtime put back": (corrupt_manifest_keeping_its_times, "source"),
    "the last build's record removed": (remove_ref, "train"),
    "the plan built": (build_it, "train"),
    "everything collected": (collect_everything, "source"),
    "the data edited": (edit_data, "source"),
}


@pytest.mark.parametrize("change", list(STORE_CHANGES))
def test_a_change_to_what_the_plan_read_takes_the_normal_path(planned, change):
    make_change, changed_node = STORE_CHANGES[change]
    before = plan(planned).stdout
    make_change(planned)
    after = plan(planned)
    assert NOT_TAKEN in after.stderr, f"{change}: printed from the snapshot"
    assert after.stdout == slow_plan(planned)
    assert node_line(after.stdout, changed_node) != node_line(before, changed_node), f"{change}: {changed_node} reads the same"


def node_line(out: str, name: str) -> str:
    return next(line for line in out.splitlines() if line.split()[2:3] == [name])


def test_a_journal_stamps_files_read_and_folders_of_files_not_found(tmp_path):
    bucket = LocalBucket(tmp_path / "store")
    bucket.create("nodes/ab/present.json", b"{}")
    age(tmp_path)
    journal = JournalBucket(bucket)
    assert journal.read_versioned("nodes/ab/present.json").data == b"{}"
    assert journal.size("nodes/cd/absent.json") is None
    assert journal.exists_many(["objects/ef/0123"]) == set()
    assert set(journal.stamps) == {f"{tmp_path}/store/nodes/ab/present.json", f"{tmp_path}/store/nodes/cd", f"{tmp_path}/store/objects/ef"}
    assert journal.trustworthy() and first_changed(journal.stamps) is None
    bucket.create("objects/ef/0123", b"x")  # a folder that did not exist now does
    assert first_changed(journal.stamps) == f"{tmp_path}/store/objects/ef"
    journal.create("nodes/cd/absent.json", b"{}")
    assert not journal.trustworthy()  # it wrote: what it read is no longer what is there


def test_a_snapshot_watches_the_folders_libraries_are_installed_in():
    """`pip install -U pydantic` changes site-packages' listing: no snapshot outlives an upgrade."""
    from evsys_build.watch import Watcher

    watcher = Watcher()
    watcher.add_python_modules()
    installed = [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]
    assert installed and all(os.path.abspath(p) in watcher.paths for p in installed)
