"""Greedy decoding with a static KV cache and one compiled decode step (CUDA graphs on a GPU).

`generate` pays Python work and a host sync on every token; at evaluation batch sizes a small
model's decode step takes less time than that overhead. Here every tensor the step touches keeps
one shape per (batch, cache length): the KV cache is sized to a bucket, the attention mask spans the
whole cache, and the next token and its positions are the only inputs that change. The step then
compiles once and replays as a CUDA graph, and stop tokens are looked for every `check_every` steps
instead of after each token. The tokens are those of greedy `generate` with the same model: the
first comes from an eager prefill, each later one from `argmax` over float32 logits, and rows that
stopped keep decoding (their tail is cut off by the caller, as `generate` pads it).

Needs transformers' static cache with the `cache=` forward argument (transformers 5.x); where the
model lacks it, `supports_static_greedy` says so and the caller uses `generate`.
"""

from __future__ import annotations

import inspect

CACHE_BUCKET = 256  # cache lengths are rounded up to this, so nearby prompt widths share one compiled step


def supports_static_greedy(model) -> bool:
    """Whether the model's forward takes `cache=` and `logits_to_keep=` and a StaticCache can be built."""
    try:
        from transformers import StaticCache
    except ImportError:
        return False
    forward = inspect.signature(model.forward).parameters
    cache_args = inspect.signature(StaticCache.__init__).parameters
    return "cache" in forward and "logits_to_keep" in forward and "max_cache_len" in cache_args


def cache_length(width: int, max_tokens: int) -> int:
    """The static cache length for prompts `width` wide and `max_tokens` new tokens: a bucket multiple."""
    need = width + max_tokens
    return -(-need // CACHE_BUCKET) * CACHE_BUCKET


class StaticGreedyDecoder:
    """Greedy decoding for one frozen model; keeps the cache of the last (batch, length) it used."""

    def __init__(self, model, compiled: bool, check_every: int = 16):
        self.model = model
        self.check_every = check_every
        self._cache = None
        self._cache_shape: tuple[int, int] | None = None
        self._step = _decode_step
        if compiled:
            import torch

            self._step = torch.compile(_decode_step, mode="reduce-overhead", dynamic=False)

    def generate(self, ids, mask, max_tokens: int, stops: list[int]):
        """(batch, max_tokens) new token ids for left-padded `ids`/`mask` (batch, width), on the model's device."""
        import torch

        batch, width = ids.shape
        length = cache_length(width, max_tokens)
        full_mask = torch.ones((batch, length), dtype=mask.dtype, device=mask.device)
        full_mask[:, :width] = mask
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        out = torch.empty((batch, max_tokens), dtype=torch.long, device=ids.device)
        with torch.no_grad():
            cache = self._fresh_cache(batch, length)
            logits = self.model(input_ids=ids, attention_mask=full_mask, position_ids=positions, cache=cache,
                                use_cache=True, logits_to_keep=1).logits
            out[:, 0] = logits[:, -1].float().argmax(-1)
            last = positions[:, -1:]
            stop_ids = torch.tensor(stops, dtype=torch.long, device=ids.device) if stops else None
            for t in range(1, max_tokens):
                if stop_ids is not None and t % self.check_every == 0 and bool(torch.isin(out[:, :t], stop_ids).any(1).all()):
                    return out[:, :t]
                out[:, t] = self._step(self.model, out[:, t - 1 : t], last + t, full_mask, cache)
        return out

    def _fresh_cache(self, batch: int, length: int):
        """The static cache for this shape, emptied; one kept at a time (it holds batch × length × layers of KV)."""
        from transformers import StaticCache

        if self._cache_shape != (batch, length):
            self._cache = None  # free the old one before allocating
            self._cache = StaticCache(config=self.model.config, max_cache_len=length)
            self._cache_shape = (batch, length)
        else:
            self._cache.reset()
        return self._cache


def _decode_step(model, token, position, mask, cache):
    """One token per row: the argmax of float32 logits at the next position."""
    logits = model(input_ids=token, attention_mask=mask, position_ids=position, cache=cache, use_cache=True,
                   logits_to_keep=1).logits
    return logits[:, -1].float().argmax(-1)
