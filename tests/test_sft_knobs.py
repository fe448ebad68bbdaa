"""SFT knobs: gradient accumulation gives the big batch's update; num_epochs becomes max_steps once
the data is built (and shares its key); a `kind: nll` benchmark scores held-out loss per checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evsys_testkit import evsys, make_project, ok, plan_json, ran_names, write_jsonl

ROWS = 8


def chat_rows(n: int) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"Which tool handles request {i}?"}, {"role": "assistant", "content": f"<answer>TOOL_{i % 3}</answer>"}]}
        for i in range(n)
    ]


def test_gradient_accumulation_gives_the_big_batch_update(tiny_model_dir):
    """k micro-batches of b, then one step == one step on the k·b batch (the same examples, one normalisation)."""
    import numpy as np
    import torch

    from evsys_rules.algorithms.sft import SFTConfig
    from evsys_rules.algorithms.sft_loop import train_sft
    from evsys_rules.backends.base import Datum
    from evsys_rules.backends.local import LocalBackend
    from evsys_rules.backends.local.model_io import bytes_to_tensors

    rng = np.random.default_rng(0)
    data = []
    for _ in range(12):
        length = int(rng.integers(6, 20))
        weights = (rng.random(length) > 0.4).astype(np.float32)
        weights[0] = 0.0
        weights[-1] = 1.0
        data.append(Datum(rng.integers(0, 5000, length), weights))
    backend = LocalBackend({"device": "cpu", "dtype": "float32"})

    def trained(**params) -> dict:
        client = backend.create_training_client(tiny_model_dir, 2, seed=0)
        history = train_sft(client, data, SFTConfig(learning_rate=1e-2, max_steps=2, lora_rank=2, **params), seed=0, save_steps=set(), resume=None, on_step=lambda *_: None, on_checkpoint=lambda *_: None)
        return {"weights": bytes_to_tensors(client.save_state()["trainable.safetensors"]), "loss": [m["train_mean_nll"] for m in history]}

    big = trained(batch_size=8)
    accumulated = trained(batch_size=4, gradient_accumulation_steps=2)
    smaller = trained(batch_size=4)
    assert accumulated["loss"] == pytest.approx(big["loss"], rel=1e-5)
    for name, tensor in big["weights"].items():
        torch.testing.assert_close(accumulated["weights"][name], tensor, rtol=1e-4, atol=1e-6)
    assert any(not torch.allclose(smaller["weights"][n], t, atol=1e-6) for n, t in big["weights"].items())  # the check can fail


def test_a_batch_larger_than_the_data_takes_each_row_once(tiny_model_dir):
    """batch_size 64 over 12 rows: a step is one pass over the 12 (the update batch_size 12 gives),
    never a batch that repeats rows and weighs them twice; num_epochs counts such steps as passes."""
    import numpy as np
    import torch

    from evsys_rules.algorithms.sft import SFTConfig
    from evsys_rules.algorithms.sft_loop import batch_indices, step_batch, train_sft
    from evsys_rules.backends.base import Datum
    from evsys_rules.backends.local import LocalBackend
    from evsys_rules.backends.local.model_io import bytes_to_tensors
    from evsys_rules.nodes.steps import steps_for_epochs

    rng = np.random.default_rng(1)
    data = [Datum(rng.integers(0, 5000, 9), np.r_[np.zeros(4, np.float32), np.ones(5, np.float32)]) for _ in range(12)]
    backend = LocalBackend({"device": "cpu", "dtype": "float32"})

    def trained(**params) -> dict:
        client = backend.create_training_client(tiny_model_dir, 2, seed=0)
        train_sft(client, data, SFTConfig(learning_rate=1e-2, max_steps=1, lora_rank=2, **params), seed=0, save_steps=set(), resume=None, on_step=lambda *_: None, on_checkpoint=lambda *_: None)
        return bytes_to_tensors(client.save_state()["trainable.safetensors"])

    whole, oversized = trained(batch_size=12), trained(batch_size=64)
    for name, tensor in whole.items():
        torch.testing.assert_close(oversized[name], tensor, rtol=1e-4, atol=1e-6)
    cfg = SFTConfig(batch_size=16, gradient_accumulation_steps=4, max_steps=3)
    for step in (1, 2, 3):
        assert sorted(batch_indices(12, step_batch(cfg, 12), 0, step)) == list(range(12))
    assert steps_for_epochs(12, 1, 64) == 1 and steps_for_epochs(12, 2, 16, 4) == 2


def test_a_diverged_loss_stops_training_and_keeps_the_checkpoints_before_it(tiny_model_dir):
    """NaN weights must not train on to a run that says completed: the step whose loss is not
    finite fails the node, and what was saved before stays."""
    import numpy as np
    import torch

    from evsys_build.errors import NodeFailed
    from evsys_rules.algorithms.sft import SFTConfig
    from evsys_rules.algorithms.sft_loop import train_sft
    from evsys_rules.backends.base import Datum
    from evsys_rules.backends.local import LocalBackend

    rng = np.random.default_rng(0)
    data = [Datum(rng.integers(0, 5000, 12), np.r_[np.zeros(6), np.ones(6)].astype(np.float32)) for _ in range(4)]
    client = LocalBackend({"device": "cpu", "dtype": "float32"}).create_training_client(tiny_model_dir, 2, seed=0)
    saved, seen = {}, []

    def poison_after_step_one(step, metrics):
        seen.append(metrics["train_mean_nll"])
        if step == 1:  # what a learning rate far too high does to a weight
            with torch.no_grad():
                next(p for p in client.model.parameters() if p.requires_grad).fill_(float("inf"))

    with pytest.raises(NodeFailed, match=r"train: (train_mean_nll|optim/grad_norm) is nan at step 2: training diverged .*checkpoints saved before this step are kept"):
        train_sft(client, data, SFTConfig(learning_rate=1e-2, max_steps=4, batch_size=2, lora_rank=2), seed=0, save_steps={1, 4},
                  resume=None, on_step=poison_after_step_one, on_checkpoint=saved.__setitem__)
    assert list(saved) == [1] and len(seen) == 1 and np.isfinite(seen[0])
    with pytest.raises(NodeFailed, match=r"train: weight .* holds NaN or inf: training diverged"):
        client.save_state()  # a checkpoint of ruined weights is never stored, whatever the loss said


EPOCHS_CONFIG = """\
experiment: {name: knobs}
output_dir: out
data: {source_kind: jsonl, path: data/train.jsonl}
model: {name: evsys/tiny-qwen3}
algorithm:
  kind: sft
  params: {learning_rate: 1.0e-2, LENGTH, batch_size: 4, gradient_accumulation_steps: 2, lora_rank: 2}
metadata:
  benchmark:
    - {name: held, kind: nll, path: data/train.jsonl, run_every: 1}
"""


@pytest.fixture(scope="module")
def epochs_project(tmp_path_factory, tiny_model_dir) -> Path:
    """8 chat rows, 3 epochs in steps of 4 × 2 accumulated = every row each step: max_steps 3."""
    project = make_project(tmp_path_factory.mktemp("epochs") / "p", [], EPOCHS_CONFIG.replace("LENGTH", "num_epochs: 3"))
    write_jsonl(project / "data" / "train.jsonl", chat_rows(ROWS))
    plan = ok(evsys("plan", "config.yaml", "--cache-dir", "cache", cwd=project)).stdout
    (project / "plan-before.txt").write_text(plan)
    (project / "first-build.txt").write_text(ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project)).stdout)
    return project


def metrics(project: Path) -> list[dict]:
    return [json.loads(line) for line in (project / "out" / "knobs" / "metrics.jsonl").read_text().splitlines()]


def test_num_epochs_plans_the_data_first_then_trains_its_steps(epochs_project):
    plan = (epochs_project / "plan-before.txt").read_text()
    assert "tokenize" in plan and "  train" not in plan
    assert "note: train and what follows it are planned once tokenize is built: num_epochs needs the number of rows" in plan
    out = (epochs_project / "first-build.txt").read_text()
    assert {"tokenize", "train", "eval held@1", "eval held@2", "eval held@3", "report"} <= ran_names(out)
    assert out.count("cached  tokenize") == 0  # the second pass over the data nodes is not printed again
    assert [r["step"] for r in metrics(epochs_project) if r["split"] == "train"] == [1, 2, 3]


def test_num_epochs_shares_the_key_of_the_max_steps_it_resolves_to(epochs_project):
    (epochs_project / "config.yaml").write_text(EPOCHS_CONFIG.replace("LENGTH", "max_steps: 3"))
    try:
        plan = plan_json(epochs_project)
        assert plan["train"]["status"] == "cached" and plan["eval held@3"]["status"] == "cached"
    finally:
        (epochs_project / "config.yaml").write_text(EPOCHS_CONFIG.replace("LENGTH", "num_epochs: 3"))
    write_jsonl(epochs_project / "data" / "extra.jsonl", chat_rows(ROWS + 4))  # more rows, more steps: another key
    (epochs_project / "config.yaml").write_text(EPOCHS_CONFIG.replace("LENGTH", "num_epochs: 3").replace("data/train.jsonl}", "data/extra.jsonl}", 1))
    try:
        plan = ok(evsys("plan", "config.yaml", "--cache-dir", "cache", cwd=epochs_project)).stdout
        assert "note: train and what follows" in plan
    finally:
        (epochs_project / "config.yaml").write_text(EPOCHS_CONFIG.replace("LENGTH", "num_epochs: 3"))


def test_held_out_nll_is_the_mean_loss_per_token_of_the_checkpoint(epochs_project):
    """Every step trains on all 8 rows, so step k+1's train_mean_nll is the mean NLL per loss token
    of the rows under checkpoint@k: what the nll benchmark on those rows must report."""
    rows = metrics(epochs_project)
    train = {r["step"]: r["metrics"]["train_mean_nll"] for r in rows if r["split"] == "train"}
    held = {r["step"]: r["metrics"]["val/held/nll"] for r in rows if r["split"] == "val"}
    assert sorted(held) == [1, 2, 3]
    assert held[1] == pytest.approx(train[2], rel=1e-4)
    assert held[2] == pytest.approx(train[3], rel=1e-4)
    assert held[3] < held[1]  # training lowers it
    preds = [json.loads(line) for line in (epochs_project / "out" / "knobs" / "predictions" / "held.jsonl").read_text().splitlines()]
    assert len(preds) == 3 * ROWS and {"row", "step", "nll", "loss_tokens"} <= set(preds[0])
    summary = (epochs_project / "out" / "knobs" / "summary.md").read_text()
    assert "val/held/nll" in summary


def test_max_steps_and_num_epochs_together_is_a_config_error(tmp_path):
    project = make_project(tmp_path / "p", [], EPOCHS_CONFIG.replace("LENGTH", "max_steps: 3, num_epochs: 1"))
    proc = evsys("validate", "config.yaml", cwd=project)
    assert proc.returncode == 2 and "algorithm.params: give max_steps or num_epochs, not both" in proc.stderr


def test_plan_counts_the_rows_of_a_whole_accumulated_step(tmp_path):
    """batch_size 4 x gradient_accumulation_steps 2: a step sees 8 rows, before tokenize as after."""
    project = make_project(tmp_path / "p", [], EPOCHS_CONFIG.replace("LENGTH", "max_steps: 3"))
    write_jsonl(project / "data" / "train.jsonl", chat_rows(ROWS))
    plan = ok(evsys("plan", "config.yaml", "--cache-dir", "cache", cwd=project)).stdout
    assert "[3 steps x 8 rows; token counts once tokenize has run]" in plan, plan
    write_jsonl(project / "data" / "train.jsonl", chat_rows(5))  # fewer rows than a step's batch: a step is the 5
    ok(evsys("build", "config.yaml", "--target", "tokenize", "--cache-dir", "cache", cwd=project))
    (entry,) = [e for e in json.loads(ok(evsys("plan", "config.yaml", "--json", "--cache-dir", "cache", cwd=project)).stdout)["nodes"] if e["name"] == "train"]
    assert entry["cost"]["rows"] == 3 * 5, entry


def test_held_out_rows_without_messages_are_refused_before_anything_trains(tmp_path):
    """validate --deep, plan and build all read the held-out file's rows first: a build never
    trains and then fails at its eval."""
    project = make_project(tmp_path / "p", [], EPOCHS_CONFIG.replace("LENGTH", "max_steps: 1").replace("path: data/train.jsonl, run_every", "path: data/held.jsonl, run_every"))
    write_jsonl(project / "data" / "train.jsonl", chat_rows(ROWS))
    write_jsonl(project / "data" / "held.jsonl", [{"query": "q", "tool_slug": "x"}])
    for args in (["validate", "--deep"], ["plan", "--cache-dir", "cache"], ["build", "--cache-dir", "cache"]):
        proc = evsys(args[0], "config.yaml", *args[1:], cwd=project)
        assert proc.returncode == 2 and proc.stderr.strip().endswith("data/held.jsonl:1: messages: the row has none (a kind: nll benchmark reads chat rows)"), (args, proc.stderr)
    assert not (project / "cache" / "nodes").exists()


@pytest.mark.parametrize("rows, epochs, batch, steps", [(100, 1.1, 10, 11), (50, 2.2, 1, 110), (100, 0.3, 10, 3), (10, 1, 4, 3), (7, 0.01, 8, 1), (20, 1, 64, 1), (20, 3, 64, 3)])
def test_num_epochs_counts_steps_on_the_decimal_the_config_gives(rows, epochs, batch, steps):
    from evsys_rules.nodes.steps import steps_for_epochs

    assert steps_for_epochs(rows, epochs, batch) == steps  # 100 × 1.1 is 110.00000000000001 in floats
