"""Ctrl-C, SIGTERM and SIGHUP sent to a real `evsys build` process: it stops within seconds, keeps what it
finished (training saves the step it was on), exits 130 with one line saying how to resume, and
the next build resumes to the same bytes an uninterrupted build produces."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evsys_build.store import Store
from evsys_testkit import evsys, make_project, ok, tool_rows

CONFIG = """\
experiment: {name: interrupts}
output_dir: out
data: {source_kind: jsonl, path: data/train.jsonl}
transforms:
  - kind: jsonl_to_chat
    params: {user_template: "{query}", assistant_template: "<answer>{tool_slug}</answer>"}
model: {name: evsys/tiny-qwen3}
backend: {kind: local}
algorithm:
  kind: sft
  params: {learning_rate: 1.0e-3, max_steps: 32, batch_size: 8, lora_rank: 2, save_every: 16}
callbacks:
  - {kind: local_logger, params: {print_every: 1}}
"""


def start_build(project: Path, cache: str = "cache") -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "EVSYS_CACHE"}
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.Popen(
        [sys.executable, "-m", "evsys_build.cli", "build", "config.yaml", "--cache-dir", cache],
        cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for_step(proc: subprocess.Popen, step: int, seen: list[str]) -> None:
    deadline = time.time() + 240
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if f"] step {step}:" in line:
            return
    raise AssertionError("training never reached step %d:\n%s" % (step, "".join(seen)))


def final_weights(cache: Path) -> dict:
    store = Store(cache)
    train = store.read_manifest(store.read_ref("interrupts", "default")["nodes"]["train"]["key"])
    return store.read_manifest(train["outputs"]["checkpoint-final"])["outputs"]["weights"]["blobs"]


def train_outcome(cache: Path) -> tuple[str, str]:
    """The train node's output digest and the report's key (made from it)."""
    store = Store(cache)
    nodes = store.read_ref("interrupts", "default")["nodes"]
    return store.read_manifest(nodes["train"]["key"])["output_digest"], nodes["report"]["key"]


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def checkpoint_steps(cache: Path) -> list[int]:
    steps = []
    for f in (cache / "nodes").glob("*/*.json"):
        m = json.loads(f.read_text())
        if m["rule"] == "checkpoint":
            steps.append(m["params"]["step"])
    return sorted(steps)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir) -> Path:
    project = make_project(tmp_path_factory.mktemp("fresh") / "p", tool_rows(48), CONFIG)
    ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project))
    return project


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_training_saves_the_step_and_the_rebuild_resumes_to_the_same_bytes(tmp_path, uninterrupted, sig):
    project = make_project(tmp_path / "p", tool_rows(48), CONFIG)
    proc = start_build(project)
    wait_for_step(proc, 7, [])
    sent = time.time()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert time.time() - sent < 20, "the build took too long to stop"
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Segmentation" not in err
    final = [line for line in err.splitlines() if line.startswith("evsys: interrupted")]
    assert len(final) == 1 and "evsys build config.yaml --cache-dir cache" in final[0] and "to resume" in final[0]
    steps = checkpoint_steps(project / "cache")
    assert steps and 7 <= max(steps) < 16, f"expected the interrupted step saved, got {steps}"
    assert "run dir:" not in out  # the run dir is written only by a finished build

    runs = list(Store(project / "cache").iter_runs("interrupts"))
    assert [r["status"] for r in runs] == ["interrupted"]

    # resumed after SIGTERM under another CPU thread count: the count moves float results and is
    # not keyed, so the resume runs on with the count the checkpoint's steps ran with
    threads = int(os.environ.get("OMP_NUM_THREADS") or torch_threads())
    other = {"OMP_NUM_THREADS": "2" if threads == 1 else "1"} if sig == signal.SIGTERM else {}
    again = ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project, env=other)).stdout
    assert f"resuming train from checkpoint@{max(steps)}" in again
    if other:
        assert f"resuming with {threads} CPU threads, as the checkpoint's steps ran (this process had {other['OMP_NUM_THREADS']})" in again
    assert final_weights(project / "cache") == final_weights(uninterrupted / "cache")  # bitwise, on CPU
    assert train_outcome(project / "cache") == train_outcome(uninterrupted / "cache")  # wall-clock timings are attached, not content
    run_dir = project / again.split("run dir: ", 1)[1].split()[0]
    train_rows = [row for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if row.get("split") == "train"]
    assert len(train_rows) == 32 and all(row["metrics"]["tokens_per_s"] > 0 for row in train_rows)  # shown all the same


def test_a_reader_that_leaves_never_fails_the_training_and_a_hangup_saves_its_step(tmp_path, tiny_model_dir):
    """`evsys build | head` (the pipe closes) and a closed terminal or dropped ssh (the output goes
    away, SIGHUP arrives): printing a progress line must not fail the training; the hang-up stops
    it as Ctrl-C does, with the step it was on saved."""
    project = make_project(tmp_path / "p", tool_rows(48), CONFIG)
    proc = start_build(project, "piped")
    wait_for_step(proc, 3, [])
    proc.stdout.close()  # the reader left
    err = proc.stderr.read()
    assert proc.wait(timeout=240) == 0, err
    assert "Traceback" not in err
    assert [r["status"] for r in Store(project / "piped").iter_runs("interrupts")] == ["completed"]
    assert max(checkpoint_steps(project / "piped")) == 32

    proc = start_build(project, "hungup")
    wait_for_step(proc, 5, [])
    proc.stdout.close()
    proc.send_signal(signal.SIGHUP)
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, err
    assert "Traceback" not in err
    steps = checkpoint_steps(project / "hungup")
    assert steps and 5 <= max(steps) < 16, f"expected the step it was on saved, got {steps}"
    assert [r["status"] for r in Store(project / "hungup").iter_runs("interrupts")] == ["interrupted"]


def test_a_build_started_with_its_output_closed_runs_quietly(tmp_path):
    """`evsys build ... >&- 2>&-` (a daemon, a cron job): Python has no sys.stdout then; the
    stream guard must leave that as it is, not fail on the first line printed."""
    from evsys_build.streams import outliving_readers

    script = "import sys\nfrom evsys_build.streams import outliving_readers\nwith outliving_readers():\n    print('x')\n"
    proc = subprocess.run(f"{sys.executable} -c \"$SCRIPT\" >&-; echo rc=$?", shell=True, env={**os.environ, "SCRIPT": script}, capture_output=True, text=True)
    assert proc.stdout.strip() == "rc=0", proc.stderr
    saved = sys.stdout
    with outliving_readers():
        assert sys.stdout is not saved and sys.stdout.encoding == saved.encoding
    assert sys.stdout is saved


def test_a_second_ctrl_c_exits_at_once_without_a_crash(tmp_path, tiny_model_dir):
    project = make_project(tmp_path / "p", tool_rows(48), CONFIG)
    proc = start_build(project)
    wait_for_step(proc, 3, [])
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert time.time() - sent < 5
    assert proc.returncode == 130, (proc.returncode, err)
    assert "Traceback" not in err and "terminate called" not in err and "Segmentation" not in err
    assert "interrupted again; exiting now (what finished is stored" in err


@pytest.mark.parametrize("command,sig", [("build", signal.SIGINT), ("plan", signal.SIGINT), ("build", signal.SIGTERM), ("build", signal.SIGHUP)])
def test_ctrl_c_while_the_config_is_still_loading_exits_130_with_one_line(tmp_path, command, sig):
    """Before a build installs its own handlers (imports, plugins, compile), Ctrl-C is still an
    interruption (130), not click's "Aborted!" (1, which means a node failed); SIGTERM and SIGHUP
    too, rather than a silent death by signal."""
    project = make_project(tmp_path / "p", tool_rows(8), CONFIG.replace("output_dir: out\n", "output_dir: out\nplugins: [slow.py]\n"))
    (project / "slow.py").write_text("import pathlib, time\npathlib.Path('loading').write_text('x')\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-m", "evsys_build.cli", command, "config.yaml", "--cache-dir", "cache"],
                            cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (project / "loading").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert err.strip().splitlines()[-1] == "evsys: interrupted" and "Aborted" not in err and "Traceback" not in err, err


def test_eval_rounds_are_sized_so_a_stop_is_seen_within_seconds_whatever_the_pace():
    """An eval sees a stop, and memoises what it sampled, between rounds of tasks: a round is
    sized from the last one's pace to last about ROUND_SECONDS (a slow model samples few tasks
    per round, a fast one up to MAX_ROUND), never zero."""
    from evsys_rules.nodes.eval import MAX_ROUND, ROUND_SECONDS, next_round

    assert next_round(64, 64 * ROUND_SECONDS) == 1  # a task a round when one takes the whole budget
    assert next_round(64, 640 * ROUND_SECONDS) == 1
    assert next_round(64, 4 * ROUND_SECONDS) == 16
    assert next_round(64, ROUND_SECONDS / 100) == MAX_ROUND and next_round(64, 0.0) == MAX_ROUND


def test_a_build_started_with_sigint_ignored_leaves_it_ignored_and_still_stops_on_sigterm():
    """A script's background job (`evsys build ... &`) starts with SIGINT ignored, so that a Ctrl-C
    in the terminal is not meant for it: the build keeps it ignored; SIGTERM still stops it."""
    import threading

    from evsys_build import interrupts

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        stop = threading.Event()
        with interrupts.stop_on_signals(stop):
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            assert not stop.is_set()
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert stop.is_set()
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
