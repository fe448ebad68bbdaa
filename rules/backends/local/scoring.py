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
            logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
            logp = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0]
            out.append((float(-(logp * weights).sum()), float(weights.sum())))
    return out
