"""Greedy decoding with a static KV cache and one decode step replayed as a CUDA graph on a GPU.

`generate` pays Python work and a host sync on every token; at evaluation batch sizes a small
model's decode step takes less time than that overhead. Here every tensor the step touches lives
in a buffer of one shape per (batch, cache length): the KV cache is sized to a bucket, the attention
mask spans the whole cache, and the step reads the last token and its positions from buffers and
writes the next token, the positions and the step counter back in place. On a GPU the model part of
the step is compiled (fused kernels) and the whole step, bookkeeping included, is captured once as a
CUDA graph, so each later token costs one graph replay and no Python. Stop tokens are looked for
every `check_every` steps instead of after each token. The tokens are those of greedy `generate`
with the same model: the first comes from an eager prefill, each later one from `argmax` over
float32 logits, and rows that stopped keep decoding (their tail is cut off by the caller, as
`generate` pads it).

A graph replays the kernels it recorded and nothing else, so it is captured only where the step
keeps all its state in tensors: a cache whose layers are all plain `StaticLayer`s (a sliding-window
layer counts positions in a Python int) and a fixed rotary table (a `dynamic` or `longrope` one is
re-derived on the host). Elsewhere, or when capture fails, the compiled step runs
per token (torch.compile's own guards then see every change).

Needs transformers' static cache with the `cache=` forward argument (transformers 5.x); where the
model lacks it, `supports_static_greedy` says so and the caller uses `generate`.
"""

from __future__ import annotations

import inspect
import logging

CACHE_BUCKET = 256  # cache lengths are rounded up to this, so nearby prompt widths share one compiled step
WARM_STEPS = 2  # compiled steps run before capture: the first compiles, the second checks it recompiles nothing

log = logging.getLogger(__name__)


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
    """Greedy decoding for one frozen model; keeps the buffers (and graph) of the last (batch, length) it used."""

    def __init__(self, model, compiled: bool, check_every: int = 16, capture: bool | None = None):
        from .kernels import use_decode_attention

        self.model = model
        use_decode_attention(model)  # grouped key/value heads read once per decode step, not copied
        self.check_every = check_every
        self.capture = compiled if capture is None else capture  # CUDA graphs need a GPU, and pay off compiled
        self._state: _DecodeState | None = None
        self._model_step = _decode_step
        if compiled:
            import torch

            # captured whole below (bookkeeping included); uncaptured, torch's own CUDA graphs replay the model part
            self._model_step = torch.compile(_decode_step, mode=None if self.capture else "reduce-overhead", dynamic=False)

    def generate(self, ids, mask, max_tokens: int, stops: list[int]):
        """(batch, max_tokens) new token ids for left-padded `ids`/`mask` (batch, width), on the model's device."""
        import torch

        batch, width = ids.shape
        state = self._state_for(batch, cache_length(width, max_tokens), ids.device)
        state.mask.fill_(1)
        state.mask[:, :width] = mask
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        with torch.no_grad():
            state.cache.reset()
            logits = self.model(input_ids=ids, attention_mask=state.mask, position_ids=positions, cache=state.cache,
                                use_cache=True, logits_to_keep=1).logits
            first = logits[:, -1].float().argmax(-1)
            state.out[:, 0] = first
            state.token.copy_(first[:, None])
            state.position.copy_(positions[:, -1:] + 1)
            state.step.fill_(1)
            stop_ids = torch.tensor(stops, dtype=torch.long, device=ids.device) if stops else None
            for t in range(1, max_tokens):
                if stop_ids is not None and t % self.check_every == 0 and bool(torch.isin(state.out[:, :t], stop_ids).any(1).all()):
                    return state.out[:, :t].clone()
                self._advance(state)
        return state.out[:, :max_tokens].clone()

    def _advance(self, state: "_DecodeState") -> None:
        """One decode step on `state`'s buffers: by graph replay once one is captured."""
        if state.graph is not None:
            state.graph.replay()
            return
        if self.capture and state.warm_steps >= WARM_STEPS and not state.capture_failed:
            state.graph = self._capture(state)  # records the step; it runs at the replay below
            if state.graph is not None:
                state.graph.replay()
                return
        self._step(state)
        state.warm_steps += 1

    def _step(self, state: "_DecodeState") -> None:
        next_token = self._model_step(self.model, state.token, state.position, state.mask, state.cache)
        state.out.index_copy_(1, state.step, next_token[:, None])
        state.token.copy_(next_token[:, None])
        state.position.add_(1)
        state.step.add_(1)

    def _capture(self, state: "_DecodeState"):
        """The step recorded as a CUDA graph, or None (logged; the compiled step then runs per token)."""
        import torch

        if not (_tensor_state_only(state.cache) and _static_rope(self.model.config)):
            state.capture_failed = True
            return None
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.graph(graph, stream=stream):
                self._step(state)
        except Exception as error:  # noqa: BLE001 (any capture failure: fall back to the uncaptured step)
            log.warning("greedy decode: CUDA graph capture failed (%s); decoding step by step", error)
            state.capture_failed = True
            return None
        torch.cuda.current_stream().wait_stream(stream)
        return graph

    def _state_for(self, batch: int, length: int, device) -> "_DecodeState":
        """The buffers for this shape; one set kept at a time (the cache holds batch × length × layers of KV)."""
        if self._state is None or self._state.shape != (batch, length):
            self._state = None  # free the old buffers (and graph) before allocating
            self._state = _DecodeState(self.model.config, batch, length, device)
        return self._state


class _DecodeState:
    """The static buffers of one (batch, cache length): KV cache, mask, last token, positions, step, output."""

    def __init__(self, config, batch: int, length: int, device):
        import torch
        from transformers import StaticCache

        self.shape = (batch, length)
        self.cache = StaticCache(config=config, max_cache_len=length)
        self.mask = torch.ones((batch, length), dtype=torch.long, device=device)
        self.token = torch.zeros((batch, 1), dtype=torch.long, device=device)
        self.position = torch.zeros((batch, 1), dtype=torch.long, device=device)
        self.step = torch.zeros((1,), dtype=torch.long, device=device)
        self.out = torch.zeros((batch, length), dtype=torch.long, device=device)  # the cache bounds the new tokens
        self.graph = None
        self.warm_steps = 0
        self.capture_failed = False


def _tensor_state_only(cache) -> bool:
    """Whether every layer of the static cache keeps its state in tensors (plain StaticLayer)."""
    from transformers.cache_utils import StaticLayer

    return all(type(layer) is StaticLayer for layer in getattr(cache, "layers", [None]))


def _static_rope(config) -> bool:
    """Whether the rotary embedding is a fixed table: a `dynamic` or `longrope` one is re-derived from the
    positions seen, on the host, which a replayed graph would never redo."""
    scaling = getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None) or {}
    kind = str(scaling.get("rope_type") or scaling.get("type") or "default") if isinstance(scaling, dict) else "default"
    return "dynamic" not in kind and "longrope" not in kind


def _decode_step(model, token, position, mask, cache):
    """One token per row: the argmax of float32 logits at the next position."""
    logits = model(input_ids=token, attention_mask=mask, position_ids=position, cache=cache, use_cache=True,
                   logits_to_keep=1).logits
    return logits[:, -1].float().argmax(-1)
