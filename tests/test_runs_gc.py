"""Every build records a run; building a variant never makes an earlier run's nodes garbage;
`gc` keeps what recent runs reference and says what it would remove; gc and builds never race."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from evsys_build.gc import collect_garbage
from evsys_build.store import Store
from evsys_testkit import BASE_CONFIG, EXPERIMENT, copy_project, edit_config, evsys, make_project, ok, ran_names, tool_rows


def runs(project: Path) -> list[dict]:
    return list(Store(project / "cache").iter_runs(EXPERIMENT))


def build(project: Path) -> str:
    return ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project)).stdout


def train_key(run: dict) -> str:
    return run["arms"]["default"]["nodes"]["train"]["key"]


@pytest.fixture(scope="module")
def two_variants(tmp_path_factory, built_project) -> Path:
    """The shared built project (max_steps 1), then built again with max_steps 2: two runs of two
    variants; the first run's metrics kept aside as first-metrics.jsonl. Copy it to change it."""
    project = copy_project(built_project, tmp_path_factory.mktemp("variants") / "p")
    shutil.copy(project / "out" / "first_run" / "metrics.jsonl", project / "first-metrics.jsonl")
    edit_config(project, "max_steps: 1", "max_steps: 2")
    build(project)
    return project


@pytest.fixture
def variants(two_variants, tmp_path) -> Path:
    return copy_project(two_variants, tmp_path / "p")


def test_variants_are_separate_runs_and_gc_keeps_the_earlier_training(variants):
    project = variants
    first, second = runs(project)
    assert first["status"] == second["status"] == "completed"
    assert train_key(first) != train_key(second)
    assert "max_steps: 1" in first["config"]["text"] and "max_steps: 2" in second["config"]["text"]
    ok(evsys("gc", "--cache-dir", "cache", cwd=project))
    store = Store(project / "cache")
    assert store.complete_manifest(train_key(first)) is not None  # the 1-step training survives
    listing = ok(evsys("runs", "--cache-dir", "cache", cwd=project)).stdout
    assert first["id"] in listing and second["id"] in listing and listing.rstrip().endswith("2 run(s)")


def test_gc_dry_run_lists_by_run_and_node_with_sizes_then_removes_exactly_that(variants):
    project = variants
    first, second = runs(project)
    dry = ok(evsys("gc", "--dry-run", "--keep-last", "1", "--keep-within", "0d", "--cache-dir", "cache", cwd=project)).stdout
    assert f"would remove run {EXPERIMENT}/{first['id']} (completed" in dry
    lines = dry.splitlines()
    train_line = next(line for line in lines if line.strip().startswith("train "))
    assert f"node:{train_key(first)[:12]}" in train_line and train_line.rstrip().endswith("MB")
    assert "checkpoint@1" in dry and "source" not in dry  # shared with the kept run: never listed
    store = Store(project / "cache")
    assert store.complete_manifest(train_key(first)) is not None  # a dry run changes nothing
    ok(evsys("gc", "--keep-last", "1", "--keep-within", "0d", "--cache-dir", "cache", cwd=project))
    assert store.read_manifest(train_key(first)) is None
    assert store.complete_manifest(train_key(second)) is not None
    assert [r["id"] for r in runs(project)] == [second["id"]]
    assert build(project).count("ran ") == 0  # the kept run is whole


def test_gc_keeps_what_a_partial_build_gave_the_arm(project_copy):
    """A --target build's nodes are the arm's current ones (its ref names them) though its run
    falls out of the policy: gc keeps them, and the next plan serves them from the store."""
    project = project_copy
    edit_config(project, "learning_rate: 1.0e-4", "learning_rate: 2.0e-4")
    ok(evsys("build", "config.yaml", "--cache-dir", "cache", "--target", "train", cwd=project))
    ok(evsys("build", "config.yaml", "--cache-dir", "cache", "--target", "tokenize", cwd=project))
    trained = train_key(runs(project)[1])
    ok(evsys("gc", "--keep-last", "1", "--keep-within", "0d", "--cache-dir", "cache", cwd=project))
    assert Store(project / "cache").complete_manifest(trained) is not None
    plan = ok(evsys("plan", "config.yaml", "--cache-dir", "cache", cwd=project)).stdout
    assert ["cached", trained[:12], "train"] in [line.split()[:3] for line in plan.splitlines()], plan


def test_runs_show_rewrites_an_earlier_runs_run_dir(variants):
    project = variants
    first_metrics = (project / "first-metrics.jsonl").read_text()
    assert (project / "out" / "first_run" / "metrics.jsonl").read_text() != first_metrics  # the latest build owns the path
    first = runs(project)[0]
    shown = ok(evsys("runs", "show", first["id"][:18], "--cache-dir", "cache", cwd=project)).stdout
    assert f"run        {first['id']} (completed)" in shown and "train" in shown
    ok(evsys("runs", "show", first["id"], "--write", "old", "--cache-dir", "cache", cwd=project))
    assert (project / "old" / "metrics.jsonl").read_text() == first_metrics
    assert (project / "old" / "experiment.md").is_file()


def test_gc_waits_for_a_running_build_and_removes_none_of_its_work(tmp_path, tiny_model_dir):
    """gc started while a build runs waits for it (store lock); afterwards the build is whole."""
    project = make_project(tmp_path / "p", tool_rows(40), BASE_CONFIG.replace("max_steps: 1", "max_steps: 16"))
    env = {k: v for k, v in os.environ.items() if k != "EVSYS_CACHE"}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "evsys_build.cli", "build", "config.yaml", "--cache-dir", "cache"],
                            cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and "step 2:" not in (line := proc.stdout.readline()):
        assert line, proc.stderr.read()
    gc_proc = evsys("gc", "--keep-last", "0", "--keep-within", "0d", "--cache-dir", "cache", cwd=project, timeout=300)
    build_out, build_err = proc.communicate(timeout=300)
    assert proc.returncode == 0, build_err
    assert gc_proc.returncode == 0 and "waiting for running builds to finish" in gc_proc.stderr
    assert ok(evsys("verify", "--cache-dir", "cache", cwd=project)).stdout.rstrip().endswith("0 problem(s)")
    assert build(project).count("ran ") == 0  # the build's run is the newest: gc kept all of it


def test_gc_in_process_beside_builds_in_threads_loses_nothing(tmp_path, tiny_model_dir, monkeypatch):
    """Many interleavings: builds of two variants and gc calls racing in threads."""
    from evsys_build.build import run_build

    project = make_project(tmp_path / "p", tool_rows(20), BASE_CONFIG)
    monkeypatch.chdir(project)
    store = Store(project / "cache")
    codes = []

    def builder():
        for _ in range(2):
            codes.append(run_build(Path("config.yaml"), store, echo=lambda s: None))

    def collector():
        for _ in range(4):
            collect_garbage(store, keep_last=1, keep_within_days=0)

    threads = [threading.Thread(target=builder), threading.Thread(target=collector)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [0, 0]
    problems = subprocess.run([sys.executable, "-m", "evsys_build.cli", "verify", "--cache-dir", "cache"], cwd=project, capture_output=True, text=True)
    assert problems.returncode == 0, problems.stdout
    latest = runs(project)[-1]
    assert all(store.complete_manifest(n["key"]) is not None for n in latest["arms"]["default"]["nodes"].values())
    json.loads((project / "cache" / "refs" / EXPERIMENT / "default.json").read_text())


def test_a_killed_run_is_kept_until_a_later_complete_build_concludes_its_arm():
    """A killed build never records its nodes; until a later complete build of the same arm
    finishes (having resumed from them), gc keeps the killed run whatever the policy. Another
    arm's build, a partial (--target) build and an interrupted one do not conclude it, and an
    interrupted or failed run is pending the same way (the next build resumes from it)."""
    from evsys_build.gc import pending_resumes

    def run(experiment, id_, status, arms=("default",), partial=False):
        return {"experiment": experiment, "id": id_, "status": status, "arms": {a: {} for a in arms}, **({"partial": True} if partial else {})}

    runs = [
        run("a", "1", "completed"), run("a", "2", "running"),  # killed last: pending
        run("b", "1", "running"), run("b", "2", "completed"),  # concluded by a later build
        run("c", "1", "running"), run("c", "2", "running"),
        run("d", "1", "running", arms=("x", "y")), run("d", "2", "completed", arms=("x",)),  # y still pending
        run("e", "1", "running"), run("e", "2", "completed", partial=True), run("e", "3", "interrupted"),
        run("f", "1", "failed"), run("f", "2", "interrupted"), run("f", "3", "completed"),  # both concluded
    ]
    assert pending_resumes(runs) == {("a", "2"), ("c", "1"), ("c", "2"), ("d", "1"), ("e", "1"), ("e", "3")}


def test_a_stopped_training_is_kept_until_it_is_built_whichever_config_of_its_arm_builds_next(tmp_path):
    """Config B's training is killed after storing checkpoints; a complete build of config A (same
    experiment, same arm name, another training) does not conclude it, even when B was resumed
    and killed again before storing a new checkpoint: gc keeps B's checkpoints under the tightest
    policy until B's training is built."""
    from types import SimpleNamespace

    from evsys_build.runs import record_producer, start_run

    store = Store(tmp_path / "store")
    project = SimpleNamespace(experiment="e", describe_run=dict)
    train_b = "b0" * 16

    def checkpoint(step: int, producer: str) -> str:
        key = f"{step:02x}" * 16
        store.write_manifest(key, {"rule": "checkpoint", "name": f"checkpoint@{step}", "inputs": [{"label": "producer", "key": producer, "name": "train"}],
                                   "outputs": {"weights": {"blob": store.put_bytes(f"weights {step}".encode())}}})
        return key

    b = start_run(store, project, ["default"])  # B, killed after two checkpoints
    record_producer(store, b, SimpleNamespace(key=train_b), {})
    stored = [checkpoint(4, train_b), checkpoint(8, train_b)]
    time.sleep(1.1)  # run records start to the second
    a = start_run(store, project, ["default"])  # A: complete (a cached build of another config)
    store.write_run({**a, "status": "completed", "arms": {"default": {"nodes": {}}}})
    time.sleep(1.1)
    again = start_run(store, project, ["default"])  # B again: resumed from checkpoint@8, killed before checkpoint@12
    record_producer(store, again, SimpleNamespace(key=train_b), {})
    collect_garbage(store, keep_last=1, keep_within_days=0)
    assert all(store.complete_manifest(key) is not None for key in stored)
    store.write_manifest(train_b, {"rule": "train", "name": "train", "outputs": {}})  # B's training finished: concluded
    b = start_run(store, project, ["default"])
    store.write_run({**b, "status": "completed", "arms": {"default": {"nodes": {}}}})
    collect_garbage(store, keep_last=1, keep_within_days=0)
    assert all(store.complete_manifest(key) is None for key in stored)


@pytest.mark.parametrize("status", ["running", "interrupted"])
def test_a_stopped_training_overlapped_by_another_build_keeps_its_checkpoints_and_its_data(tmp_path, status):
    """Run B starts training on data an older run A built; run C (another config of the same
    experiment, on other data) starts while B trains and completes; B stores checkpoints after C
    started, then is killed (its record says running) or interrupted. Under the tightest policy gc
    keeps B's checkpoints and the data B's training read (A's nodes, which B's record does not
    name), so the next build resumes B's training from its newest checkpoint, on cached data."""
    from types import SimpleNamespace

    from evsys_build.runs import finish_record, record_producer, start_run

    store = Store(tmp_path / "store")
    project = SimpleNamespace(experiment="e", describe_run=dict)

    def node(key: str, rule: str, inputs=()) -> dict:
        return store.write_manifest(key, {"key": key, "rule": rule, "name": rule, "inputs": [{"label": label, "key": k, "name": label} for label, k in inputs],
                                          "outputs": {"data": {"blob": store.put_bytes(f"{rule} {key}".encode())}}})

    a = start_run(store, project, ["default"])
    data = [node("a1" * 16, "source"), node("a2" * 16, "tokenize", [("rows", "a1" * 16)])]
    store.write_run({**a, "status": "completed", "finished": a["started"], "arms": {"default": {"nodes": {m["rule"]: {"key": m["key"]} for m in data}}}})
    time.sleep(2.1)  # run records start to the second, and gc allows a second either side
    b = start_run(store, project, ["default"])
    train_b = "b0" * 16
    record_producer(store, b, SimpleNamespace(key=train_b), {"tokenized": data[1]})
    time.sleep(1.1)
    c = start_run(store, project, ["default"])  # a cached build of another config, on its own data
    other = node("c1" * 16, "source")
    store.write_run({**c, "status": "completed", "finished": c["started"], "arms": {"default": {"nodes": {"source": {"key": other["key"]}}}}})
    time.sleep(2.1)
    checkpoints = [node(f"{step:02x}" * 16, "checkpoint", [("producer", train_b)])["key"] for step in (3, 6)]
    if status == "interrupted":
        finish_record(store, {**b, "arms": {"default": {"nodes": {}}}}, "interrupted")
    collect_garbage(store, keep_last=0, keep_within_days=0)
    assert all(store.complete_manifest(key) is not None for key in checkpoints)
    assert all(store.complete_manifest(m["key"]) is not None for m in data)
    store.write_manifest(train_b, {"key": train_b, "rule": "train", "name": "train", "inputs": [{"label": "tokenized", "key": data[1]["key"]}], "outputs": {}})
    done = start_run(store, project, ["default"])  # B's training resumed and finished: concluded
    finish_record(store, {**done, "arms": {"default": {"nodes": {}}}}, "completed")
    collect_garbage(store, keep_last=0, keep_within_days=0)
    assert all(store.complete_manifest(key) is None for key in checkpoints + [m["key"] for m in data])


def test_an_abandoned_stopped_training_is_kept_until_keep_stopped_within_says_to_stop_waiting(tmp_path):
    """A stopped training nobody builds again is kept whatever the policy, for ever by default;
    `--keep-stopped-within` bounds the wait: past it, the run falls under keep-last/keep-within."""
    from types import SimpleNamespace

    from evsys_build.runs import start_run

    store = Store(tmp_path / "store")
    project = SimpleNamespace(experiment="e", describe_run=dict)
    start_run(store, project, ["default"])  # killed after a checkpoint of a training never built since
    key = "04" * 16
    store.write_manifest(key, {"rule": "checkpoint", "name": "checkpoint@4", "inputs": [{"label": "producer", "key": "b0" * 16, "name": "train"}],
                               "outputs": {"weights": {"blob": store.put_bytes(b"weights 4")}}})
    later = time.time() + 400 * 86400
    collect_garbage(store, keep_last=0, keep_within_days=0, now=later)
    assert store.complete_manifest(key) is not None  # a year on: still waiting for its resume
    collect_garbage(store, keep_last=0, keep_within_days=0, now=time.time() + 86400, keep_stopped_within_days=30)
    assert store.complete_manifest(key) is not None  # one day on: within the 30 days
    proc = evsys("gc", "--keep-last", "0", "--keep-within", "0d", "--keep-stopped-within", "0d", "--cache-dir", str(store.root), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "removed 1 runs, 1 nodes" in proc.stdout and store.complete_manifest(key) is None
    bad = evsys("gc", "--keep-stopped-within", "a month", "--cache-dir", str(store.root), cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip() == "evsys: error: --keep-stopped-within 'a month': give a number and a unit, e.g. 14d, 36h or 2w"


@pytest.mark.parametrize("status", ["running", "interrupted", "failed"])
def test_gc_keeps_the_chunks_a_killed_interrupted_or_failed_build_finished(tmp_path, status):
    """A stopped build's finished chunks are memoised but no manifest names them: gc keeps the
    memos and their objects for the build that resumes, whatever the policy (a killed build's
    record still says running; Ctrl-C records it interrupted, a row error failed)."""
    from types import SimpleNamespace

    from evsys_build.chunks import map_chunks
    from evsys_build.runs import start_run

    store = Store(tmp_path / "store")
    run = start_run(store, SimpleNamespace(experiment="e", describe_run=dict), ["default"])
    store.write_run({**run, "status": status})
    chunks = [{"blob": store.put_bytes(f"{i}\n".encode()), "rows": 1} for i in range(6)]

    def double(chunk: dict) -> dict:
        return {"blob": store.put_bytes(store.get_bytes(chunk["blob"]) * 2), "rows": 1}

    first, _ = map_chunks(store, chunks, {"rule": "t"}, double)
    report = collect_garbage(store, keep_last=0, keep_within_days=0)
    assert report.removed_memos == 0
    again, stats = map_chunks(store, chunks, {"rule": "t"}, double)
    assert stats == {"chunks_ran": 0, "chunks_cached": 6} and again == first


def test_gc_beside_a_running_build_on_a_shared_store_keeps_what_it_reuses(tmp_path):
    """On a shared (S3) store gc runs beside builds; entries written after its cutoff stay. A
    running build's new manifest may name an old object (the same bytes stored again: create-only
    keeps the old one), and a node it serves from cache is recorded only when it ends: neither
    may go."""
    from evsys_build.gc import _collect

    store = Store(tmp_path / "store")
    reused_object = store.put_bytes(b"the same bytes, stored long ago")
    old_node = "cd" * 16
    store.write_manifest(old_node, {"rule": "checkpoint", "name": "checkpoint@2", "outputs": {"weights": {"blob": store.put_bytes(b"w")}}})
    store.write_run({"experiment": "e", "id": "1", "status": "completed", "started": "2020-01-01T00:00:00+00:00",
                     "arms": {"default": {"nodes": {"checkpoint@2": {"key": old_node}}}}})  # expired by the policy below
    time.sleep(0.05)
    cutoff = time.time()
    time.sleep(0.05)
    store.write_run({"experiment": "e", "id": "2", "status": "running", "started": "2030-01-01T00:00:00+00:00", "arms": {"arm_b": {}}})
    new_node = "ab" * 16
    store.write_manifest(new_node, {"rule": "tokenize", "name": "tokenize", "outputs": {"tokens": {"blob": reused_object}}})
    report = _collect(store, keep_last=0, keep_within_days=0, dry_run=False, now=time.time(), cutoff=cutoff)
    assert store.complete_manifest(new_node) is not None  # its old object was kept
    assert store.complete_manifest(old_node) is not None  # the running build of "e" may be serving it
    assert report.removed_runs == [{"experiment": "e", "id": "1", "status": "completed", "started": "2020-01-01T00:00:00+00:00"}]


def test_gc_names_the_service_checkpoints_only_removed_nodes_named_and_leaves_them(tmp_path):
    """A Tinker checkpoint node names tinker:// paths. gc never deletes them (another store may
    hold a copy of the node), but it lists those that only removed nodes named, so the service's
    storage does not grow unseen; a path a kept node still names is not listed."""
    store = Store(tmp_path / "store")
    service = {"backend": "tinker", "base_url": "http://tinker.example:8000"}

    def checkpoint(key: str, refs: dict) -> str:
        store.write_manifest(key, {"rule": "checkpoint", "name": "checkpoint@2", "outputs": {"weights": {"blob": store.put_bytes(key.encode())}},
                                   "attachments": {"remote": {"refs": refs, "service": service}}})
        return key

    old = checkpoint("aa" * 16, {"state": "tinker://run-1/weights/000002", "sampler": "tinker://run-1/sampler_weights/000002",
                                 "base": "tinker://shared/weights/base"})
    new = checkpoint("bb" * 16, {"state": "tinker://run-2/weights/000002", "base": "tinker://shared/weights/base"})
    for id_, key, started in (("1", old, "2020-01-01T00:00:00+00:00"), ("2", new, "2020-01-02T00:00:00+00:00")):
        store.write_run({"experiment": "e", "id": id_, "status": "completed", "started": started,
                         "arms": {"default": {"nodes": {"checkpoint@2": {"key": key}}}}})
    listed = ["    tinker://run-1/sampler_weights/000002", "    tinker://run-1/weights/000002"]
    for args in (["--dry-run"], []):
        out = ok(evsys("gc", "--keep-last", "1", "--keep-within", "0d", "--cache-dir", str(tmp_path / "store"), *args, cwd=tmp_path)).stdout.splitlines()
        at = next(i for i, line in enumerate(out) if line.startswith("tinker http://tinker.example:8000: 2 checkpoints named only by nodes gc"))
        assert "free them with `tinker checkpoint delete PATH...`" in out[at] and out[at + 1:at + 3] == listed, out
    assert store.complete_manifest(old) is None and store.complete_manifest(new) is not None
    assert "tinker://" not in ok(evsys("gc", "--cache-dir", str(tmp_path / "store"), cwd=tmp_path)).stdout  # nothing removed: nothing listed


def test_push_of_an_earlier_config_sends_the_run_that_names_its_nodes(variants, tmp_path):
    """The store's newest run of the arm is the max_steps 2 variant's. Pushing the max_steps 1
    config sends the run that built it, so the remote's gc keeps what was pushed and its ref
    names this config's nodes, not the other variant's."""
    project = variants
    first, second = runs(project)
    edit_config(project, "max_steps: 2", "max_steps: 1")
    remote = str(tmp_path / "remote")
    ok(evsys("push", "config.yaml", "--remote", remote, "--cache-dir", "cache", cwd=project))
    dest = Store(remote)
    assert [r["id"] for r in dest.iter_runs()] == [first["id"]]
    assert dest.read_ref(EXPERIMENT, "default")["run"] == first["id"]
    dry = ok(evsys("gc", "--dry-run", "--keep-last", "1", "--keep-within", "0d", "--cache-dir", remote, cwd=project)).stdout
    assert "would remove 0 runs, 0 nodes" in dry, dry
    plan = ok(evsys("plan", "config.yaml", "--cache-dir", remote, cwd=project)).stdout
    assert "0 to run" in plan, plan


def test_a_failed_build_keeps_the_refs_last_good_entries(variants):
    """A build that fails at tokenize records no key for what it never reached. The arm's ref
    keeps the previous build's entries there (plan's reasons diff against them) and keeps naming
    the last complete run, so gc keeps that run's training however many failures follow."""
    project = variants
    first, second = runs(project)
    store = Store(project / "cache")
    before = store.read_ref(EXPERIMENT, "default")
    (project / "data" / "train.jsonl").write_text((project / "data" / "train.jsonl").read_text() + '{"query": "<|im_end|>", "tool_slug": "x"}\n')
    failed = evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project)
    assert failed.returncode != 0 and runs(project)[-1]["status"] == "failed", failed.stderr
    after = store.read_ref(EXPERIMENT, "default")
    assert after["run"] == second["id"]
    assert after["nodes"]["train"] == before["nodes"]["train"] and all(e["key"] for e in after["nodes"].values())
    assert after["nodes"]["source"]["key"] != before["nodes"]["source"]["key"]  # what it did build moves on
    ok(evsys("gc", "--keep-last", "1", "--keep-within", "0d", "--cache-dir", "cache", cwd=project))
    assert store.complete_manifest(train_key(second)) is not None


def test_a_build_started_while_gc_runs_says_it_waits_then_builds(tmp_path, tiny_model_dir):
    """gc holds the store's lock exclusively; a build started meanwhile waits for it, and says so."""
    import fcntl

    project = make_project(tmp_path / "p", tool_rows(8), BASE_CONFIG)
    lock = project / "cache" / "locks" / "store.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # as a running gc holds it
        env = {k: v for k, v in os.environ.items() if k != "EVSYS_CACHE"}
        proc = subprocess.Popen([sys.executable, "-m", "evsys_build.cli", "build", "config.yaml", "--cache-dir", "cache"],
                                cwd=project, env=dict(env, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        while line and "waiting" not in line:
            line = proc.stdout.readline()
        assert line.strip() == "evsys: waiting for a gc of this store to finish...", proc.stderr.read()
        assert proc.poll() is None  # still waiting
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "train" in ran_names(line + out)
