"""The local backend on the real tiny Qwen3 model: packing, LoRA vs full, learning, resume, sampling."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from evsys_build.errors import ConfigError  # noqa: E402
from evsys_rules.algorithms.sft import SFTConfig  # noqa: E402
from evsys_rules.algorithms.sft_loop import TIMING_METRICS, train_sft  # noqa: E402
from evsys_rules.backends.base import AdamParams, Datum, SavedCheckpoint  # noqa: E402
from evsys_rules.backends.local import LocalBackend, LocalBackendConfig  # noqa: E402
from evsys_rules.plugins.registry import backends  # noqa: E402
from evsys_rules.models.resolve import resolve_model  # noqa: E402
from evsys_rules.models.tiny import TINY_MODEL_DIRNAME, TINY_MODEL_NAME, build_tiny_model  # noqa: E402

CPU = LocalBackendConfig(device="cpu")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", seed=0)


def make_datums(lengths, seed=0, loss_from=0.5) -> list[Datum]:
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        ids = rng.integers(0, 1000, n)
        weights = np.zeros(n, np.float32)
        weights[int(n * loss_from) :] = 1.0
        out.append(Datum(ids, weights))
    return out


def reference_loss(causal_lm, datums) -> "torch.Tensor":
    """sum(-logprob * weight) from one plain (unpacked, full-logits) forward per sequence."""
    causal_lm.set_attn_implementation("sdpa")
    try:
        total = 0.0
        for d in datums:
            logits = causal_lm(input_ids=torch.tensor(d.input_ids)[None]).logits[0].float()
            logprobs = torch.log_softmax(logits[:-1], dim=-1)
            picked = logprobs.gather(1, torch.tensor(d.input_ids[1:])[:, None])[:, 0]
            total = total - (picked * torch.tensor(d.weights[1:])).sum()
        return total
    finally:
        causal_lm.set_attn_implementation("evsys_packed")


def sha256_tree(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_backend_is_registered():
    assert backends.get("local") is LocalBackend
    assert LocalBackend.Config is LocalBackendConfig
    assert not hasattr(LocalBackend, "version")  # keyed by the source of what it runs


def test_tiny_model_builds_byte_identically(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EVSYS_MODELS", str(tmp_path))
    second = resolve_model(TINY_MODEL_NAME)
    assert second == tmp_path / TINY_MODEL_DIRNAME
    assert sha256_tree(second) == sha256_tree(model_dir)
    assert resolve_model(TINY_MODEL_NAME) == second  # built once, then reused
    assert resolve_model(str(model_dir)) == model_dir


def test_resolve_model_unknown_name_fails_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match="not in the local Hugging Face cache"):
        resolve_model("nobody/no-such-model")


def test_packed_loss_and_grads_match_unpacked_reference(model_dir):
    client = LocalBackend(CPU).create_training_client(model_dir, lora_rank=0, seed=0)
    datums = make_datums([7, 33, 2, 19, 26])
    result = client.forward_backward(datums)
    packed_grads = {n: p.grad.clone() for n, p in client.model.named_parameters()}
    client.optimizer.zero_grad(set_to_none=True)

    expected = reference_loss(client.model, datums)
    expected.backward()
    weight_sum = sum(d.loss_weight for d in datums)
    assert result["weight_sum"] == pytest.approx(weight_sum)
    assert result["num_tokens"] == 87 and result["num_loss_tokens"] == int(weight_sum)
    assert abs(result["loss_sum"] - expected.item()) / weight_sum < 1e-5
    for name, param in client.model.named_parameters():  # fp32 summation order differs: compare norms
        relative = (packed_grads[name] - param.grad).norm() / param.grad.norm()
        assert relative < 1e-5, name


def test_packing_does_not_leak_between_sequences(model_dir):
    client = LocalBackend(CPU).create_training_client(model_dir, lora_rank=0, seed=0)
    first, second = make_datums([21, 30], seed=3)
    alone = client.forward_backward([second])["loss_sum"]
    together = client.forward_backward([first, second])["loss_sum"] - client.forward_backward([first])["loss_sum"]
    assert together == pytest.approx(alone, rel=1e-5)


def test_packed_attention_keeps_a_models_sliding_window(tmp_path):
    """A model whose layers attend to a sliding window trains on the function it computes at
    evaluation: packed loss and gradients equal the plain forward's, with sequences longer than
    the window (each packed after another)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.Qwen3Config(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, head_dim=16, use_sliding_window=True, sliding_window=4, max_window_layers=0)
    transformers.Qwen3ForCausalLM(config).save_pretrained(tmp_path / "windowed")
    client = LocalBackend(CPU).create_training_client(tmp_path / "windowed", lora_rank=0, seed=0)
    datums = make_datums([21, 30, 9], seed=5)
    result = client.forward_backward(datums)
    packed_grads = {n: p.grad.clone() for n, p in client.model.named_parameters()}
    client.optimizer.zero_grad(set_to_none=True)
    expected = reference_loss(client.model, datums)
    expected.backward()
    assert abs(result["loss_sum"] - expected.item()) / result["weight_sum"] < 1e-5
    for name, param in client.model.named_parameters():
        assert (packed_grads[name] - param.grad).norm() / param.grad.norm() < 1e-5, name


def test_lora_trains_only_adapters_and_rank0_trains_everything(model_dir):
    lora = LocalBackend(CPU).create_training_client(model_dir, lora_rank=4, seed=0)
    trainable = [n for n, p in lora.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in lora.model.named_parameters()}
    lora.forward_backward(make_datums([12, 20]))
    lora.optim_step(AdamParams(learning_rate=1e-2))
    changed = {n for n, p in lora.model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and changed <= set(trainable)
    assert any("lora_B" in n for n in changed)
    assert lora.info()["trainable_params"] < lora.info()["total_params"]

    full = LocalBackend(CPU).create_training_client(model_dir, lora_rank=0, seed=0)
    assert all(p.requires_grad for p in full.model.parameters())
    assert full.info()["trainable_params"] == full.info()["total_params"]


def test_a_few_steps_reduce_the_loss(model_dir):
    client = LocalBackend(CPU).create_training_client(model_dir, lora_rank=0, seed=0)
    datums = make_datums([16, 24, 12, 20], seed=1)
    losses = []
    for _ in range(10):
        losses.append(client.forward_backward(datums)["loss_sum"])
        client.optim_step(AdamParams(learning_rate=1e-2))
    assert losses[-1] < 0.5 * losses[0]


def without_timing(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in TIMING_METRICS} for m in metrics]


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_resume_is_bit_identical(model_dir, lora_rank):
    data = make_datums([9, 14, 22, 7, 18, 11, 25], seed=2)
    cfg = SFTConfig(learning_rate=3e-3, max_steps=6, batch_size=3, lora_rank=lora_rank, lr_schedule="cosine", warmup_steps=2)
    backend = LocalBackend(CPU)

    def run(stop_at=None, resume=None):
        saved: dict[int, SavedCheckpoint] = {}
        client = backend.create_training_client(model_dir, lora_rank=lora_rank, seed=7)
        metrics = train_sft(
            client, data, cfg, seed=7, save_steps={2}, resume=resume, on_step=lambda s, m: None,
            on_checkpoint=saved.__setitem__, stop_at=stop_at,
        )
        return metrics, saved

    full_metrics, full_saves = run()
    assert sorted(full_saves) == [2, 6]
    killed_metrics, killed_saves = run(stop_at=3)
    assert sorted(killed_saves) == [2, 3]
    meta = killed_saves[3].meta
    assert meta["step"] == 3 and meta["position"] == 9 and meta["epoch"] == 1
    resumed_metrics, resumed_saves = run(resume=killed_saves[3])
    assert sorted(resumed_saves) == [6]
    assert without_timing(resumed_metrics) == without_timing(full_metrics)
    assert resumed_saves[6].state == full_saves[6].state  # every blob, byte for byte
    assert resumed_saves[6].weights == full_saves[6].weights
    assert [m["step"] for m in full_metrics] == [1, 2, 3, 4, 5, 6]
    assert full_metrics[-1]["train_mean_nll"] < full_metrics[0]["train_mean_nll"]


def test_sampling_stops_at_stop_tokens_and_matches_saved_weights(model_dir):
    backend = LocalBackend(CPU)
    client = backend.create_training_client(model_dir, lora_rank=2, seed=0)
    client.forward_backward(make_datums([10, 12]))
    client.optim_step(AdamParams(learning_rate=1e-2))
    sampler = client.sampling_client()
    prompts = [[1, 2, 3, 4], [5, 6]]
    free = sampler.sample(prompts, max_tokens=6)
    assert [len(c[0]) for c in free] == [6, 6]
    stop = free[0][0][2]
    cut = sampler.sample(prompts, max_tokens=6, stop_token_ids=[stop])
    first = free[0][0].index(stop)
    assert cut[0][0] == free[0][0][:first]
    assert stop not in cut[1][0]

    reloaded = backend.sampling_client_from_weights(model_dir, client.weights_blobs())
    assert reloaded.sample(prompts, max_tokens=6) == free

    hot = sampler.sample(prompts, max_tokens=5, temperature=1.0, n=3, seed=1)
    assert [len(c) for c in hot] == [3, 3] and all(len(s) == 5 for c in hot for s in c)
    assert hot == sampler.sample(prompts, max_tokens=5, temperature=1.0, n=3, seed=1)


def test_seeded_sampling_is_unmoved_by_a_checkpoint_loading_in_another_thread(model_dir):
    """Evaluations run beside each other: loading a LoRA checkpoint (peft draws its init from
    torch's process-wide RNG) must not shift the stream of a seeded sampling running meanwhile."""
    import threading

    backend = LocalBackend(CPU)
    blobs = backend.create_training_client(model_dir, lora_rank=2, seed=0).weights_blobs()
    sampler = backend.sampling_client_from_weights(model_dir, blobs)
    prompts = [[1, 2, 3, 4], [5, 6, 7]]
    alone = sampler.sample(prompts, max_tokens=16, temperature=1.0, n=2, seed=1)
    done = threading.Event()

    def load_again_and_again():
        while not done.is_set():
            backend._model_from_weights(model_dir, blobs)

    loader = threading.Thread(target=load_again_and_again)
    loader.start()
    try:
        beside = [sampler.sample(prompts, max_tokens=16, temperature=1.0, n=2, seed=1) for _ in range(4)]
    finally:
        done.set()
        loader.join()
    assert all(b == alone for b in beside)


def test_dropout_masks_come_from_the_seed_not_the_process(tmp_path):
    """A model that trains with attention dropout: the same seed gives the same loss whatever the
    process-wide RNG holds (an eval sampling in another thread draws from it), another seed not."""
    import transformers

    torch.manual_seed(0)
    config = transformers.Qwen3Config(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, head_dim=16, attention_dropout=0.3)
    transformers.Qwen3ForCausalLM(config).save_pretrained(tmp_path / "dropout")
    datums = make_datums([21, 30, 9], seed=5)

    def loss(seed: int, global_seed: int) -> float:
        client = LocalBackend(CPU).create_training_client(tmp_path / "dropout", lora_rank=0, seed=seed)
        torch.manual_seed(global_seed)
        return client.forward_backward(datums)["loss_sum"]

    assert loss(0, 1) == loss(0, 2)
    assert loss(0, 1) != loss(1, 1)  # dropout is on: another seed draws other masks


def test_compiled_layers_need_the_varlen_kernel(model_dir):
    """`compile` compiles each decoder layer over the varlen kernel (CUDA, bf16); over the SDPA loop,
    whose per-sequence Python would recompile on every batch, it is refused in one line."""
    with pytest.raises(ConfigError, match=r"backend\.params\.compile: needs the varlen attention kernel"):
        LocalBackend(LocalBackendConfig(device="cpu", compile=True)).create_training_client(model_dir, lora_rank=0, seed=0)


def test_a_sampler_snapshot_of_compiled_layers_runs_eagerly(model_dir):
    """A sampler taken during compiled training copies the weights, not the layers' compiled entry
    points (which would still call the training model's layers)."""
    client = LocalBackend(CPU).create_training_client(model_dir, lora_rank=0, seed=0)
    for layer in client.model.model.layers:
        layer.compile(dynamic=True)  # what compile: true does on a GPU; nothing compiles until a call
    sampler = client.sampling_client()
    assert all(m._compiled_call_impl is None for m in sampler.model.modules())  # noqa: SLF001
    assert all(layer._compiled_call_impl is not None for layer in client.model.model.layers)  # noqa: SLF001 (training's kept)
    assert len(sampler.sample([[5, 6, 7]], max_tokens=3)[0][0]) == 3


def test_training_settings_key_training_and_sampling_settings_key_evals():
    """`compile` and the other training-only settings are in the train key, not in an eval's sampler
    params (their effect reaches evals through the checkpoint's bytes); sampling-only ones the reverse."""
    from evsys_rules.backends.local import LocalBackend as Backend
    from evsys_rules.nodes.train import keyed_backend_params

    config = LocalBackendConfig(device="cpu", compile=True, gradient_checkpointing=True, sample_batch_size=8)
    train = keyed_backend_params(Backend, config)
    sampler = keyed_backend_params(Backend, config, "training_only_params")
    assert train["compile"] is True and train["gradient_checkpointing"] is True and "sample_batch_size" not in train
    assert "compile" not in sampler and "gradient_checkpointing" not in sampler and sampler["sample_batch_size"] == 8
