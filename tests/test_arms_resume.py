"""Arms share what they have in common; a killed training resumes from its newest checkpoint."""

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
from evsys_testkit import evsys, make_project, ok, ran_names, tool_rows

BASE = """\
experiment:
  name: arms_resume
  hypothesis: "rank matters"
output_dir: out
seed: 0
data:
  source_kind: jsonl
  path: data/train.jsonl
transforms:
  - kind: jsonl_to_chat
    params:
      user_template: "{query}"
      assistant_template: "<answer>{tool_slug}</answer>"
model:
  name: evsys/tiny-qwen3
backend:
  kind: local
algorithm:
  kind: sft
  params:
    learning_rate: 1.0e-3
    max_steps: MAX_STEPS
    batch_size: 4
    lora_rank: 2
    save_every: SAVE_EVERY
"""

ARMS = """\
arms:
  - {name: r1, set: {algorithm.params.lora_rank: 1}}
  - {name: r4, set: {algorithm.params.lora_rank: 4}}
"""


def config(max_steps: int, save_every: int = 0, extra: str = "") -> str:
    return BASE.replace("MAX_STEPS", str(max_steps)).replace("SAVE_EVERY", str(save_every)) + extra


def test_arms_share_tokenization_and_conclude(tmp_path, tiny_model_dir):
    project = make_project(tmp_path / "p", tool_rows(24), config(2, extra=ARMS))
    plan = json.loads(ok(evsys("plan", "config.yaml", "--json", "--cache-dir", "cache", cwd=project)).stdout)["nodes"]
    by_name: dict[str, list] = {}
    for n in plan:
        by_name.setdefault(n["name"], []).append(n)
    assert len(by_name["tokenize"]) == 1 and by_name["tokenize"][0]["arms"] == ["r1", "r4"]
    assert len(by_name["train"]) == 2
    out = ok(evsys("build", "config.yaml", "--cache-dir", "cache", "--arm", "r1", cwd=project)).stdout
    assert sum(line.startswith("ran ") and "train" in line for line in out.splitlines()) == 1
    out = ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project)).stdout
    assert "ran     [r4] train" in out and "cached  [r1,r4] tokenize" in out
    experiment = (project / "out" / "arms_resume" / "experiment.md").read_text()
    assert "2/2 arms completed." in experiment and "algorithm.params.lora_rank=4" in experiment
    for arm in ("r1", "r4"):
        assert (project / "out" / "arms_resume" / arm / "metrics.jsonl").is_file()
    proc = evsys("build", "config.yaml", "--cache-dir", "cache", "--arm", "nope", cwd=project)
    assert proc.returncode == 2 and "no such arm" in proc.stderr


def _checkpoint_steps(cache: Path) -> list[int]:
    steps = []
    for f in (cache / "nodes").glob("*/*.json") if (cache / "nodes").exists() else []:
        try:
            m = json.loads(f.read_text())
        except (json.JSONDecodeError, OSError):
            continue
        if m.get("rule") == "checkpoint":
            steps.append(m["params"]["step"])
    return sorted(steps)


def _history(cache: Path) -> tuple[list[dict], dict]:
    store = Store(cache)
    ref = store.read_ref("arms_resume", "default")["nodes"]
    train = store.read_manifest(ref["train"]["key"])
    history = json.loads(store.get_bytes(train["outputs"]["history"]["blob"]))
    final = store.read_manifest(train["outputs"]["checkpoint-final"])
    strip = ("tokens_per_s", "step_time_s")
    return [{k: v for k, v in m.items() if k not in strip} for m in history], final["outputs"]["weights"]["blobs"]


def test_killed_training_resumes_from_newest_checkpoint(tmp_path, tiny_model_dir):
    max_steps = 8
    project = make_project(tmp_path / "p", tool_rows(40), config(max_steps, save_every=1))
    env = dict(os.environ)
    env.pop("EVSYS_CACHE", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "evsys_build.cli", "build", "config.yaml", "--cache-dir", "cache"],
        cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and len(_checkpoint_steps(project / "cache")) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stored = _checkpoint_steps(project / "cache")
    assert 3 <= len(stored) < max_steps, f"kill came too late or too early: {stored}"
    # the killed run's record names no nodes (they are recorded when a build ends); gc, even with
    # the tightest policy, must keep what the next build resumes from
    assert " killed " in ok(evsys("runs", "--cache-dir", "cache", cwd=project)).stdout
    ok(evsys("gc", "--keep-last", "0", "--keep-within", "0d", "--cache-dir", "cache", cwd=project))
    assert _checkpoint_steps(project / "cache") == stored
    planned = ok(evsys("plan", "config.yaml", "--cache-dir", "cache", cwd=project)).stdout
    assert f"resuming after step {max(stored)}" in planned  # plan finds the same newest checkpoint
    out = ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project)).stdout
    assert f"resuming train from checkpoint@{max(stored)}" in out
    saved = [line.split()[1] for line in out.splitlines() if line.startswith("saved ")]
    assert saved == [f"checkpoint@{s}" for s in range(max(stored) + 1, max_steps + 1)]  # only the missing steps ran

    fresh = make_project(tmp_path / "fresh", tool_rows(40), config(max_steps, save_every=1))
    ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=fresh))
    history_resumed, weights_resumed = _history(project / "cache")
    history_fresh, weights_fresh = _history(fresh / "cache")
    assert history_resumed == history_fresh  # same losses, lr, token counts at every step
    assert weights_resumed == weights_fresh  # content-addressed: bitwise-equal final weights


def test_cached_rebuild_runs_no_training_step(project_copy):
    out = ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project_copy)).stdout
    assert ran_names(out) == set()
    assert "train_mean_nll=" not in out


def test_arms_sharing_a_train_node_store_every_arms_checkpoints(tmp_path, tiny_model_dir):
    """Arms that differ only in evaluation share one training; it saves what each arm's evals need."""
    project = make_project(tmp_path / "p", tool_rows(16), config(2))
    tasks = [{"task_id": f"t{i}", "instruction": f"query {i}", "verifier": {"kind": "in_process", "fn_name": "contains", "expected": "x"}} for i in range(2)]
    (project / "val").mkdir()
    (project / "val" / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    extra = (
        "metadata:\n  benchmark:\n    - {name: val, path: val, max_tokens: 4}\n"
        "arms:\n  - {name: every1, set: {metadata.benchmark.0.run_every: 1}}\n"
        "  - {name: final_only, set: {metadata.benchmark.0.max_tokens: 3}}\n"
    )
    (project / "config.yaml").write_text(config(2, extra=extra))
    out = ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project)).stdout
    assert sum(line.startswith("ran ") and "] train  " in line for line in out.splitlines()) == 1  # trained once
    assert "saved   [every1] checkpoint@1" in out
    again = ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project)).stdout
    assert ran_names(again) == set()
    # every arm records every node it uses, with its key (the shared ones too)
    run = list(Store(project / "cache").iter_runs("arms_resume"))[0]  # the build that trained
    for arm in ("every1", "final_only"):
        nodes = run["arms"][arm]["nodes"]
        assert "checkpoint@2" in nodes and all(entry["key"] for entry in nodes.values()), (arm, nodes)
    diff = ok(evsys("diff", "config.yaml@every1", "config.yaml@final_only", "--cache-dir", "cache", cwd=project)).stdout
    assert "shared (source, transform[0] jsonl_to_chat, tokenize, train, checkpoint@2)" in diff, diff
    assert "only in A: checkpoint@1, eval val@1" in diff and "only in B" not in diff and "?" not in diff, diff
    # the arm that shares the training builds alone, on a fresh store
    alone = ok(evsys("build", "config.yaml", "--cache-dir", "cache2", "--arm", "final_only", cwd=project)).stdout
    assert "] eval val@2" in alone and "checkpoint@1" not in alone


@pytest.mark.parametrize("probe", [None, 5])
def test_checkpoint_keys_computed_in_bulk_are_the_checkpoint_nodes_keys(monkeypatch, probe):
    """Resume looks for a checkpoint at every step below the first missing one: their keys come
    from one canonical text with each step put in, and must be exactly the nodes' own (else a
    stored checkpoint is never found again). A probe whose digits occur twice builds each node."""
    import evsys_rules.nodes.train as train_rule
    from evsys_build.graph import Node

    train = Node("train", "train", "1", {"learning_rate": 0.01, "max_steps": 250})
    train.key = "5" * 32
    if probe is not None:
        monkeypatch.setattr(train_rule, "_STEP_PROBE", probe)
    steps = [249, 50, 10, 9, 5, 1, 10**9]
    keys = train_rule.checkpoint_keys(train, steps)
    assert list(keys) == steps
    assert keys == {step: train_rule.checkpoint_node(train, step).key for step in steps}
    assert len(set(keys.values())) == len(steps)
