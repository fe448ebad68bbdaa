"""Training's randomness is its own (evaluations beside it cannot shift it), and precision is part
of the record: the key holds the resolved device/dtype/attention, checkpoints record where they
were built, and training never resumes across precisions."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from evsys_build.store import Store
from evsys_rules.algorithms.sft import SFTConfig
from evsys_rules.algorithms.sft_loop import train_sft
from evsys_rules.backends.base import Datum
from evsys_rules.backends.local import LocalBackend, LocalBackendConfig
from evsys_rules.backends.local.config import resolve_precision
from evsys_testkit import edit_config, evsys, ok, plan_json, ref_keys

CPU = LocalBackendConfig(device="cpu")


def datums(n: int = 6, length: int = 12) -> list[Datum]:
    rng = np.random.default_rng(0)
    return [Datum(rng.integers(0, 1000, length), np.r_[np.zeros(length // 2), np.ones(length - length // 2)].astype(np.float32)) for _ in range(n)]


def train_three_steps(model_dir, noise: bool) -> dict:
    """Build a client and train 3 steps; with `noise`, another thread keeps reseeding and drawing
    from torch's global RNG the whole time, as evaluation sampling does."""
    import torch

    stop = threading.Event()

    def sampler_like():
        k = 0
        while not stop.is_set():
            torch.manual_seed(k)
            torch.rand(256)
            k += 1

    noisy = threading.Thread(target=sampler_like)
    if noise:
        noisy.start()
    try:
        client = LocalBackend(CPU).create_training_client(model_dir, lora_rank=2, seed=5)
        saved = {}
        train_sft(client, datums(), SFTConfig(learning_rate=1e-2, max_steps=3, batch_size=2, lora_rank=2), seed=5,
                  save_steps={3}, resume=None, on_step=lambda s, m: None, on_checkpoint=saved.__setitem__)
    finally:
        stop.set()
        if noise:
            noisy.join()
    return saved[3].state


def test_training_rng_and_weights_do_not_depend_on_concurrent_evaluation(tiny_model_dir):
    quiet = train_three_steps(tiny_model_dir, noise=False)
    busy = train_three_steps(tiny_model_dir, noise=True)
    assert quiet["rng.safetensors"] == busy["rng.safetensors"]
    assert quiet["trainable.safetensors"] == busy["trainable.safetensors"]
    assert quiet["optimizer.safetensors"] == busy["optimizer.safetensors"]


def test_auto_precision_resolves_without_torch_and_goes_into_the_train_key(built_project, tmp_path):
    from evsys_testkit import copy_project

    cpu_only = resolve_precision(LocalBackendConfig())
    assert (cpu_only.device, cpu_only.dtype, cpu_only.attention) == ("cpu", "float32", "sdpa_loop")  # this machine
    project = copy_project(built_project, tmp_path / "p")
    edit_config(project, "backend:\n  kind: local\n", "backend:\n  kind: local\n  params: {device: cpu, dtype: float32}\n")
    plan = plan_json(project)
    assert plan["train"]["status"] == "cached"  # explicit cpu/float32 is what auto resolved to: same key
    edit_config(project, "params: {device: cpu, dtype: float32}", "params: {device: cpu, dtype: bfloat16}")
    plan = plan_json(project)
    assert plan["train"]["status"] == "run" and plan["train"]["reasons"] == ["backend.params.dtype: float32 → bfloat16"]


def test_checkpoints_record_where_they_were_built_and_plan_and_show_say_it(built_project):
    cache = built_project / "cache"
    checkpoint = Store(cache).read_manifest(ref_keys(cache)["checkpoint@1"])
    assert {k: checkpoint["built_on"][k] for k in ("device", "dtype", "attention")} == {"device": "cpu", "dtype": "float32", "attention": "sdpa_loop"}
    assert checkpoint["built_on"]["host"]
    assert checkpoint["built_on"]["cpu_threads"] >= 1  # CPU float results depend on it: recorded for whoever compares two runs
    plan = ok(evsys("plan", "config.yaml", "--cache-dir", "cache", cwd=built_project)).stdout
    assert "cpu float32 sdpa_loop" in next(line for line in plan.splitlines() if line.rstrip().endswith(")") and "  train  " in line)
    shown = ok(evsys("show", "node:" + ref_keys(cache)["checkpoint@1"][:10], "--cache-dir", "cache", cwd=built_project)).stdout
    built = next(line for line in shown.splitlines() if line.startswith("built on "))
    assert "attention sdpa_loop, cpu_threads " in built and ", device cpu, dtype float32" in built


def test_training_never_resumes_across_precisions(tiny_model_dir):
    cfg = SFTConfig(learning_rate=1e-2, max_steps=4, batch_size=2, lora_rank=2)
    saved = {}
    client = LocalBackend(CPU).create_training_client(tiny_model_dir, lora_rank=2, seed=1)
    train_sft(client, datums(), cfg, seed=1, save_steps={2}, resume=None, on_step=lambda s, m: None, on_checkpoint=saved.__setitem__, stop_at=2)
    checkpoint = saved[2]
    bf16_meta = dict(checkpoint.meta, info=dict(checkpoint.meta["info"], dtype="bfloat16"))
    fresh = LocalBackend(CPU).create_training_client(tiny_model_dir, lora_rank=2, seed=1)
    with pytest.raises(ValueError, match=r"cannot resume.*'dtype': \('bfloat16', 'float32'\)"):
        train_sft(fresh, datums(), cfg, seed=1, save_steps=set(), resume=type(checkpoint)(checkpoint.state, checkpoint.weights, bf16_meta),
                  on_step=lambda s, m: None, on_checkpoint=lambda s, c: None)
