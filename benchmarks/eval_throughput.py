"""Evaluation throughput, side by side: the local backend's greedy sampler (what `eval` nodes use)
against plain `model.generate` at batch 64 on the same prompts, then new tokens/s of each and the
ratio. Both sides are warmed up on one full batch first (the local side's first call, which
compiles its decode step on a GPU, is reported apart as `first_call_s`).

    python benchmarks/eval_throughput.py                          # tiny model on CPU: checks the logic
    python benchmarks/eval_throughput.py --preset 0.5b --prompts 256 --max-tokens 128   # on a GPU
    python benchmarks/eval_throughput.py --preset 0.5b --dtype float32 ...   # identical outputs check

The completions are compared: `identical` (all of them), `same_completions` (the fraction of prompts
whose completions match) and `same_tokens` (the fraction of tokens before the first difference). In
float32 they must be identical. In bfloat16 a compiled decode step rounds differently from eager
`generate`, and a randomly initialised model's logits are nearly flat, so near-ties can flip; read
the agreement figures there, and the float32 run for exactness.

Prompts are rendered with the real Qwen3 chat template from walkthrough-like queries; the model is
randomly initialised (the shape matters for speed, not the weights), so completions run to
--max-tokens unless a stop token comes up.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from evsys_rules.backends.local import LocalBackend, LocalBackendConfig
from evsys_rules.data.chat_tokens import end_of_turn_ids, load_tokenizer, prompt_ids
from evsys_rules.models.tiny import build_tiny_model

PRESETS = {
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "head_dim": 32, "intermediate_size": 256},
    "0.5b": {"hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
             "head_dim": 128, "intermediate_size": 3072},
}
SYSTEM = "You select the single best tool for the user's query."


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=64, help="prompts per generate() call, both sides")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto")
    p.add_argument("--decode", choices=["auto", "static", "static-trees", "generate-static", "dynamic"], default="auto",
                   help="the local side's decode_cache: auto = the backend's default (static on CUDA); static = the "
                        "static-cache greedy loop (on CUDA its step compiled and captured as one CUDA graph); "
                        "static-trees = the same loop with the step compiled in torch's reduce-overhead mode "
                        "(torch's CUDA graph trees, no capture of our own); generate-static = transformers' generate with "
                        "its static cache (compiled on CUDA); dynamic = generate with its dynamic cache")
    p.add_argument("--repeat", type=int, default=1, help="timed runs per side; the median is reported")
    p.add_argument("--diagnose", action="store_true",
                   help="log torch.compile's graph breaks, recompilations and performance hints (a decode step "
                        "that skipped CUDA graphs says why there) to stderr")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def make_prompts(tok, n: int) -> list[list[int]]:
    rng = random.Random(0)
    verbs, things = ["create", "update", "send", "find", "share"], ["an event", "a message", "an issue", "a page"]
    return [
        prompt_ids(tok, [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": f"Query: {rng.choice(verbs)} {rng.choice(things)} #{i}\nReply with the tool slug inside <answer></answer>."}])
        for i in range(n)
    ]


def run_local(model_dir: Path, blobs: dict, prompts, stops, args) -> tuple[float, list, float, bool]:
    """(seconds, completions, seconds of the first call with compilation, whether the step replays as our CUDA graph)."""
    cache = {"auto": "auto", "static": "static", "static-trees": "static", "generate-static": "static",
             "dynamic": "dynamic"}[args.decode]
    backend = LocalBackend(LocalBackendConfig(device=args.device, dtype=args.dtype, sample_batch_size=args.batch_size,
                                              decode_cache=cache))
    sampler = backend.sampling_client_from_weights(model_dir, blobs)
    if args.decode == "generate-static":
        sampler._greedy_decoder = lambda: None  # noqa: SLF001 (measure transformers' own static path)
    if args.decode == "static-trees":
        from evsys_rules.backends.local.greedy_decode import StaticGreedyDecoder

        sampler._greedy = StaticGreedyDecoder(sampler.model, compiled=sampler.device.type == "cuda", capture=False)  # noqa: SLF001
    started = time.perf_counter()
    sampler.sample(prompts[: args.batch_size], max_tokens=args.max_tokens, stop_token_ids=stops)  # warm up
    _sync(sampler.device)
    first_call = time.perf_counter() - started
    times = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        out = sampler.sample(prompts, max_tokens=args.max_tokens, stop_token_ids=stops)
        _sync(sampler.device)
        times.append(time.perf_counter() - started)
    state = getattr(getattr(sampler, "_greedy", None), "_state", None)  # noqa: SLF001 (whether a graph replays)
    return statistics.median(times), [o[0] for o in out], first_call, state is not None and state.graph is not None


def run_generate(model_dir: Path, prompts, stops, args, pad: int) -> tuple[float, list]:
    """Plain transformers: left-padded batches of `batch_size`, `generate` with its default cache."""
    import torch
    from transformers import AutoModelForCausalLM

    device = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if args.dtype == "bfloat16" or (args.dtype == "auto" and device.type == "cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, attn_implementation="sdpa").to(device).eval()
    model.generation_config.eos_token_id = None

    def batch(chunk):
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(chunk):
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        with torch.inference_mode():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=args.max_tokens,
                                 do_sample=False, eos_token_id=stops, pad_token_id=pad)
        return [_cut(seq, stops) for seq in out[:, width:].tolist()]

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # the same batches as the local sampler
    batch([prompts[i] for i in order[: args.batch_size]])  # warm up
    _sync(device)
    times = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        results = [None] * len(prompts)
        for start in range(0, len(order), args.batch_size):
            idx = order[start:start + args.batch_size]
            for i, seq in zip(idx, batch([prompts[i] for i in idx])):
                results[i] = seq
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times), results


def agreement(ours: list, theirs: list) -> dict:
    """identical, the fraction of equal completions, and of tokens before each completion's first difference."""
    same = sum(a == b for a, b in zip(ours, theirs))
    prefix = 0
    for a, b in zip(ours, theirs):
        k = 0
        while k < min(len(a), len(b)) and a[k] == b[k]:
            k += 1
        prefix += k
    total = max(1, sum(max(len(a), len(b)) for a, b in zip(ours, theirs)))
    return {"identical": ours == theirs, "same_completions": same / max(1, len(ours)), "same_tokens": prefix / total}


def _cut(seq, stops):
    for k, t in enumerate(seq):
        if t in stops:
            return seq[:k]
    return seq


def _sync(device) -> None:
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.diagnose:
        import torch

        torch._logging.set_logs(graph_breaks=True, recompiles=True, perf_hints=True)
    with tempfile.TemporaryDirectory(prefix="evsys-eval-bench-") as tmp:
        model_dir = build_tiny_model(Path(tmp) / "model", seed=0, **PRESETS[args.preset])
        tok = load_tokenizer(str(model_dir))
        prompts = make_prompts(tok, args.prompts)
        stops = end_of_turn_ids(tok)
        weights = {"evsys_weights.json": json.dumps({"format": "full", "lora_rank": 0}).encode(),
                   "model.safetensors": (model_dir / "model.safetensors").read_bytes()}
        local_s, local_out, first_call, captured = run_local(model_dir, weights, prompts, stops, args)
        base_s, base_out = run_generate(model_dir, prompts, stops, args, tok.pad_token_id or 0)
    new_tokens = sum(len(o) for o in local_out)
    results = {"preset": args.preset, "prompts": args.prompts, "max_tokens": args.max_tokens, "decode": args.decode,
               "dtype": args.dtype, **agreement(local_out, base_out),
               "new_tokens": new_tokens, "local_tok_s": new_tokens / local_s, "generate_tok_s": sum(len(o) for o in base_out) / base_s,
               "first_call_s": first_call, "repeat": args.repeat, "captured": captured}
    results["speedup"] = results["local_tok_s"] / results["generate_tok_s"]
    batches = -(-args.prompts // args.batch_size)
    results["local_ms_per_decode_step"] = 1000 * local_s / (batches * args.max_tokens)  # upper bound: prefill included
    if args.json:
        print(json.dumps(results))
    else:
        print(f"{args.prompts} prompts, max {args.max_tokens} new tokens, batch {args.batch_size}, decode {args.decode}: "
              f"identical outputs: {results['identical']} (same completions {results['same_completions']:.3f}, "
              f"same tokens {results['same_tokens']:.3f})")
        print(f"local sampler  {results['local_tok_s']:10.0f} new tok/s  (first call, compilation included: {first_call:.1f} s)")
        print(f"model.generate {results['generate_tok_s']:10.0f} new tok/s")
        print(f"speedup local/generate: {results['speedup']:.2f}x  (goal >= 10x on a GPU)")
    return results


if __name__ == "__main__":
    main()
