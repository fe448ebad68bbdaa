"""Early cutoff: a node's key is made of its inputs' output *content*, so an upstream node that
reruns and writes byte-identical output leaves everything below it cached (train and eval too),
and `plan` says `maybe` ("runs if X changes") below a rerun instead of guessing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from evsys_testkit import copy_project, edit_config, evsys, ok, plan_json, ran_names
from evsys_testkit import EVALS_PLUGIN as PLUGIN

DOWNSTREAM = {"transform[2] jsonl_to_chat", "tokenize", "train", "checkpoint@1", "checkpoint@2", "eval val@1", "eval val@2", "report"}


@pytest.fixture
def built(built_evals) -> Path:
    return built_evals


def build(project: Path) -> str:
    return ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project)).stdout


def test_a_whitespace_only_rewrite_of_the_data_reruns_only_the_source(built, tmp_path):
    project = copy_project(built, tmp_path / "p")
    data = project / "data" / "train.jsonl"
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    data.write_text("\n".join(json.dumps(r, indent=None, separators=(" ,  ", " :   ")) for r in rows) + "\n\n")
    plan = plan_json(project)
    assert plan["source"]["status"] == "run" and plan["source"]["reasons"] == ["data file content changed"]
    assert plan["transform[0] tag_rows"]["status"] == "maybe"
    assert plan["transform[0] tag_rows"]["reasons"] == ["runs if source changes"]
    assert plan["train"]["status"] == "maybe" and plan["train"]["key"] is None
    assert ran_names(build(project)) == {"source"}


def test_a_filter_that_removes_nothing_leaves_training_and_eval_cached(built, tmp_path):
    project = copy_project(built, tmp_path / "p")
    edit_config(project, "op: min_len, value: 1}", "op: max_len, value: 100000}")
    plan = plan_json(project)
    assert plan["transform[1] filter"]["status"] == "run"
    assert plan["transform[1] filter"]["reasons"] == ["transforms[1].params.op: min_len → max_len", "transforms[1].params.value: 1 → 100000"]
    assert all(plan[name]["status"] == "maybe" for name in DOWNSTREAM)
    out = build(project)
    assert ran_names(out) == {"transform[1] filter"}
    assert all(f"cached  {name}" in out for name in DOWNSTREAM)


def test_a_plugin_edit_that_does_not_change_its_output_leaves_training_cached(built, tmp_path):
    project = copy_project(built, tmp_path / "p")
    plugin = project / "tag.py"
    plugin.write_text(PLUGIN.replace("return text.upper()", "upper = text.upper()  # same result, new code\n    return upper"))
    plan = plan_json(project)
    assert plan["transform[0] tag_rows"]["reasons"] == ["transform tag_rows code changed"]
    assert ran_names(build(project)) == {"transform[0] tag_rows"}


def test_a_plugin_edit_that_changes_its_output_reruns_everything_below(built, tmp_path):
    project = copy_project(built, tmp_path / "p")
    (project / "tag.py").write_text(PLUGIN.replace("text.upper()", "text.lower()"))
    out = build(project)
    assert {"transform[0] tag_rows", "tokenize", "train", "eval val@2", "report"} <= ran_names(out)


def test_a_comment_in_the_plugin_changes_no_key(built, tmp_path):
    """Comments and formatting are not code; a docstring is (code may read `__doc__`)."""
    project = copy_project(built, tmp_path / "p")
    (project / "tag.py").write_text("# tags the rows\n\n" + PLUGIN.replace("def shout(text):", "def shout(text):  # a comment\n"))
    assert all(entry["status"] == "cached" for entry in plan_json(project).values())
    (project / "tag.py").write_text(PLUGIN.replace("def shout(text):", "def shout(text):\n    \"\"\"Shout.\"\"\""))
    assert plan_json(project)["transform[0] tag_rows"]["status"] == "run"


def test_plan_text_marks_maybe_nodes(built, tmp_path):
    project = copy_project(built, tmp_path / "p")
    edit_config(project, "op: min_len, value: 1}", "op: min_len, value: 2}")
    lines = ok(evsys("plan", "config.yaml", "--cache-dir", "cache", cwd=project)).stdout.splitlines()
    train = next(line for line in lines if "  train  (runs if tokenize changes)" in line)
    assert train.startswith("maybe  ????????????")
    assert lines[-1] == "1 to run, 8 may run, 2 cached"


def test_a_training_only_backend_setting_that_gives_the_same_checkpoints_keeps_the_evals(built, tmp_path):
    """max_tokens_per_pass is in the train key (it can change the numbers), not in the eval key:
    here every batch fits one pass either way, so training reruns to the same bytes and the
    evals of those checkpoints stay cached."""
    project = copy_project(built, tmp_path / "p")
    edit_config(project, "backend: {kind: local}", "backend: {kind: local, params: {max_tokens_per_pass: 65536}}")
    plan = plan_json(project)
    assert plan["train"]["status"] == "run" and plan["eval val@2"]["status"] == "maybe"
    assert ran_names(build(project)) == {"train", "report"}  # the report writes the arm's config out


def test_two_arms_whose_training_comes_out_the_same_train_once_and_say_so(tmp_path):
    """Single-turn rows give the same tokens under all_assistant and last_assistant: the two
    arms' train nodes get one key once tokenize has run. One trains, the other waits for it (its
    message names the twin, not "another build") and is served from it."""
    from evsys_testkit import BASE_CONFIG, make_project, tool_rows

    config = BASE_CONFIG + "arms:\n  - {name: every, set: {seed: 0}}\n  - {name: last, set: {algorithm.params.supervise: last_assistant}}\n"
    project = make_project(tmp_path / "p", tool_rows(12), config)
    proc = ok(evsys("build", "config.yaml", "--cache-dir", "cache", "-j", "2", cwd=project))
    trains = [line.split()[0] for line in proc.stdout.splitlines() if re.match(r"^\w+\s+(\[[^\]]*\]\s+)?train\s", line)]
    assert sorted(trains) == ["cached", "ran"], proc.stdout
    assert "another build" not in proc.stderr, proc.stderr
    waits = [line for line in proc.stderr.splitlines() if "waiting" in line]
    assert all("train: waiting, train of this build computes the same thing (same key)" in line for line in waits), waits
