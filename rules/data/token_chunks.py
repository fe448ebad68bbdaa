"""Tokenized datasets: per chunk, one blob holding three .npy arrays in a row (input_ids int32,
weights float32, offsets int64: row i is [offsets[i], offsets[i + 1])): one file per chunk, not
three. Chunks are written without fsync (`Store.put_bytes`'s `durable`): every read checks them."""

from __future__ import annotations

import io

from evsys_build.errors import CorruptObject
from evsys_build.store import Store

ARRAYS = ("input_ids", "weights", "offsets")


def write_token_chunk(store: Store, rows) -> dict:
    """Store tokenized rows (a `chat_tokens.TokenRows`) as one chunk; returns its descriptor."""
    import numpy as np

    ids, weights, offsets = rows.ids.astype(np.int32, copy=False), rows.weights.astype(np.float32, copy=False), rows.offsets.astype(np.int64, copy=False)
    buf = io.BytesIO()
    for array in (ids, weights, offsets):
        np.save(buf, array, allow_pickle=False)
    out = {"rows": len(offsets) - 1, "tokens": int(offsets[-1]), "loss_tokens": int((weights > 0).sum()), "blob": store.put_bytes(buf.getvalue(), durable=False)}
    if getattr(rows, "truncated", 0):  # rows max_length cut, and the trained tokens that cut dropped
        out.update(truncated=rows.truncated, trained_cut=rows.trained_cut)
    return out


def cut_summary(truncated: int, rows: int, trained_cut: int, max_length: int, truncation: str) -> str:
    """What max_length cut, in the words the build, `show` and `validate --deep` use ('' for nothing)."""
    if not truncated:
        return ""
    lost = f"dropping {trained_cut} trained tokens" if trained_cut else "no trained token dropped"
    return f"{truncated} of {rows} rows cut to max_length {max_length} ({truncation}), {lost}"


def read_token_arrays(store: Store, chunk: dict):
    """(input_ids, weights, offsets) of one chunk. A blob that passes its digest check but does
    not hold three arrays of matching sizes (a broken writer) is quarantined like a corrupt one."""
    import numpy as np

    buf = io.BytesIO(store.get_bytes(chunk["blob"]))
    try:
        ids, weights, offsets = (np.lib.format.read_array(buf, allow_pickle=False) for _ in ARRAYS)
        if buf.read(1) or len(ids) != len(weights) or len(offsets) != chunk["rows"] + 1 or offsets[-1] != len(ids):
            raise ValueError("sizes do not match")
    except (ValueError, SyntaxError, EOFError):
        store.quarantine_object(chunk["blob"], "a token chunk that does not hold its arrays")
        raise CorruptObject(f"token chunk {chunk['blob']} does not hold its arrays; quarantined", chunk["blob"]) from None
    return ids, weights, offsets


def read_token_chunk(store: Store, chunk: dict):
    """[(input_ids, weights)] numpy arrays, one pair per row."""
    ids, weights, offsets = read_token_arrays(store, chunk)
    return [(ids[a:b], weights[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]


def iter_token_rows(store: Store, chunks: list[dict]):
    """(input_ids, weights) of every row, chunk by chunk."""
    for chunk in chunks:
        yield from read_token_chunk(store, chunk)
