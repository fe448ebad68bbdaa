"""The static-cache greedy decoder (what eval nodes use on a GPU) gives generate's tokens.

On CPU it runs eagerly (compiled only on CUDA), which checks everything but the compilation: the
static cache sized to a bucket, the attention mask over the whole cache, left padding and its
positions, stop checks every few steps, short batches filled up and cut off again, one cache
reused across calls of another width. The GPU figures are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from evsys_rules.backends.local import LocalBackend, LocalBackendConfig  # noqa: E402
from evsys_rules.backends.local import kernels  # noqa: E402
from evsys_rules.backends.local.greedy_decode import CACHE_BUCKET, WARM_STEPS, StaticGreedyDecoder, cache_length  # noqa: E402
from evsys_rules.models.tiny import build_tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def samplers(tmp_path_factory):
    """(generate with a dynamic cache, the static greedy loop), over the same weights."""
    model_dir = build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", seed=3)
    blobs = {"evsys_weights.json": b'{"format": "full", "lora_rank": 0}',
             "model.safetensors": (Path(model_dir) / "model.safetensors").read_bytes()}
    make = lambda cache: LocalBackend(LocalBackendConfig(device="cpu", decode_cache=cache, sample_batch_size=4)).sampling_client_from_weights(model_dir, blobs)  # noqa: E731
    return make("dynamic"), make("static")


def prompts(count: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(10, 3000, int(n)).tolist() for n in rng.integers(3, 40, count)]


def test_static_greedy_loop_gives_generates_tokens(samplers):
    dynamic, static = samplers
    batch = prompts(7, seed=0)  # 4 + a short batch of 3, filled up to 4 and cut back
    reference = dynamic.sample(batch, max_tokens=40)
    assert static._greedy_decoder() is not None  # noqa: SLF001 (the loop is in use, not generate)
    config = static.model.config
    assert config._attn_implementation == kernels.DECODE_ATTENTION  # noqa: SLF001 (grouped decode attention, checked here)
    assert config.num_attention_heads > config.num_key_value_heads  # the grouped path, not the plain one
    assert static.sample(batch, max_tokens=40) == reference
    assert all(len(c[0]) == 40 for c in reference)



def test_the_model_folders_generation_defaults_never_change_a_completion(samplers, tmp_path):
    """A generation_config.json may set a repetition penalty, beams or a minimum length (many
    instruct models ship one): greedy and sampled completions follow the benchmark's params alone,
    so `generate` (dynamic cache, sampling) and the static loop agree, whatever that file says."""
    import json

    model_dir = build_tiny_model(tmp_path / "tiny", seed=3)
    (Path(model_dir) / "generation_config.json").write_text(json.dumps(
        {"repetition_penalty": 1.8, "no_repeat_ngram_size": 2, "num_beams": 3, "min_new_tokens": 30, "top_k": 5, "eos_token_id": 7}))
    blobs = {"evsys_weights.json": b'{"format": "full", "lora_rank": 0}', "model.safetensors": (Path(model_dir) / "model.safetensors").read_bytes()}
    for cache, plain in zip(("dynamic", "static"), samplers):
        odd = LocalBackend(LocalBackendConfig(device="cpu", decode_cache=cache, sample_batch_size=4)).sampling_client_from_weights(model_dir, blobs)
        batch = prompts(5, seed=4)
        assert odd.sample(batch, max_tokens=24) == plain.sample(batch, max_tokens=24), cache
        assert odd.sample(batch, max_tokens=12, temperature=0.8, seed=5) == plain.sample(batch, max_tokens=12, temperature=0.8, seed=5), cache

def test_stop_tokens_end_completions_as_in_generate(samplers):
    dynamic, static = samplers
    batch = prompts(6, seed=1)
    free = dynamic.sample(batch, max_tokens=48)
    # stops that occur at various depths, past the loop's first stop check (every 16 steps)
    stops = sorted({free[0][0][3], free[1][0][20], free[2][0][35]})
    reference = dynamic.sample(batch, max_tokens=48, stop_token_ids=stops)
    ours = static.sample(batch, max_tokens=48, stop_token_ids=stops)
    assert ours == reference
    assert any(len(c[0]) < 48 for c in ours)  # the stops did cut


def test_every_row_stopping_early_ends_the_loop_and_keeps_the_tokens(samplers):
    dynamic, static = samplers
    batch = prompts(4, seed=2)
    free = dynamic.sample(batch, max_tokens=60)
    stops = sorted({c[0][1] for c in free})  # every row stops within two tokens
    assert static.sample(batch, max_tokens=60, stop_token_ids=stops) == dynamic.sample(batch, max_tokens=60, stop_token_ids=stops)


def test_one_cache_serves_prompts_of_other_widths_in_its_bucket(samplers):
    dynamic, static = samplers
    short, long = prompts(4, seed=4), [p * 3 for p in prompts(4, seed=5)]
    assert cache_length(max(map(len, short)), 20) == cache_length(max(map(len, long)), 20) == CACHE_BUCKET
    for batch in (short, long, short):  # the second call of a width reuses the emptied cache
        assert static.sample(batch, max_tokens=20) == dynamic.sample(batch, max_tokens=20)


def test_cache_length_rounds_up_to_whole_buckets():
    assert cache_length(10, 16) == CACHE_BUCKET
    assert cache_length(CACHE_BUCKET - 16, 16) == CACHE_BUCKET
    assert cache_length(CACHE_BUCKET - 16, 17) == 2 * CACHE_BUCKET


def test_sampling_with_temperature_still_goes_through_generate(samplers):
    _, static = samplers
    batch = prompts(3, seed=6)
    hot = static.sample(batch, max_tokens=8, temperature=1.0, n=2, seed=7)
    assert hot == static.sample(batch, max_tokens=8, temperature=1.0, n=2, seed=7)
    assert [len(c) for c in hot] == [2, 2, 2]


class ReplayedStep:
    """Stands in for a captured CUDA graph on CPU: a replay runs the recorded step on the same buffers."""

    def __init__(self, decoder, state):
        self.decoder, self.state, self.replays = decoder, state, 0

    def replay(self):
        self.replays += 1
        self.decoder._step(self.state)  # noqa: SLF001


def test_a_captured_step_replays_to_generates_tokens(samplers, monkeypatch):
    """On a GPU the step is captured once per (batch, cache length) after WARM_STEPS compiled steps and
    then only replayed, also by later calls of that shape: every token still equals generate's."""
    dynamic, static = samplers
    decoder = StaticGreedyDecoder(static.model, compiled=False, capture=True)
    graphs = []
    monkeypatch.setattr(decoder, "_capture", lambda state: graphs.append(ReplayedStep(decoder, state)) or graphs[-1])
    monkeypatch.setattr(static, "_greedy", decoder)
    first, second = [p[:30] for p in prompts(4, seed=8)], [p[:30] for p in prompts(4, seed=9)]  # one padded width: one batch each
    assert static.sample(first, max_tokens=30) == dynamic.sample(first, max_tokens=30)
    assert static.sample(second, max_tokens=30) == dynamic.sample(second, max_tokens=30)
    assert len(graphs) == 1  # one shape, one capture
    assert graphs[0].replays == (30 - 1 - WARM_STEPS) + (30 - 1)


def test_a_sliding_window_cache_is_never_captured(tmp_path):
    """A sliding-window cache layer counts positions in a Python int, which a replayed graph would
    freeze: such a model decodes step by step, with generate's tokens."""
    import transformers

    torch.manual_seed(0)
    config = transformers.Qwen3Config(vocab_size=3000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                      use_sliding_window=True, sliding_window=8, max_window_layers=0)
    model = transformers.Qwen3ForCausalLM(config).eval()
    decoder = StaticGreedyDecoder(model, compiled=False, capture=True)
    batch = prompts(2, seed=10)
    width = max(map(len, batch))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in batch])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
    ours = decoder.generate(ids, mask, 12, [])
    assert decoder._state.capture_failed and decoder._state.graph is None  # noqa: SLF001 (refused before any CUDA call)
    with torch.no_grad():
        reference = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert ours.tolist() == reference[:, width:].tolist()


@pytest.mark.parametrize("signature", ["torch 2.13", "torch 2.11"])
def test_varlen_options_give_causal_grouped_attention_on_either_signature(monkeypatch, signature):
    """varlen_attn's keywords changed between torch releases (2.11 has window_size but not
    enable_gqa, as seen on a GPU machine; 2.13 has both); either way the options must mean causal
    attention where query head h reads key head h // group. Checked against SDPA, which runs on CPU."""
    import torch.nn.functional as F

    params = {"torch 2.13": {"scale", "window_size", "enable_gqa"}, "torch 2.11": {"scale", "window_size"}}[signature]
    monkeypatch.setattr(kernels, "_varlen_parameters", lambda: frozenset(params))
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(12, 8, 16, generator=g), torch.randn(12, 2, 16, generator=g), torch.randn(12, 2, 16, generator=g)
    options, k2, v2 = kernels._varlen_options(q, k, v, 0.25)
    assert options["window_size"] == (-1, 0) and options["scale"] == 0.25
    assert options.get("enable_gqa", False) == (signature == "torch 2.13")
    heads = lambda t: t.transpose(0, 1)[None]  # noqa: E731  (T, H, D) -> (1, H, T, D)
    expected = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=True, scale=0.25, enable_gqa=True)
    got = F.scaled_dot_product_attention(heads(q), heads(k2), heads(v2), is_causal=True, scale=0.25,
                                         enable_gqa=options.get("enable_gqa", False))
    torch.testing.assert_close(got, expected)


def test_varlen_options_on_the_oldest_signature_use_is_causal(monkeypatch):
    monkeypatch.setattr(kernels, "_varlen_parameters", lambda: frozenset({"is_causal", "return_aux"}))
    q, k = torch.zeros(4, 4, 8), torch.zeros(4, 4, 8)
    options, _, _ = kernels._varlen_options(q, k, k, 8 ** -0.5)
    assert options == {"is_causal": True}
    with pytest.raises(RuntimeError, match="no scale argument"):
        kernels._varlen_options(q, k, k, 0.5)



@pytest.fixture(scope="module")
def bf16_model(tmp_path_factory):
    model_dir = build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", seed=11)
    return model_dir, {"evsys_weights.json": b'{"format": "full", "lora_rank": 0}',
                       "model.safetensors": (Path(model_dir) / "model.safetensors").read_bytes()}


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_a_greedy_completion_is_the_same_whichever_prompts_share_its_batch(bf16_model, cache):
    """Evaluations cache completions per task and sample only new tasks, so a task is decoded beside
    other tasks from one build to the next: in bfloat16, where padding and row count change the
    rounding, each completion must still be the one a batch of all the prompts gives."""
    model_dir, blobs = bf16_model
    sampler = LocalBackend(LocalBackendConfig(device="cpu", dtype="bfloat16", decode_cache=cache, sample_batch_size=4)).sampling_client_from_weights(model_dir, blobs)
    batch = prompts(12, seed=12)
    together = sampler.sample(batch, max_tokens=8)
    half_then_rest = sampler.sample(batch[:6], max_tokens=8) + sampler.sample(batch[6:], max_tokens=8)
    alone = [sampler.sample([p], max_tokens=8)[0] for p in batch[::4]]
    assert half_then_rest == together
    assert alone == together[::4]
