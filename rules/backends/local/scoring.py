"""Forward-only scoring on the local backend: the weighted NLL of each sequence (held-out loss)."""

from __future__ import annotations

from typing import Sequence

from ..base import Datum


def score_datums(model, device, datums: Sequence[Datum]) -> list[tuple[float, float]]:
    """Per datum, (sum over t of -log p(ids[t] | ids[:t]) × weights[t], sum of weights[1:]), with
    the log-softmax in float32 whatever the model's dtype."""
    import torch

    out = []
    model.eval()
    with torch.inference_mode():
        for datum in datums:
            ids = torch.as_tensor(datum.input_ids, dtype=torch.long, device=device)[None]
            weights = torch.as_tensor(datum.weights[1:], dtype=torch.float32, device=device)
            if ids.shape[1] < 2 or float(weights.sum()) == 0.0:
                out.append((0.0, 0.0))
                continue
            logp = _logprobs(model, ids)
            out.append((float(-(logp * weights).sum()), float(weights.sum())))
    return out


def token_logprobs(model, device, ids: Sequence[int]) -> list[float]:
    """log p(ids[t] | ids[:t]) for t >= 1, in float32."""
    import torch

    model.eval()
    with torch.inference_mode():
        return _logprobs(model, torch.as_tensor(list(ids), dtype=torch.long, device=device)[None]).tolist()


def _logprobs(model, ids):
    import torch

    logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
    return torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0]
