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
from evsys_testkit import BASE_CONFIG, EXPERIMENT, copy_project, edit_config, evsys, make_project, ok, tool_rows, write_jsonl

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
    from evsys_build.watch import Watcher

    bucket = LocalBucket(tmp_path / "store")
    bucket.create("nodes/ab/present.json", b"{}")
    age(tmp_path)
    watcher = Watcher()
    journal = JournalBucket(bucket, watcher)
    assert journal.read_versioned("nodes/ab/present.json").data == b"{}"
    assert journal.size("nodes/cd/absent.json") is None
    assert journal.exists_many(["objects/ef/0123"]) == set()
    assert set(watcher.paths) == {f"{tmp_path}/store/nodes/ab/present.json", f"{tmp_path}/store/nodes/cd", f"{tmp_path}/store/objects/ef"}
    assert watcher.trustworthy() and not journal.wrote and first_changed(watcher.paths) is None
    bucket.create("objects/ef/0123", b"x")  # a folder that did not exist now does
    assert first_changed(watcher.paths) == f"{tmp_path}/store/objects/ef"
    journal.create("nodes/cd/absent.json", b"{}")
    assert journal.wrote  # it wrote: what it read is no longer what is there


def test_a_snapshot_watches_the_folders_libraries_are_installed_in():
    """`pip install -U pydantic` changes site-packages' listing: no snapshot outlives an upgrade."""
    from evsys_build.watch import Watcher

    watcher = Watcher()
    watcher.add_python_modules()
    installed = [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]
    assert installed and all(os.path.abspath(p) in watcher.paths for p in installed)


SHARDS_PLUGIN = """\
import json
from pathlib import Path

from pydantic import BaseModel

from evsys_sdk import register_source


@register_source("shards")
class Shards:
    class Config(BaseModel, extra="forbid"):
        folder: str

    def __init__(self, **params):
        self.cfg = self.Config(**params)

    def files(self):
        return sorted(Path(self.cfg.folder).glob("*.jsonl"))  # the plugin lists the folder itself

    def check(self):
        pass

    def read(self):
        return [json.loads(line) for f in self.files() for line in f.read_text().splitlines() if line.strip()]
"""


def unbuilt_project(root: Path, config: str = BASE_CONFIG) -> Path:
    """A project never built: its plan still names every key, and a change to what it read changes them."""
    return make_project(root, tool_rows(20), config)


def primed(project: Path, *roots: Path, env: dict | None = None, config: str = "config.yaml") -> str:
    """Plan until one is printed from the snapshot (the first plan makes the store's folders and
    caches: aged, the second leaves the snapshot); returns the plan."""
    age(project, *roots)
    first = plan_in(project, env, config)
    age(project, *roots)
    plan_in(project, env, config)
    again = plan_in(project, env, config)
    assert NOT_TAKEN not in again.stderr, again.stderr
    assert again.stdout == first.stdout
    return again.stdout


def plan_in(project: Path, env: dict | None = None, config: str = "config.yaml") -> subprocess.CompletedProcess:
    return ok(evsys("plan", config, "--cache-dir", "cache", cwd=project, env={"EVSYS_FASTPATH_DEBUG": "1", **(env or {})}))


def changed_plan(project: Path, before: str, env: dict | None = None, config: str = "config.yaml") -> str:
    after = plan_in(project, env, config)
    assert NOT_TAKEN in after.stderr, "printed from the snapshot"
    slow = ok(evsys("plan", config, "--cache-dir", "cache", cwd=project, env={"EVSYS_NO_FASTPATH": "1", **(env or {})})).stdout
    assert after.stdout == slow and after.stdout != before
    return after.stdout


def test_a_shard_added_beside_a_plugin_sources_files_takes_the_normal_path(tiny_model_dir, tmp_path):
    config = BASE_CONFIG.replace("  source_kind: jsonl\n  path: data/train.jsonl\n", "  source_kind: shards\n  params: {folder: shards}\n")
    project = unbuilt_project(tmp_path / "p", config.replace("output_dir: out\n", "output_dir: out\nplugins: [shards.py]\n"))
    (project / "shards.py").write_text(SHARDS_PLUGIN)
    write_jsonl(project / "shards" / "a.jsonl", tool_rows(20))
    before = primed(project, tiny_model_dir)
    write_jsonl(project / "shards" / "b.jsonl", tool_rows(5, seed=3))
    changed_plan(project, before)


def test_a_shard_in_a_new_subfolder_of_a_plugin_sources_folder_takes_the_normal_path(tiny_model_dir, tmp_path):
    """The folder comes from a param not named `path` and the glob goes a level down: only the
    listing the plugin made (its root's) says a subfolder was added."""
    config = BASE_CONFIG.replace("  source_kind: jsonl\n  path: data/train.jsonl\n", "  source_kind: shards\n  params: {folder: shards}\n")
    project = unbuilt_project(tmp_path / "p", config.replace("output_dir: out\n", "output_dir: out\nplugins: [shards.py]\n"))
    (project / "shards.py").write_text(SHARDS_PLUGIN.replace('glob("*.jsonl")', 'glob("*/*.jsonl")'))
    write_jsonl(project / "shards" / "a" / "rows.jsonl", tool_rows(20))
    before = primed(project, tiny_model_dir)
    write_jsonl(project / "shards" / "b" / "more.jsonl", tool_rows(5, seed=3))
    changed_plan(project, before)


LEXICON_PLUGIN = """\
from pathlib import Path

from pydantic import BaseModel

from evsys_sdk import register_transform


@register_transform("lexicon")
class Lexicon:
    row_local = True

    class Config(BaseModel, extra="forbid"):
        folder: str

    def __init__(self, **params):
        self.cfg = self.Config(**params)

    def files(self):
        return sorted(Path(self.cfg.folder).glob("*.txt"))

    def __call__(self, rows):
        words = " ".join(f.read_text().strip() for f in self.files())
        return [dict(row, query=f"{row['query']} {words}") for row in rows]
"""


@pytest.mark.parametrize("first", [["a.txt"], []], ids=["beside-a-listed-file", "in-a-folder-listed-empty"])
def test_a_file_added_to_a_folder_a_transforms_files_lists_takes_the_normal_path(tiny_model_dir, tmp_path, first):
    config = BASE_CONFIG.replace("transforms:\n", "transforms:\n  - kind: lexicon\n    params: {folder: lex}\n", 1)
    assert config != BASE_CONFIG
    project = unbuilt_project(tmp_path / "p", config.replace("output_dir: out\n", "output_dir: out\nplugins: [lexicon.py]\n"))
    (project / "lexicon.py").write_text(LEXICON_PLUGIN)
    (project / "lex").mkdir()
    for name in first:
        (project / "lex" / name).write_text("alpha\n")
    ok(evsys("build", "config.yaml", "--cache-dir", "cache", "--target", "source", cwd=project))  # the transform's key is known from here
    before = primed(project, tiny_model_dir)
    assert "transform[0] lexicon  (never built)" in before and "????????????  transform[0]" not in before
    (project / "lex" / "b.txt").write_text("beta\n")
    changed_plan(project, before)


def test_a_plugin_file_appearing_where_the_lookup_looks_first_takes_the_normal_path(tiny_model_dir, tmp_path):
    """`plugins: [shards.py]` looks in the run dir before the config's folder."""
    config = BASE_CONFIG.replace("  source_kind: jsonl\n  path: data/train.jsonl\n", "  source_kind: shards\n  params: {folder: shards}\n")
    project = unbuilt_project(tmp_path / "p")
    (project / "conf").mkdir()
    (project / "conf" / "config.yaml").write_text(config.replace("output_dir: out\n", "output_dir: out\nplugins: [shards.py]\n"))
    (project / "conf" / "shards.py").write_text(SHARDS_PLUGIN)
    write_jsonl(project / "shards" / "a.jsonl", tool_rows(20))
    before = primed(project, tiny_model_dir, config="conf/config.yaml")
    (project / "shards.py").write_text(SHARDS_PLUGIN.replace("glob(\"*.jsonl\")", "glob(\"*.json*\")"))
    changed_plan(project, before, config="conf/config.yaml")


def test_a_file_under_a_linked_folder_of_a_recursive_glob_takes_the_normal_path(tiny_model_dir, tmp_path):
    """glob's `**` follows a linked folder; so does what the snapshot watches."""
    project = unbuilt_project(tmp_path / "p", BASE_CONFIG.replace("path: data/train.jsonl", 'path: "data/**/*.jsonl"'))
    outside = tmp_path / "outside"
    write_jsonl(outside / "sub" / "b.jsonl", tool_rows(5, seed=1))
    (project / "data" / "linked").symlink_to(outside)
    before = primed(project, tiny_model_dir, outside)
    write_jsonl(outside / "sub" / "c.jsonl", tool_rows(5, seed=2))
    changed_plan(project, before)


def test_a_library_installed_into_a_pythonpath_folder_takes_the_normal_path(built_project, tiny_model_dir, tmp_path):
    """`pip install --target libs` with PYTHONPATH=libs: the folder's listing is watched like site-packages."""
    libs = tmp_path / "libs"
    libs.mkdir()
    project = copy_project(built_project, tmp_path / "p")
    env = {"PYTHONPATH": str(libs)}
    before = primed(project, tiny_model_dir, libs, env=env)
    (libs / "tokenizers-99.0.dist-info").mkdir()
    (libs / "tokenizers-99.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: tokenizers\nVersion: 99.0\n\n")
    assert "tokenizer library versions changed" in changed_plan(project, before, env=env)


def test_the_gpu_a_config_sees_is_reported_to_the_snapshot():
    """`device: auto` turns on whether an NVIDIA GPU is there: the files that tell are watched."""
    from evsys_build.watch import watching
    from evsys_rules.backends.local.config import NVIDIA_FILES, cuda_present

    with watching() as watcher:
        cuda_present()
    assert {os.path.abspath(p) for p in NVIDIA_FILES} <= set(watcher.paths)


def test_a_module_plugin_shadowed_from_the_run_dir_takes_the_normal_path(tiny_model_dir, tmp_path):
    """`plugins: [shardsrc]` found on PYTHONPATH; a `shardsrc.py` written in the run dir (first on
    sys.path under `python -m`) would be imported instead."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "shardsrc.py").write_text(SHARDS_PLUGIN)
    config = BASE_CONFIG.replace("  source_kind: jsonl\n  path: data/train.jsonl\n", "  source_kind: shards\n  params: {folder: shards}\n")
    project = unbuilt_project(tmp_path / "p", config.replace("output_dir: out\n", "output_dir: out\nplugins: [shardsrc]\n"))
    write_jsonl(project / "shards" / "a.jsonl", tool_rows(20))
    env = {"PYTHONPATH": str(mods)}
    before = primed(project, tiny_model_dir, mods, env=env)
    (project / "shardsrc.py").write_text(SHARDS_PLUGIN.replace('glob("*.jsonl")', 'glob("*.json*")'))
    changed_plan(project, before, env=env)
