"""Tokenized datasets: per chunk, three .npy blobs (input_ids int32, weights float32, offsets int64)."""

from __future__ import annotations

import io
import itertools

from evsys_build.store import Store


def _npy(array) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _load(data: bytes):
    import numpy as np

    return np.load(io.BytesIO(data), allow_pickle=False)


def write_token_chunk(store: Store, rows: list[tuple[list[int], list[float]]]) -> dict:
    import numpy as np

    lengths = [len(ids) for ids, _ in rows]
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lengths)
    total = int(offsets[-1])
    ids = np.fromiter(itertools.chain.from_iterable(r for r, _ in rows), dtype=np.int32, count=total)
    weights = np.fromiter(itertools.chain.from_iterable(ws for _, ws in rows), dtype=np.float32, count=total)
    return {
        "rows": len(rows),
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
