"""Training throughput: evsys's local backend (packed, LM head at loss positions) vs a plain transformers loop.

Both train the same randomly initialised Qwen3-shaped model on the same synthetic chat-like batches
(lengths uniform in [min_len, max_len], loss on the last 30% of each sequence) and report real
(non-pad) tokens per second, skipping warmup steps. The baseline pads each batch, computes full
logits and HF's loss, and steps torch's default AdamW.

    python benchmarks/train_throughput.py                      # tiny shape on CPU, < 1 minute
    python benchmarks/train_throughput.py --preset 0.5b --steps 20 --min-len 50 --max-len 1000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from evsys_rules.algorithms.sft import SFTConfig  # noqa: E402
from evsys_rules.algorithms.sft_loop import batch_indices, train_sft  # noqa: E402
from evsys_rules.backends.base import Datum  # noqa: E402
from evsys_rules.backends.local import LocalBackend, LocalBackendConfig  # noqa: E402
from evsys_rules.models.tiny import build_tiny_model  # noqa: E402

PRESETS = {
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "head_dim": 32, "intermediate_size": 256},
    "0.5b": {"hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
             "head_dim": 128, "intermediate_size": 3072},
}
LOCAL_SIDES = {"off": [("local", False)], "on": [("local_compiled", True)],
               "both": [("local", False), ("local_compiled", True)]}
LOSS_FRACTION = 0.3
LEARNING_RATE = 1e-5


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--hidden", type=int, help="override hidden_size")
    p.add_argument("--layers", type=int, help="override num_hidden_layers")
    p.add_argument("--intermediate", type=int, help="override intermediate_size")
    p.add_argument("--steps", type=int, default=4, help="timed steps per side (after warmup)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per side")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--min-len", type=int, default=32)
    p.add_argument("--max-len", type=int, default=160, help="keep small on CPU: the baseline holds full logits")
    p.add_argument("--lora-rank", type=int, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto")
    p.add_argument("--compile", choices=["off", "on", "both"], default="off",
                   help="the local side's `compile` setting (torch.compile per decoder layer; CUDA only); both = "
                        "run the local side twice, eager then compiled, against one baseline")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="after the timed steps, profile this many more steps of each side (torch.profiler) and "
                        "print their top operators to stderr: where a slow side spends its time")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's dense bf16 peak, for MFU (default: 989 on H100/H200, none on CPU)")
    return p.parse_args(argv)


def model_shape(args) -> dict:
    shape = dict(PRESETS[args.preset])
    for key, value in (("hidden_size", args.hidden), ("num_hidden_layers", args.layers),
                       ("intermediate_size", args.intermediate)):
        if value:
            shape[key] = value
    return shape


def synthetic_data(count: int, min_len: int, max_len: int, seed: int = 0) -> list[Datum]:
    """Chat-like rows: random ordinary tokens, loss on the trailing 30% (the 'assistant turn')."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in rng.integers(min_len, max_len + 1, count):
        ids = rng.integers(200, 150000, n)
        weights = np.zeros(n, np.float32)
        weights[n - max(1, int(n * LOSS_FRACTION)) :] = 1.0
        rows.append(Datum(ids, weights))
    return rows


def run_local(model_dir: Path, data, args, total_steps: int, compiled: bool = False) -> dict:
    backend = LocalBackend(LocalBackendConfig(device=args.device, dtype=args.dtype, compile=compiled))
    started = time.perf_counter()
    client = backend.create_training_client(model_dir, args.lora_rank, seed=0)
    cfg = SFTConfig(learning_rate=LEARNING_RATE, max_steps=total_steps + args.profile, batch_size=args.batch_size,
                    lora_rank=args.lora_rank)  # the profiled steps come after the timed ones
    sync = _synchronizer(client.device)
    marks: list[float] = []
    profiler = _StepProfiler("local (compiled)" if compiled else "local", client.device, total_steps, args.profile)

    def on_step(step, metrics):
        sync()
        marks.append(time.perf_counter())
        profiler.step(step)

    start = time.perf_counter()
    setup_s = start - started
    metrics = train_sft(client, data, cfg, seed=0, save_steps=set(), resume=None, on_step=on_step,
                        on_checkpoint=lambda *a: None)
    metrics, marks = metrics[:total_steps], marks[:total_steps]
    timed = metrics[args.warmup:]
    seconds = marks[-1] - (marks[args.warmup - 1] if args.warmup else start)
    tokens = sum(m["num_tokens"] for m in timed)
    return {"tokens_per_s": tokens / seconds, "s_per_step": seconds / len(timed),
            "final_nll": metrics[-1]["train_mean_nll"], "peak_mem_gib": _peak_memory(client.device),
            "device": str(client.device), "dtype": client.info()["dtype"], "compiled": compiled,
            "warmup_s": round(setup_s + (marks[args.warmup - 1] - start if args.warmup else 0.0), 1)}


def run_baseline(model_dir: Path, data, args, total_steps: int) -> dict:
    """Plain transformers: right-padded batches, full logits, HF loss, default AdamW."""
    import torch
    from transformers import AutoModelForCausalLM

    device = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    bf16 = args.dtype == "bfloat16" or (args.dtype == "auto" and device.type == "cuda")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="sdpa").to(device)
    if args.lora_rank:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=args.lora_rank, lora_alpha=32, target_modules="all-linear"))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE,
                                  betas=(0.9, 0.95), eps=1e-12, weight_decay=0.0)
    sync = _synchronizer(device)
    real_tokens, loss = 0, None
    profiler = _StepProfiler("baseline", device, total_steps, args.profile)
    start = time.perf_counter()
    for step in range(1, total_steps + args.profile + 1):
        if step == total_steps + 1:  # the timed steps are done; the rest are profiled
            sync()
            seconds, timed_tokens, timed_loss = time.perf_counter() - start, real_tokens, loss.item()
        if step == args.warmup + 1:
            sync()
            start, real_tokens = time.perf_counter(), 0
        batch = [data[i] for i in batch_indices(len(data), args.batch_size, 0, step)]
        width = max(d.num_tokens for d in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for row, d in enumerate(batch):
            n = d.num_tokens
            ids[row, :n] = torch.from_numpy(d.input_ids)
            mask[row, :n] = 1
            labels[row, :n] = torch.from_numpy(np.where(d.weights > 0, d.input_ids, -100))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        real_tokens += sum(d.num_tokens for d in batch)
        profiler.step(step)
    if not args.profile:
        sync()
        seconds, timed_tokens, timed_loss = time.perf_counter() - start, real_tokens, loss.item()
    return {"tokens_per_s": timed_tokens / seconds, "s_per_step": seconds / (total_steps - args.warmup),
            "final_nll": timed_loss, "peak_mem_gib": _peak_memory(device), "device": str(device),
            "dtype": "bfloat16" if bf16 else "float32"}


def training_flops_per_token(model_dir: Path, lora_rank: int, mean_len: float) -> float:
    """Model FLOPs per trained token (Kaplan/PaLM style): 6·N for the dense weights (4·N when they
    are frozen under LoRA: no weight gradients) plus 12·layers·hidden·seq for attention."""
    config = json.loads((model_dir / "config.json").read_text())
    hidden, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    heads, kv, head_dim = config["num_attention_heads"], config["num_key_value_heads"], config.get("head_dim", hidden // config["num_attention_heads"])
    inter = config["intermediate_size"]
    per_layer = hidden * head_dim * (heads + 2 * kv) + heads * head_dim * hidden + 3 * hidden * inter
    dense = layers * per_layer + vocab * hidden  # the LM head (tied embeddings count once)
    weights = (4 if lora_rank else 6) * dense
    return weights + 12 * layers * heads * head_dim * mean_len


def _default_peak_tflops(device: str) -> float | None:
    """Dense bf16 peak of the GPU in use (H100/H200 SXM: 989 TFLOPS); None elsewhere."""
    if not device.startswith("cuda"):
        return None
    import torch

    name = torch.cuda.get_device_name()
    return 989.0 if ("H100" in name or "H200" in name) else None


def _synchronizer(device):
    import torch

    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


class _StepProfiler:
    """torch.profiler over the `extra` steps after step `after`; prints the top operators at the end."""

    def __init__(self, side: str, device, after: int, extra: int):
        self.side, self.after, self.extra, self.profile = side, after, extra, None
        self.cuda = getattr(device, "type", "cpu") == "cuda"

    def step(self, step: int) -> None:
        if not self.extra:
            return
        if step == self.after:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
            self.profile = profile(activities=activities)
            self.profile.__enter__()
            self.started = time.perf_counter()
        elif step == self.after + self.extra and self.profile is not None:
            wall = time.perf_counter() - self.started
            self.profile.__exit__(None, None, None)
            table = self.profile.key_averages()
            sort = "self_device_time_total" if self.cuda else "self_cpu_time_total"
            on_device = [e for e in table if not self.cuda or str(getattr(e, "device_type", "")).endswith("CUDA")]
            busy = sum(getattr(e, sort, 0) for e in on_device) / 1e6  # kernels' own time (microseconds), each once
            print(f"== profile of {self.side}, {self.extra} steps in {wall:.3f} s wall; "
                  f"{'GPU' if self.cuda else 'CPU'} busy {busy:.3f} s (self time summed), by {sort}", file=sys.stderr)
            print(table.table(sort_by=sort, row_limit=30), file=sys.stderr, flush=True)


def _release_memory() -> None:
    """Free what the side that just ran left on the GPU, so the next side has the whole card."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_memory(device):
    import torch

    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return round(peak, 2)


def main(argv=None) -> dict:
    args = parse_args(argv)
    total_steps = args.steps + args.warmup
    data = synthetic_data(total_steps * args.batch_size, args.min_len, args.max_len)
    shape = model_shape(args)
    with tempfile.TemporaryDirectory(prefix="evsys-bench-") as tmp:
        model_dir = build_tiny_model(Path(tmp) / "model", seed=0, **shape)
        results = {"shape": shape, "batch_size": args.batch_size, "steps": args.steps,
                   "lengths": [args.min_len, args.max_len]}
        for side, compiled in LOCAL_SIDES[args.compile]:
            try:
                results[side] = run_local(model_dir, data, args, total_steps, compiled)
            except Exception as error:  # noqa: BLE001 (a failed variant is reported; the others still run)
                results[side] = {"error": f"{type(error).__name__}: {error}"}
            print(json.dumps({"partial": True, **results}), file=sys.stderr, flush=True)  # kept if a later side fails
            _release_memory()
        if not args.skip_baseline:
            results["baseline"] = run_baseline(model_dir, data, args, total_steps)
            for side, _ in LOCAL_SIDES[args.compile]:
                if "tokens_per_s" in results[side]:
                    results[side]["speedup"] = results[side]["tokens_per_s"] / results["baseline"]["tokens_per_s"]
            first = LOCAL_SIDES[args.compile][0][0]
            results["speedup"] = results[first].get("speedup")
        flops_per_token = training_flops_per_token(model_dir, args.lora_rank, (args.min_len + args.max_len) / 2)
        device = next((r["device"] for r in results.values() if isinstance(r, dict) and "device" in r), "cpu")
        peak = args.peak_tflops or _default_peak_tflops(device)
        for side in ("local", "local_compiled", "baseline"):
            if "tokens_per_s" in results.get(side, {}):
                results[side]["mfu"] = results[side]["tokens_per_s"] * flops_per_token / (peak * 1e12) if peak else None
    if args.json:
        print(json.dumps(results))
    else:
        print(f"shape {shape}  batch {args.batch_size}  lengths {args.min_len}-{args.max_len}  timed steps {args.steps}")
        for side in ("local", "local_compiled", "baseline"):
            if side in results:
                r = results[side]
                if "error" in r:
                    print(f"{side:14s} failed: {r['error']}")
                    continue
                mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
                print(f"{side:14s} {r['tokens_per_s']:10.0f} real tok/s  {r['s_per_step']:.3f} s/step  "
                      f"nll {r['final_nll']:.3f}  {r['device']} {r['dtype']}  peak {r['peak_mem_gib']} GiB  MFU {mfu}")
        for side, _ in LOCAL_SIDES[args.compile]:
            if results[side].get("speedup"):
                print(f"speedup {side}/baseline: {results[side]['speedup']:.2f}x")
    return results


if __name__ == "__main__":
    main()
