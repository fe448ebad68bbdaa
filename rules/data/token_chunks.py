"""Tokenized datasets: per chunk, three .npy blobs (input_ids int32, weights float32, offsets int64)."""

from __future__ import annotations

import io

from evsys_build.store import Store


def _npy(array) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _load(data: bytes):
    import numpy as np

    return np.load(io.BytesIO(data), allow_pickle=False)


def write_token_chunk(store: Store, rows) -> dict:
    """Store tokenized rows (a `chat_tokens.TokenRows`) as one chunk; returns its descriptor."""
    import numpy as np

    ids, weights, offsets = rows.ids.astype(np.int32, copy=False), rows.weights.astype(np.float32, copy=False), rows.offsets.astype(np.int64, copy=False)
    return {
        "rows": len(offsets) - 1,
        "tokens": int(offsets[-1]),
        "loss_tokens": int((weights > 0).sum()),
        "blobs": {"input_ids": store.put_bytes(_npy(ids)), "weights": store.put_bytes(_npy(weights)), "offsets": store.put_bytes(_npy(offsets))},
    }


def read_token_chunk(store: Store, chunk: dict):
    """[(input_ids, weights)] numpy arrays, one pair per row."""
    ids = _load(store.get_bytes(chunk["blobs"]["input_ids"]))
    weights = _load(store.get_bytes(chunk["blobs"]["weights"]))
    offsets = _load(store.get_bytes(chunk["blobs"]["offsets"]))
    return [(ids[a:b], weights[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]


def iter_token_rows(store: Store, chunks: list[dict]):
    """(input_ids, weights) of every row, chunk by chunk."""
    for chunk in chunks:
        yield from read_token_chunk(store, chunk)
