"""Previews for `evsys show`: rows, tokens with trained tokens marked, checkpoints, eval predictions."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from evsys_build.chunks import iter_rows
from evsys_build.store import Store

from ..data.token_chunks import iter_token_rows
from ..nodes.views import RowDataset, TokenDataset
from .preview_model import model_preview


def preview(store: Store, manifest: dict, rows: int, color: bool, text: bool = True) -> tuple[str, list]:
    """(text for a terminal, rows as JSON) for a node's outputs; `text=False` skips decoding."""
    rule = manifest.get("rule")
    if rule in ("source", "transform"):
        dataset = RowDataset.of(manifest)
        picked = _take(iter_rows(store, dataset.to_json()), rows)
        head = f"rows     {dataset.num_rows} in {len(dataset.chunks)} chunks; first {len(picked)}:\n"
        return head + "\n".join(json.dumps(r, ensure_ascii=False) for r in picked), picked
    if rule == "tokenize":
        return _tokens_preview(store, TokenDataset.of(manifest), rows, color, decode=text, params=manifest.get("params") or {})
    if rule in ("checkpoint", "train", "eval", "report"):
        return model_preview(store, manifest, rows)
    return "", []


def _take(iterable, n: int) -> list:
    out = []
    for item in iterable:
        if len(out) >= n:
            break
        out.append(item)
    return out


def _tokens_preview(store: Store, dataset: TokenDataset, rows: int, color: bool, decode: bool, params: dict) -> tuple[str, list]:
    picked = _take(iter_token_rows(store, dataset.chunks), rows)
    as_json = [{"input_ids": ids.tolist(), "weights": w.tolist()} for ids, w in picked]
    cut = dataset.cut_summary(params.get("max_length"), params.get("truncation"))
    head = (
        f"tokens   {dataset.num_rows} rows, {dataset.num_tokens} tokens, {dataset.num_loss_tokens} trained "
        f"({'trained tokens in green' if color else 'trained tokens inside [[ ]]'}){f'; {cut}' if cut else ''}; first {len(picked)}:"
    )
    tok = _tokenizer_from_blobs(store, dataset.tokenizer_blobs) if decode and dataset.tokenizer_blobs else None
    parts = [head]
    for i, (ids, weights) in enumerate(picked):
        parts.append(f"--- row {i}: {len(ids)} tokens, {int((weights > 0).sum())} trained")
        parts.append(render_marked(tok, ids.tolist(), weights.tolist(), color) if tok else str(ids.tolist()))
    return "\n".join(parts), as_json


def render_marked(tok, ids: list[int], weights: list[float], color: bool) -> str:
    """Decoded text where each run of trained tokens is green (terminal) or inside [[ ]]."""
    out = []
    run: list[int] = []
    trained = False

    def flush():
        if not run:
            return
        text = tok.decode(run)
        if trained:
            text = f"\x1b[32m{text}\x1b[0m" if color else f"[[{text}]]"
        out.append(text)

    for t, w in zip(ids, weights):
        if (w > 0) != trained:
            flush()
            run = []
            trained = w > 0
        run.append(t)
    flush()
    return "".join(out)


def _tokenizer_from_blobs(store: Store, blobs: dict[str, str]):
    from transformers import AutoTokenizer  # lazily: only a tokens preview decodes

    with tempfile.TemporaryDirectory() as tmp:
        for name, blob in blobs.items():
            Path(tmp, name).parent.mkdir(parents=True, exist_ok=True)
            Path(tmp, name).write_bytes(store.get_bytes(blob))
        return AutoTokenizer.from_pretrained(tmp, local_files_only=True)
