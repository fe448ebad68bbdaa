"""The benchmark scripts run and check what they claim on CPU (tiny shapes). Their figures are
recorded in benchmarks/RESULTS.md, never asserted here: tests do not time anything."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_eval_throughput_compares_identical_greedy_outputs(tiny_model_dir):
    results = load("eval_throughput").main(["--prompts", "6", "--max-tokens", "4", "--batch-size", "4", "--json"])
    assert results["identical"] is True and results["new_tokens"] > 0
    assert results["local_tok_s"] > 0 and results["generate_tok_s"] > 0


def test_train_throughput_reports_both_sides_and_mfu_only_where_a_peak_is_known(tiny_model_dir):
    results = load("train_throughput").main(["--steps", "1", "--warmup", "1", "--batch-size", "2", "--json"])
    assert results["local"]["tokens_per_s"] > 0 and results["baseline"]["tokens_per_s"] > 0
    assert results["local"]["mfu"] is None  # CPU: no peak to compare with
    assert abs(results["local"]["final_nll"] - results["baseline"]["final_nll"]) < 1e-3  # same model, same data


def test_train_throughput_profiles_extra_steps_without_changing_the_timed_ones(tiny_model_dir, capsys):
    bench = load("train_throughput")
    plain = bench.main(["--steps", "1", "--warmup", "1", "--batch-size", "2", "--json"])
    profiled = bench.main(["--steps", "1", "--warmup", "1", "--batch-size", "2", "--json", "--profile", "1"])
    err = capsys.readouterr().err
    assert "== profile of local" in err and "== profile of baseline" in err
    assert abs(profiled["baseline"]["final_nll"] - plain["baseline"]["final_nll"]) < 1e-6  # the timed steps' loss, not the profiled ones'


def test_training_flops_per_token_counts_the_dense_weights():
    bench = load("train_throughput")
    from evsys_rules.models.tiny import build_tiny_model

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "m", seed=0, **bench.PRESETS["tiny"])
        full, lora = bench.training_flops_per_token(model, 0, 100), bench.training_flops_per_token(model, 8, 100)
    assert full > lora > 0 and abs(full - lora) * 2 < full


def test_data_throughput_runs_both_pipelines_on_the_same_tokens(tiny_model_dir, capsys):
    pytest.importorskip("datasets")
    bench = load("data_throughput")
    sys.argv = ["data_throughput.py", "300", "--repeat", "1", "--incremental"]
    bench.main()
    out = capsys.readouterr().out
    evsys_line = next(line for line in out.splitlines() if line.startswith("evsys "))
    datasets_line = next(line for line in out.splitlines() if line.startswith("datasets "))
    tokens = lambda line: line.split(" tokens")[0].rsplit(" ", 1)[-1]  # noqa: E731
    assert tokens(evsys_line) == tokens(datasets_line)  # the same chat template and tokenizer: the same token count
    assert out.count("incremental ") == 4 and "tokenize chunks ran: 1" in out


def test_sweep_plan_times_a_plan_of_as_many_arms_as_asked(tmp_path):
    sweep_plan = load("sweep_plan")
    config = tmp_path / "sweep.yaml"
    config.write_text(sweep_plan.sweep_config(3))
    store = tmp_path / "store"
    assert sweep_plan.timed_plan(config, store) > 0  # exits on a failed plan
    from evsys_rules.config.loading import load_config

    assert len(load_config(config).arms) == 3


def test_sweep_plan_alternates_with_a_baseline_revision(tmp_path, capsys):
    """--baseline runs the same plan with a git revision's code (here HEAD), each side from its own
    source folder and store; a failed plan on either side exits."""
    sweep_plan = load("sweep_plan")
    sweep_plan.compare(2, 1, "HEAD", tmp_path)
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[3:5] for line in out[:2]] == [["this", "tree"], ["HEAD", "median"]]
    assert out[2].startswith("ratio this tree / HEAD: ")
    assert (tmp_path / "baseline" / "evsys_build" / "cli.py").is_file()  # the revision's code, unpacked
