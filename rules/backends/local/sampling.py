"""Sampling on the local backend: batched generation (KV cache, left padding).

Greedy sampling with the static cache runs `StaticGreedyDecoder` (one compiled decode step); the
rest goes through transformers' `generate`.

A greedy completion depends on its prompt alone, never on the prompts decoded beside it: the
evaluation caches completions per task and samples only the tasks it has not seen, so a batch
holds other tasks from one build to the next. Every greedy batch has one shape, decided by the
prompt's own length: `greedy_rows` rows (a short batch filled with copies of a prompt) and a
width of the prompt's length rounded up to `WIDTH_STEP` (only prompts of the same width share a
batch). Rows never see each other and every kernel runs on the same shapes, so in low precision
too, where a different padding or row count changes the rounding and can flip a near-tie, a
task's completion is what a build that sampled all tasks at once makes. Sampling (temperature
> 0) decodes each prompt alone (eval.py `_sample`)."""

from __future__ import annotations

import contextlib
from typing import Sequence

from .model_io import global_rng_lock

WIDTH_STEP = 32  # greedy batches pad prompts to a multiple of this many tokens
CPU_GREEDY_ROWS = 8  # greedy batches on a CPU have this many rows (fewer where sample_batch_size is smaller)

class LocalSamplingClient:
    """Batched generation (KV cache, left padding) over a frozen model."""

    def __init__(self, model, device, pad_token_id: int, batch_size: int = 64, cache: str = "dynamic"):
        from transformers import GenerationConfig

        self.model = model.eval()
        # decode exactly as the sampling params say: none of the model folder's generation_config.json
        # (repetition_penalty, no_repeat_ngram_size, num_beams, min_length, a default eos, ...) applies to
        # `generate`, as none applies to the static greedy decoder; only stop_token_ids end a completion
        self.model.generation_config = GenerationConfig()
        self.device = device
        self.pad_token_id = pad_token_id
        self.batch_size = batch_size
        # "static": a preallocated KV cache, which lets transformers compile the decode step
        # (CUDA graphs on a GPU): decoding is overhead-bound, not FLOP-bound
        self.cache = cache
        self._greedy = None  # StaticGreedyDecoder, made on the first greedy call with the static cache

    def sample(
        self,
        prompts: list[list[int]],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        stop_token_ids: Sequence[int] = (),
        n: int = 1,
        seed: int = 0,
    ) -> list[list[list[int]]]:
        """Per prompt, `n` completions of generated ids, cut before the first stop token."""
        import torch

        if max_tokens < 1 or n < 1 or temperature < 0:
            raise ValueError(f"sample: need max_tokens >= 1, n >= 1, temperature >= 0 (got {max_tokens}, {n}, {temperature})")
        if temperature == 0 and n > 1:
            n_runs = 1  # greedy: every copy would be identical
        else:
            n_runs = n
        greedy = temperature == 0
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[list[list[int]]] = [[] for _ in prompts]
        stops = set(int(t) for t in stop_token_ids)
        per_call = self.greedy_rows if greedy else max(1, self.batch_size // n_runs)
        rng = global_rng_lock if temperature > 0 else contextlib.nullcontext()  # greedy draws nothing
        with rng, torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            for idx in _batches(order, prompts, per_call, by_width=greedy):
                outputs = self._generate([prompts[i] for i in idx], max_tokens, temperature, list(stops), n_runs)
                for j, i in enumerate(idx):
                    for seq in outputs[j * n_runs : (j + 1) * n_runs]:
                        results[i].append(_cut_at_stop(seq, stops))
        if n_runs != n:
            results = [r * n for r in results]
        return results

    @property
    def greedy_rows(self) -> int:
        """The rows of every greedy batch: `batch_size` on a GPU, where a decode step costs about
        the same for 1 row as for 64; at most CPU_GREEDY_ROWS on a CPU, where every row costs its
        share (a batch of one prompt is not filled up to 64)."""
        return self.batch_size if self.device.type == "cuda" else min(self.batch_size, CPU_GREEDY_ROWS)

    def _generate(self, prompts, max_tokens, temperature, stops, n_runs) -> list[list[int]]:
        import torch

        width = max(len(p) for p in prompts)
        if width == 0:
            raise ValueError("sample: empty prompt")
        greedy = self._greedy_decoder() if temperature == 0 else None
        rows = len(prompts)
        if temperature == 0:
            # one batch shape per width (see the module's docstring), one compiled step: a short
            # batch is filled up with copies of its last prompt, whose completions are dropped
            width = padded_width(width)
            prompts = list(prompts) + [prompts[-1]] * (self.greedy_rows - rows)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[row, width - len(p) :] = 1
        if greedy is not None:
            out = greedy.generate(ids.to(self.device), mask.to(self.device), max_tokens, stops)
            return out[:rows].tolist()
        kwargs = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 else {"do_sample": False}
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                max_new_tokens=max_tokens,
                num_return_sequences=n_runs,
                eos_token_id=stops or None,
                pad_token_id=self.pad_token_id,
                use_cache=True,
                **({"cache_implementation": "static"} if self.cache == "static" else {}),
                **kwargs,
            )
        return out[:rows, width:].tolist() if temperature == 0 else out[:, width:].tolist()

    def _greedy_decoder(self):
        """The static-cache greedy decoder (compiled on CUDA), or None where `generate` must do."""
        from .greedy_decode import StaticGreedyDecoder, supports_static_greedy

        if self.cache != "static":
            return None
        if self._greedy is None and supports_static_greedy(self.model):
            self._greedy = StaticGreedyDecoder(self.model, compiled=self.device.type == "cuda")
        return self._greedy


def padded_width(length: int) -> int:
    return -(-length // WIDTH_STEP) * WIDTH_STEP


def _batches(order: list[int], prompts: list, per_call: int, by_width: bool) -> list[list[int]]:
    """Consecutive runs of `order` (prompts by length) of at most `per_call`; with `by_width`, a
    batch never mixes padded widths."""
    batches: list[list[int]] = []
    for i in order:
        last = batches[-1] if batches else None
        if last is None or len(last) == per_call or (by_width and padded_width(len(prompts[i])) != padded_width(len(prompts[last[0]]))):
            batches.append([i])
        else:
            last.append(i)
    return batches


def _cut_at_stop(seq: list[int], stops: set[int]) -> list[int]:
    for k, tok in enumerate(seq):
        if tok in stops:
            return seq[:k]
    return seq


def pad_id(model) -> int:
    generation = getattr(model, "generation_config", None)
    for candidate in (getattr(generation, "pad_token_id", None), model.config.pad_token_id, model.config.eos_token_id):
        if isinstance(candidate, list):
            candidate = candidate[0] if candidate else None
        if candidate is not None:
            return int(candidate)
    return 0
