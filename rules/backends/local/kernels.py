"""Kernels of the local backend's speed path: packed (varlen) attention, a fused LM head +
weighted NLL that never keeps full logits, and padding-free packing of datums.

torch is imported inside functions only.
"""

from __future__ import annotations

from typing import Sequence

from ..base import Datum

PACKED_ATTENTION = "evsys_packed"

# ----------------------------------------------------------------------------- packed attention


def packed_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function over one packed row: (1, H, T, D) in, (1, T, H, D) out.

    Reads `cu_seq_lens_q` (int32 tensor of sequence starts + total) and `evsys_bounds` (the same as a
    Python list); each token attends causally within its own sequence only, and within the layer's
    `sliding_window` (the last `sliding_window` positions, itself included) when the model sets one,
    as transformers' own kernels do. Attention dropout is applied as SDPA applies it.
    """
    import torch
    import torch.nn.functional as F

    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    bounds = kwargs.get("evsys_bounds")
    if cu_seq_lens is None or (bounds is None and kwargs.get("evsys_kernel") != "varlen"):
        raise RuntimeError("evsys_packed attention needs cu_seq_lens_q and evsys_bounds (use LocalTrainingClient)")
    if query.shape[0] != 1:
        raise RuntimeError(f"evsys_packed attention expects one packed row, got batch {query.shape[0]}")
    window = kwargs.get("sliding_window")
    if kwargs.get("evsys_kernel") == "varlen":
        varlen_attn = _varlen_function()
        max_len = kwargs["max_length_q"]
        dtype = kwargs.get("evsys_dtype") or value.dtype  # flash kernels need bf16/fp16; q/k leave RMSNorm in fp32
        q, k, v = (t[0].transpose(0, 1).to(dtype).contiguous() for t in (query, key, value))
        if dropout:
            raise RuntimeError("this model trains with attention dropout, which the varlen kernel lacks; use attention: sdpa_loop")
        options, k, v = _varlen_options(q, k, v, scaling, window)
        out = varlen_attn(q, k, v, cu_seq_lens, cu_seq_lens, max_len, max_len, **options)
        return out.unsqueeze(0), None
    gqa = query.shape[1] != key.shape[1]
    pieces = [
        F.scaled_dot_product_attention(
            query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], scale=scaling, enable_gqa=gqa, dropout_p=dropout,
            **_causal_mask(e - s, window, query.device),
        )
        for s, e in zip(bounds[:-1], bounds[1:])
    ]
    out = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)
    return out.transpose(1, 2), None


def _causal_mask(length: int, window, device) -> dict:
    """SDPA's keyword for causal attention over `length` positions, banded to the last `window`
    positions (query i reads keys i - window + 1 .. i) where a window is set and shorter."""
    if not window or window >= length:
        return {"is_causal": True}
    import torch

    offset = torch.arange(length, device=device)[:, None] - torch.arange(length, device=device)[None, :]
    return {"attn_mask": (offset >= 0) & (offset < window)}


def _varlen_options(q, k, v, scaling, window=None):
    """Causal, scaled, grouped-query keyword arguments (banded to `window` positions when set) in
    the form this torch's `varlen_attn` takes.

    torch 2.13 takes `window_size=(-1, 0)` (or `(window - 1, 0)`) and `enable_gqa`; 2.11 takes `window_size` but not
    `enable_gqa`, and the first releases take `is_causal`. Without `enable_gqa` they want as many
    key/value heads as query heads, so the groups are expanded here (query head h reads key/value
    head h // group, as in SDPA's enable_gqa)."""
    params = _varlen_parameters()
    options = {}
    if "window_size" in params:
        options["window_size"] = (window - 1 if window else -1, 0)
    elif window:
        raise RuntimeError("this torch's varlen_attn has no window_size, which this model's sliding window needs; use attention: sdpa_loop")
    elif "is_causal" in params:
        options["is_causal"] = True
    else:
        raise RuntimeError("torch.nn.attention.varlen.varlen_attn takes neither window_size nor is_causal; use attention: sdpa_loop")
    if scaling is not None:
        if "scale" in params:
            options["scale"] = scaling
        elif abs(scaling - q.shape[-1] ** -0.5) > 1e-12:
            raise RuntimeError("this torch's varlen_attn has no scale argument; use attention: sdpa_loop")
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in params:
            options["enable_gqa"] = True
        else:
            group = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    return options, k, v


_VARLEN: dict = {}  # filled on first use, outside any compiled region: torch.compile reads it as a constant


def _varlen_function():
    if "function" not in _VARLEN:
        from torch.nn.attention.varlen import varlen_attn

        _VARLEN["function"] = varlen_attn
    return _VARLEN["function"]


def _varlen_parameters() -> frozenset[str]:
    if "parameters" not in _VARLEN:
        import inspect

        _VARLEN["parameters"] = frozenset(inspect.signature(_varlen_function()).parameters)
    return _VARLEN["parameters"]


def has_varlen_attention() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch.nn.attention.varlen") is not None


def register_packed_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_attention_forward)
    if has_varlen_attention():
        _varlen_parameters()  # looked up now, not inside a compiled layer


# ----------------------------------------------------------------------------- decode attention

DECODE_ATTENTION = "evsys_decode"
_SDPA: dict = {}  # transformers' SDPA attention function, looked up once, outside compiled code


def decode_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' SDPA attention, except for one query token over grouped key/value heads: there the
    query heads of each group are laid out as that group's queries, so SDPA reads each key/value head once
    instead of `repeat_kv`'s copies of them (transformers does this too, but not in compiled code, which
    is where a static-cache decode step runs). Same kernel, same mask, same scale."""
    sdpa_forward = _SDPA["attention"]
    batch, heads, length, dim = query.shape
    groups = heads // key.shape[1]
    plain = (length != 1 or groups == 1 or dropout or (attention_mask is not None and attention_mask.shape[1] != 1)
             or any(kwargs.get(name) is not None for name in ("position_bias", "softcap", "s_aux")))
    if plain:
        return sdpa_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    import torch.nn.functional as F

    grouped = query.reshape(batch, key.shape[1], groups, dim)  # query head h reads key/value head h // groups
    out = F.scaled_dot_product_attention(grouped, key, value, attn_mask=attention_mask, scale=scaling)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


def use_decode_attention(model) -> bool:
    """Switch a model that runs transformers' SDPA attention to `decode_attention_forward`; False where
    it runs another attention or this transformers lacks the interfaces (it is left as it is)."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    try:
        from transformers import AttentionInterface
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:
        return False
    _SDPA["attention"] = sdpa_attention_forward
    AttentionInterface.register(DECODE_ATTENTION, decode_attention_forward)
    AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)  # the masks SDPA gets, built the same way
    model.set_attn_implementation(DECODE_ATTENTION)
    return True


# ----------------------------------------------------------------------------- fused LM head + weighted NLL


def _fused_loss_function():
    import torch

    class LinearWeightedNLL(torch.autograd.Function):
        """loss = sum_i w[i] * (logsumexp(h[i] @ W.T) - (h[i] @ W.T)[t[i]]), chunked over positions.

        Gradients are computed in forward, chunk by chunk (softmax - onehot), so no logits outlive a
        chunk and no recompute is needed; backward only scales them by the incoming scalar gradient.
        Also returns the per-position NLL (not differentiable) for metrics.
        """

        @staticmethod
        def forward(ctx, hidden, weight, targets, loss_weights, chunk: int, compute_dtype):
            need_h, need_w = hidden.requires_grad, weight.requires_grad
            w = weight.to(compute_dtype)
            h = hidden.to(compute_dtype)
            nll = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = None  # fp32, created by the first chunk
            for s in range(0, h.shape[0], chunk):
                hc, tc = h[s : s + chunk], targets[s : s + chunk]
                logits = (hc @ w.T).float()
                picked = logits.gather(1, tc[:, None])[:, 0]
                peak = logits.amax(dim=-1, keepdim=True)
                probs = logits.sub_(peak).exp_()  # in place: logits are not needed any more
                total = probs.sum(dim=-1, keepdim=True)
                nll[s : s + chunk] = (peak + total.log())[:, 0] - picked
                if need_h or need_w:
                    probs.div_(total)
                    probs[torch.arange(hc.shape[0], device=hc.device), tc] -= 1.0
                    g = probs.mul_(loss_weights[s : s + chunk, None]).to(compute_dtype)
                    if need_h:
                        grad_h[s : s + chunk] = (g @ w).to(hidden.dtype)
                    if need_w:
                        part = (g.T @ hc).float()
                        grad_w = part if grad_w is None else grad_w.add_(part)
            ctx.save_for_backward(
                grad_h if need_h else None, grad_w.to(weight.dtype) if need_w else None
            )
            ctx.mark_non_differentiable(nll)
            return (nll * loss_weights).sum(), nll

        @staticmethod
        def backward(ctx, grad_loss, _grad_nll):
            grad_h, grad_w = ctx.saved_tensors
            grad_h = grad_h * grad_loss if grad_h is not None else None
            grad_w = grad_w * grad_loss if grad_w is not None else None
            return grad_h, grad_w, None, None, None, None

    return LinearWeightedNLL


_FUSED_LOSS = None


def linear_weighted_nll(hidden, weight, targets, loss_weights, chunk: int, compute_dtype=None):
    """(sum of loss_weights * NLL, per-position NLL) for logits `hidden @ weight.T`, never holding all logits."""
    global _FUSED_LOSS
    if _FUSED_LOSS is None:
        _FUSED_LOSS = _fused_loss_function()
    return _FUSED_LOSS.apply(hidden, weight, targets, loss_weights, chunk, compute_dtype or hidden.dtype)


# ----------------------------------------------------------------------------- packing


def pack_datums(datums: Sequence[Datum], device) -> dict:
    """One packed row: input_ids/position_ids (1, T), bounds, and the loss gather plan.

    `source` indexes the hidden state that predicts `target` (global index - 1) with weight `weight`.
    """
    import numpy as np
    import torch

    lengths = [d.num_tokens for d in datums]
    bounds = [0, *np.cumsum(lengths).tolist()]
    ids = np.concatenate([d.input_ids for d in datums])
    positions = np.concatenate([np.arange(n) for n in lengths])
    sources, targets, weights = [], [], []
    for d, start in zip(datums, bounds[:-1]):
        t = np.nonzero(d.weights[1:])[0] + 1  # predicted positions with nonzero weight
        sources.append(start + t - 1)
        targets.append(d.input_ids[t])
        weights.append(d.weights[t])
    as_tensor = lambda a, dt: torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dt)  # noqa: E731
    return {
        "input_ids": as_tensor(ids, torch.long)[None],
        "position_ids": as_tensor(positions, torch.long)[None],
        "bounds": bounds,
        "cu_seq_lens": torch.tensor(bounds, dtype=torch.int32, device=device),
        "max_length": max(lengths),
        "source": as_tensor(np.concatenate(sources), torch.long),
        "target": as_tensor(np.concatenate(targets), torch.long),
        "weight": as_tensor(np.concatenate(weights), torch.float32),
    }


def split_by_token_budget(datums: Sequence[Datum], budget: int) -> list[list[Datum]]:
    """Consecutive groups whose total length stays within `budget` (a longer datum gets its own group)."""
    groups: list[list[Datum]] = [[]]
    used = 0
    for d in datums:
        if groups[-1] and used + d.num_tokens > budget:
            groups.append([])
            used = 0
        groups[-1].append(d)
        used += d.num_tokens
    return [g for g in groups if g]
