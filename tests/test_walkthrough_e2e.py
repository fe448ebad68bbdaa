"""The walkthrough end to end through the real CLI: train, in-loop eval, run dir, caching of evals.

One small build (the example data, a few steps, a 16-task val benchmark) is shared; tests that
change something work on a copy of it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evsys_build.store import Store
from evsys_testkit import copy_project, edit_config, evsys, ok, plan_json, ran_names

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_DATA = REPO / "examples" / "sft_walkthrough" / "data"
VAL_TASKS = 16

CONFIG = """\
experiment:
  name: e2e
  hypothesis: "a few SFT steps move val pass@1"
run_name: e2e_run
output_dir: outputs
seed: 0
data:
  source_kind: jsonl
  path: data/train.jsonl
transforms:
  - kind: jsonl_to_chat
    params:
      system_prompt: "You select the single best tool for the user's query."
      user_template: "Query: {query}\\nReply with the tool slug inside <answer></answer>."
      assistant_template: "<answer>{tool_slug}</answer>"
model:
  name: evsys/tiny-qwen3
backend:
  kind: local
algorithm:
  kind: sft
  params:
    learning_rate: 3.0e-3
    max_steps: 4
    batch_size: 8
    lora_rank: 0
    supervise: all_assistant
metadata:
  benchmark:
    - name: val
      path: data/val
      run_every: 2
      metrics: [pass@1]
      split: val
      max_tokens: 16
callbacks:
  - kind: local_logger
    params:
      print_every: 1
"""


def build(project: Path, *extra: str) -> str:
    return ok(evsys("build", "config.yaml", "--cache-dir", "cache", *extra, cwd=project, timeout=600)).stdout


def run_dir(project: Path) -> Path:
    return project / "outputs" / "e2e_run"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_dir) -> Path:
    project = tmp_path_factory.mktemp("e2e") / "project"
    (project / "data" / "val").mkdir(parents=True)
    shutil.copy(EXAMPLE_DATA / "train.jsonl", project / "data" / "train.jsonl")
    tasks = (EXAMPLE_DATA / "val" / "tasks.jsonl").read_text().splitlines()
    (project / "data" / "val" / "tasks.jsonl").write_text("\n".join(tasks[:VAL_TASKS]) + "\n")
    (project / "config.yaml").write_text(CONFIG)
    out = build(project)
    (project / "first-build.txt").write_text(out)
    return project


@pytest.fixture
def project(built, tmp_path) -> Path:
    return copy_project(built, tmp_path / "project")


def test_first_build_trains_evaluates_and_logs(built):
    out = (built / "first-build.txt").read_text()
    assert {"train", "eval val@2", "eval val@4", "report"} <= ran_names(out)
    step_lines = [line for line in out.splitlines() if "step " in line and "train_mean_nll=" in line]
    assert len(step_lines) == 4  # local_logger, print_every: 1
    assert out.rstrip().splitlines()[-1] == "run dir: outputs/e2e_run"


def test_run_dir_files_and_row_format(built):
    rd = run_dir(built)
    rows = read_jsonl(rd / "metrics.jsonl")
    assert all(list(r) == ["step", "split", "metrics"] for r in rows)  # the walkthrough's order: {step, split, metrics}
    assert (rd / "metrics.jsonl").read_text().startswith('{"step": 1, "split": "train", "metrics": {"train_mean_nll": ')
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all({"train_mean_nll", "optim/lr"} <= set(r["metrics"]) for r in train)
    assert [r["step"] for r in val] == [2, 4]
    assert all(set(r["metrics"]) == {"val/val/pass@1"} and 0 <= r["metrics"]["val/val/pass@1"] <= 1 for r in val)
    preds = read_jsonl(rd / "predictions" / "val.jsonl")
    assert len(preds) == 2 * VAL_TASKS
    assert {p["step"] for p in preds} == {2, 4}
    assert all({"task_id", "prediction", "correct", "step"} <= set(p) for p in preds)
    for step in (2, 4):  # the logged score is the fraction of correct predictions at that step
        correct = [p["correct"] for p in preds if p["step"] == step]
        logged = next(r["metrics"]["val/val/pass@1"] for r in val if r["step"] == step)
        assert logged == pytest.approx(sum(correct) / len(correct))
    summary = (rd / "summary.md").read_text()
    assert "Status: completed" in summary and "val/val/pass@1" in summary and "(training.png)" in summary
    assert (rd / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    experiment = (rd / "experiment.md").read_text()
    assert "a few SFT steps move val pass@1" in experiment and "1/1 arms completed." in experiment


def test_training_loss_goes_down(built):
    train = [r for r in read_jsonl(run_dir(built) / "metrics.jsonl") if r["split"] == "train"]
    assert train[-1]["metrics"]["train_mean_nll"] < train[0]["metrics"]["train_mean_nll"]


def test_fully_cached_build_rewrites_an_identical_run_dir(project):
    before = {p.relative_to(run_dir(project)): p.read_bytes() for p in run_dir(project).rglob("*") if p.is_file()}
    shutil.rmtree(run_dir(project))
    out = build(project)
    assert ran_names(out) == set()
    after = {p.relative_to(run_dir(project)): p.read_bytes() for p in run_dir(project).rglob("*") if p.is_file()}
    assert after == before


def test_max_tokens_change_reruns_evaluation_never_training(project):
    edit_config(project, "max_tokens: 16", "max_tokens: 12")
    plan = plan_json(project)
    assert plan["train"]["status"] == "cached" and plan["tokenize"]["status"] == "cached"
    assert plan["eval val@2"]["status"] == "run"
    assert any("max_tokens: 16 → 12" in r for r in plan["eval val@2"]["reasons"])
    ran = ran_names(build(project))
    assert {"eval val@2", "eval val@4"} <= ran <= {"eval val@2", "eval val@4", "report"}  # report: only if predictions changed


def test_adding_tasks_samples_only_the_new_ones(project):
    tasks_file = project / "data" / "val" / "tasks.jsonl"
    extra = (EXAMPLE_DATA / "val" / "tasks.jsonl").read_text().splitlines()[VAL_TASKS : VAL_TASKS + 5]
    tasks_file.write_text(tasks_file.read_text() + "\n".join(extra) + "\n")
    plan = plan_json(project)
    assert plan["train"]["status"] == "cached"
    assert "benchmark val tasks changed" in plan["eval val@4"]["reasons"]
    assert plan["eval val@4"]["cost"]["summary"] == f"5 sampling requests ({VAL_TASKS} of {VAL_TASKS + 5} tasks sampled before), 5 samples, <= 80 new tokens"
    out = build(project)
    assert ran_names(out) == {"eval val@2", "eval val@4", "report"}
    store = Store(project / "cache")
    for name in ("eval val@2", "eval val@4"):
        stats = store.read_manifest(plan[name]["key"])["stats"]
        assert (stats["tasks_sampled"], stats["tasks_cached"]) == (5, VAL_TASKS)


def test_a_verifier_change_scores_the_memoised_completions_again_without_the_ml_stack(project):
    """Each task's verifier changes (another expected text for `contains`):
    the evals rerun, every completion comes from its memo (same checkpoint, prompt and sampling),
    and the build loads neither torch nor transformers (no sampling: nothing to render or decode)."""
    tasks_file = project / "data" / "val" / "tasks.jsonl"
    tasks = read_jsonl(tasks_file)
    for task in tasks:
        task["verifier"]["expected"] = task["verifier"]["expected"].removeprefix("<answer>").removesuffix("</answer>")
    tasks_file.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    proc = ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project, env={"PYTHONPROFILEIMPORTTIME": "1"}))
    assert {"eval val@2", "eval val@4"} <= ran_names(proc.stdout) <= {"eval val@2", "eval val@4", "report"}  # the report when a score moved
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert imported and not imported & {"torch", "transformers"}, sorted(m for m in imported if m.split(".")[0] in ("torch", "transformers"))[:5]
    plan = plan_json(project)
    store = Store(project / "cache")
    for name in ("eval val@2", "eval val@4"):
        stats = store.read_manifest(plan[name]["key"])["stats"]
        assert (stats["tasks_sampled"], stats["tasks_cached"]) == (0, VAL_TASKS)


def test_logging_and_benchmark_label_changes_rerun_no_training(project):
    edit_config(project, "print_every: 1", "print_every: 3")
    edit_config(project, "run_name: e2e_run", "run_name: renamed")
    plan = plan_json(project)
    assert {e["status"] for e in plan.values()} == {"cached"}


@pytest.mark.parametrize(
    "old,new",
    [
        ("learning_rate: 3.0e-3", "learning_rate: 1.0e-3"),
        ("batch_size: 8", "batch_size: 4"),
        ("lora_rank: 0", "lora_rank: 2"),
        ("seed: 0", "seed: 1"),
    ],
)
def test_training_recipe_changes_rerun_training(project, old, new):
    edit_config(project, old, new)
    plan = plan_json(project)
    assert plan["train"]["status"] == "run"
    assert plan["eval val@4"]["status"] == "maybe"  # its key needs the new checkpoint's content
    assert plan["eval val@4"]["reasons"] == ["runs if checkpoint@4 changes"]


def test_show_checkpoint_node(built):
    plan = plan_json(built)
    proc = ok(evsys("show", "node:" + plan["checkpoint@4"]["key"][:10], "--cache-dir", "cache", cwd=built))
    assert "checkpoint step 4 of base model evsys/tiny-qwen3" in proc.stdout
    assert "full fine-tune" in proc.stdout and "trainable params" in proc.stdout
    assert "train_mean_nll=" in proc.stdout
    proc = ok(evsys("show", "node:" + plan["eval val@4"]["key"][:10], "--cache-dir", "cache", "--rows", "2", cwd=built))
    assert "eval val at step 4" in proc.stdout and "val_0" in proc.stdout


def test_python_api_and_run_py(project):
    script = (
        "from evsys_sdk import Experiment\n"
        "r = Experiment('config.yaml', cache_dir='cache').run()\n"
        "print('STATUS', r.status); print('ARTIFACTS', sorted(r.artifacts)); print('CONCLUSION', r.conclusion)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=project, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "STATUS completed" in proc.stdout
    assert "'checkpoint-final'" in proc.stdout and "'run_dir'" in proc.stdout and "'state-final'" in proc.stdout
    assert "CONCLUSION 1/1 arms completed." in proc.stdout
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "sft_walkthrough" / "run.py"), str(project / "config.yaml")],
        cwd=project, capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "EVSYS_CACHE": "cache"},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "Status:     completed" in lines
    assert any(line.startswith("Artifacts:  ['run_dir', 'checkpoint-final', 'state-final'") for line in lines)
    assert "Conclusion: 1/1 arms completed." in lines
    assert any(line.startswith("Logs:       ") and "metrics.jsonl, predictions/, summary.md, experiment.md" in line for line in lines)


def test_pass_at_k_with_sampling(project):
    edit_config(project, "metrics: [pass@1]", "metrics: [pass@1, pass@3]")
    edit_config(project, "max_tokens: 16", "max_tokens: 16\n      temperature: 1.0\n      num_samples: 3")
    plan = plan_json(project)
    assert plan["train"]["status"] == "cached" and plan["eval val@4"]["status"] == "run"
    out = build(project)
    assert "train" not in ran_names(out)
    val = [r for r in read_jsonl(run_dir(project) / "metrics.jsonl") if r["split"] == "val"]
    for row in val:
        assert set(row["metrics"]) == {"val/val/pass@1", "val/val/pass@3"}
        assert row["metrics"]["val/val/pass@3"] >= row["metrics"]["val/val/pass@1"]
    preds = [p for p in read_jsonl(run_dir(project) / "predictions" / "val.jsonl") if p["step"] == 4]
    assert all(len(p["samples"]) == 3 and len(p["verdicts"]) == 3 for p in preds)
    assert any(len(set(p["samples"])) > 1 for p in preds)  # temperature 1.0 really samples
    for p in preds:  # pass@1 per task is the mean verdict over its samples (unbiased estimator)
        assert p["correct"] == p["verdicts"][0]
    by_task = [sum(p["verdicts"]) / 3 for p in preds]
    logged = next(r["metrics"]["val/val/pass@1"] for r in val if r["step"] == 4)
    assert logged == pytest.approx(sum(by_task) / len(by_task))
