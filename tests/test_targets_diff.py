"""`evsys build --target` builds only what a target needs (and records a partial run);
`evsys diff A B` compares configs, arms and past runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evsys_build.store import Store
from evsys_testkit import EXPERIMENT, copy_project, edit_config, evsys, make_project, ok, plan_json, ran_names, ref_keys, tool_rows

DATA_NODES = {"source", "transform[0] jsonl_to_chat", "transform[1] dedup", "tokenize"}


def build(project: Path, *extra: str) -> str:
    return ok(evsys("build", "config.yaml", "--cache-dir", "cache", *extra, cwd=project)).stdout


def test_target_tokenize_prepares_the_data_only(tmp_path, tiny_model_dir):
    project = make_project(tmp_path / "p", tool_rows(12))
    out = build(project, "--target", "tokenize")
    assert ran_names(out) == DATA_NODES
    assert "a partial build: no run dir" in out and not (project / "out").exists()
    (run,) = Store(project / "cache").iter_runs(EXPERIMENT)
    assert run["status"] == "completed" and run["partial"] is True and run["targets"] == ["tokenize"]
    assert set(run["arms"]["default"]["nodes"]) == DATA_NODES
    assert "partial" in ok(evsys("runs", "--cache-dir", "cache", cwd=project)).stdout
    plan = plan_json(project)
    assert {n: e["status"] for n, e in plan.items() if n in DATA_NODES} == dict.fromkeys(DATA_NODES, "cached")
    assert plan["train"]["status"] == "run"
    out = build(project)  # the GPU box: the rest
    assert ran_names(out) == {"train", "report"} and (project / "out" / "first_run" / "metrics.jsonl").is_file()


def test_targets_by_rule_by_key_and_unknown(built_project, tmp_path):
    project = copy_project(built_project, tmp_path / "p")
    keys = ref_keys(project / "cache")
    plan = json.loads(ok(evsys("plan", "config.yaml", "--json", "--cache-dir", "cache", "--target", "transform", cwd=project)).stdout)
    assert {n["name"] for n in plan["nodes"]} == DATA_NODES - {"tokenize"}  # a rule: every transform
    plan = json.loads(ok(evsys("plan", "config.yaml", "--json", "--cache-dir", "cache", "--target", "node:" + keys["checkpoint@1"][:10], cwd=project)).stdout)
    assert {n["name"] for n in plan["nodes"]} == DATA_NODES | {"train", "checkpoint@1"}  # a checkpoint brings its training
    runs = len(list(Store(project / "cache").iter_runs(EXPERIMENT)))
    proc = evsys("build", "config.yaml", "--cache-dir", "cache", "--target", "evl", cwd=project)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--target evl: no node, rule or node key matches; nodes: source, transform[0] jsonl_to_chat" in proc.stderr
    assert len(list(Store(project / "cache").iter_runs(EXPERIMENT))) == runs  # bad usage records no run


def test_a_partial_build_keeps_the_last_full_run_as_the_ref(built_project, tmp_path):
    project = copy_project(built_project, tmp_path / "p")
    store = Store(project / "cache")
    before = store.read_ref(EXPERIMENT, "default")
    build(project, "--target", "tokenize")
    after = store.read_ref(EXPERIMENT, "default")
    assert after["run"] == before["run"] and after["nodes"] == before["nodes"]  # gc keeps the checkpoints; plan diffs every node


SWEEP = """\
sweep:
  algorithm.params.learning_rate: [1.0e-4, 5.0e-3]
"""


@pytest.fixture(scope="module")
def swept(built_project, tmp_path_factory) -> Path:
    """The built project with a two-arm learning-rate sweep, built (one arm's training is cached)."""
    project = copy_project(built_project, tmp_path_factory.mktemp("swept") / "p")
    edit_config(project, "    learning_rate: 1.0e-4\n", "")
    (project / "config.yaml").write_text((project / "config.yaml").read_text() + SWEEP)
    (project / "first-build.txt").write_text(build(project))
    return project


def test_sweep_build_lines_use_short_arm_labels(swept):
    out = (swept / "first-build.txt").read_text()
    assert out.splitlines()[0] == "arms: a1 = learning_rate=0.0001; a2 = learning_rate=0.005"
    assert any(line.startswith("cached  [a1,a2] tokenize") for line in out.splitlines())
    assert any(line.startswith("ran     [a2] train") for line in out.splitlines())
    plan = ok(evsys("plan", "config.yaml", "--cache-dir", "cache", cwd=swept)).stdout.splitlines()
    assert plan[0] == "arms: a1 = learning_rate=0.0001; a2 = learning_rate=0.005"  # plan labels arms as build does
    assert any(line.startswith("cached") and line.endswith("[a1,a2] tokenize") for line in plan)
    assert any(line.startswith("cached") and "[a2] train" in line for line in plan)
    one = ok(evsys("plan", "config.yaml", "--arm", "learning_rate=0.005", "--cache-dir", "cache", cwd=swept)).stdout.splitlines()
    assert not one[0].startswith("arms:") and any("[learning_rate=0.005] train" in line for line in one)
    assert ok(evsys("plan", "config.yaml", "--arm", "a2", "--cache-dir", "cache", cwd=swept)).stdout.splitlines() == one  # the label names its arm
    by_label = ok(evsys("diff", "config.yaml@a1", "config.yaml@a2", "--cache-dir", "cache", cwd=swept)).stdout
    assert by_label.startswith("A: config.yaml@learning_rate=0.0001\nB: config.yaml@learning_rate=0.005\n")
    md = (swept / "out" / "first_run" / "experiment.md").read_text()
    assert "| learning_rate=0.0001 | algorithm.params.learning_rate=0.0001 | completed |" in md
    assert "| learning_rate=0.005 | algorithm.params.learning_rate=0.005 | completed |" in md


def test_diff_two_arms_of_a_config(swept):
    text = ok(evsys("diff", "config.yaml@learning_rate=0.0001", "config.yaml@learning_rate=0.005", "--cache-dir", "cache", cwd=swept)).stdout
    assert "config: 1 path(s) differ:\n  algorithm.params.learning_rate: 0.0001 → 0.005" in text
    assert "nodes: 4 shared (source, transform[0] jsonl_to_chat, transform[1] dedup, tokenize)" in text
    assert "differ (3): train" in text
    data = json.loads(ok(evsys("diff", "config.yaml@learning_rate=0.0001", "config.yaml@learning_rate=0.005", "--json", "--cache-dir", "cache", cwd=swept)).stdout)
    (row,) = [m for m in data["metrics"] if m["metric"] == "train_mean_nll"]
    assert row["step"] == 1 and row["delta"] == pytest.approx(row["b"] - row["a"])
    proc = evsys("diff", "config.yaml", "config.yaml@nope", "--cache-dir", "cache", cwd=swept)
    assert proc.returncode == 2 and "config.yaml: has arms learning_rate=0.0001, learning_rate=0.005; say which" in proc.stderr


def test_diff_past_runs_and_a_config(swept, built_project):
    runs = json.loads(ok(evsys("runs", "--json", "--cache-dir", "cache", cwd=swept)).stdout)
    first, swept_run = runs[0]["id"], runs[-1]["id"]
    text = ok(evsys("diff", first, f"{swept_run}@learning_rate=0.005", "--cache-dir", "cache", cwd=swept)).stdout
    assert text.startswith(f"A: run {first}@default\nB: run {swept_run}@learning_rate=0.005\n")
    assert "algorithm.params.learning_rate: 0.0001 → 0.005" in text
    assert "differ (3): train" in text and "metrics at equal steps (B − A)" in text and "train_mean_nll  step     1:" in text
    same = ok(evsys("diff", first, "config.yaml@learning_rate=0.0001", "--cache-dir", "cache", cwd=swept)).stdout
    assert "config: 0 path(s) differ" in same  # the same computation, recorded and as configured now
    assert "differ (1): report" in same  # only the report, which names its arm
    assert "(+0.0000)" in same
    missing = evsys("diff", "nofile.yaml", "config.yaml", "--cache-dir", "cache", cwd=swept)
    assert missing.returncode == 2 and missing.stderr.strip() == "evsys: error: nofile.yaml: no such config file (a side of diff is a config file or a run id as `evsys runs` lists it)"


def test_experiment_md_names_no_best_arm_when_arms_tie():
    from evsys_rules.outputs.experiment_md import conclusion

    def arm(name: str, **metrics) -> dict:
        return {"arm": name, "completed": True, "metrics": metrics, "headline": next(iter(metrics))}

    tied = [arm("a", **{"val/v/pass@1": 0.5}), arm("b", **{"val/v/pass@1": 0.5})]
    assert conclusion(tied) == "2/2 arms completed. All arms tie on val/v/pass@1 at the final step (0.5000): no best arm."
    three = tied + [arm("c", **{"val/v/pass@1": 0.25})]
    assert "Arms a, b tie for best on val/v/pass@1" in conclusion(three) and "Best arm" not in conclusion(three)
    assert "Best arm by val/v/pass@1 at the final step: c (0.7500)" in conclusion(tied + [arm("c", **{"val/v/pass@1": 0.75})])
    losses = [arm("a", **{"val/held/nll": 1.5}), arm("b", **{"val/held/nll": 1.2})]
    assert "Best arm by val/held/nll at the final step: b (1.2000)" in conclusion(losses)  # a loss: lowest wins


def test_no_best_arm_by_a_held_out_loss_scored_on_different_tokens():
    """A sweep over supervise: each arm's nll is a mean over the turns it trains, so the numbers
    do not rank the arms; a benchmark that sets its own supervise scores every arm alike."""
    from evsys_rules.algorithms.sft import SFTConfig
    from evsys_rules.config.schema import BenchmarkConfig
    from evsys_rules.nodes.heldout import heldout_shaping
    from evsys_rules.outputs.experiment_md import conclusion

    own, fixed = BenchmarkConfig(name="held", kind="nll", path="h.jsonl"), BenchmarkConfig(name="held", kind="nll", path="h.jsonl", supervise="all_assistant")
    last, every = SFTConfig(supervise="last_assistant"), SFTConfig(supervise="all_assistant")

    def arm(name: str, algo, bench, value: float) -> dict:
        return {"arm": name, "completed": True, "metrics": {"val/held/nll": value}, "headline": "val/held/nll",
                "scored_on": {"val/held/nll": heldout_shaping(algo, bench)}}

    differing = conclusion([arm("a", last, own, 1.5), arm("b", every, own, 1.2)])
    assert "Best arm" not in differing and "on different tokens (supervise differ)" in differing
    assert "set supervise on the benchmark" in differing
    assert "Best arm by val/held/nll at the final step: b (1.2000)" in conclusion([arm("a", last, fixed, 1.5), arm("b", every, fixed, 1.2)])
    with pytest.raises(ValueError, match="only a kind: nll benchmark has it"):
        BenchmarkConfig(name="t", path="tasks", supervise="all_assistant")


def test_the_headline_metric_is_the_first_the_config_lists_not_the_first_by_name():
    """Stored metrics are sorted by name: `val/held/nll` would head an arm whose config lists the
    pass@k benchmark first, and a sweep's best arm would be picked by held-out loss."""
    from evsys_rules.config.schema import BenchmarkConfig
    from evsys_rules.outputs.experiment_md import headline_metric

    tasks = BenchmarkConfig(name="tasks", path="t", metrics=["pass@4", "pass@1"])
    held = BenchmarkConfig(name="held", kind="nll", path="h.jsonl")
    test = BenchmarkConfig(name="final", path="f", split="test")
    metrics = {"test/final/pass@1": 0.2, "val/held/nll": 1.5, "val/tasks/pass@1": 0.5, "val/tasks/pass@4": 0.7}
    assert headline_metric([test, tasks, held], metrics) == "val/tasks/pass@4"  # validation first, then as listed
    assert headline_metric([held, tasks], metrics) == "val/held/nll"
    assert headline_metric([test], {"test/final/pass@1": 0.2}) == "test/final/pass@1"
    assert headline_metric([], {}) is None


def test_diff_specs_split_at_the_config_file_so_arm_names_may_hold_at_signs(tmp_path, monkeypatch):
    from evsys_build.diff import split_spec

    monkeypatch.chdir(tmp_path)
    (tmp_path / "at.yaml").write_text("")
    (tmp_path / "v@2.yaml").write_text("")
    assert split_spec("at.yaml@r@1") == ("at.yaml", "r@1")
    assert split_spec("at.yaml") == ("at.yaml", "")
    assert split_spec("v@2.yaml") == ("v@2.yaml", "")
    assert split_spec("v@2.yaml@a") == ("v@2.yaml", "a")
    assert split_spec("20261127T211315.296158Z-84f64e@r@1") == ("20261127T211315.296158Z-84f64e", "r@1")


def test_diff_lists_only_paths_whose_values_differ():
    """A benchmark only B has lists its fields, but a null there is no difference from A lacking
    the path: `(unset) → (unset)` was listed and counted."""
    from evsys_build.diff import Side, diff_sides, format_diff

    a = Side("A", {"seed": 0, "metadata.benchmark.0.name": "val"}, {}, [])
    b = Side("B", {"seed": 0, "metadata.benchmark.0.name": "val", "metadata.benchmark.1.name": "held",
                   "metadata.benchmark.1.run_every": None, "metadata.benchmark.1.system_prompt": None}, {}, [])
    d = diff_sides(a, b)
    assert d.config == [("metadata.benchmark.1.name", None, "held")]
    assert "config: 1 path(s) differ:" in format_diff(d) and "  metadata.benchmark.1.name: (unset) → held" in format_diff(d)
