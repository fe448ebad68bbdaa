"""Previews for `evsys show`: rows, tokens with trained tokens marked, checkpoints, eval predictions."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from evsys_build.chunks import iter_rows
from evsys_build.store import Store


def preview(store: Store, manifest: dict, rows: int, color: bool, text: bool = True) -> tuple[str, list]:
    """(text for a terminal, rows as JSON) for a node's outputs; `text=False` skips decoding."""
    outputs = manifest.get("outputs", {})
    dataset = outputs.get("dataset")
    if dataset and dataset.get("kind") == "rows":
        picked = _take(iter_rows(store, dataset), rows)
        text = f"rows     {dataset['num_rows']} in {len(dataset['chunks'])} chunks; first {len(picked)}:\n"
        return text + "\n".join(json.dumps(r, ensure_ascii=False) for r in picked), picked
    if dataset and dataset.get("kind") == "tokens":
        return _tokens_preview(store, dataset, outputs.get("tokenizer") if text else None, rows, color)
    if manifest.get("rule") in ("checkpoint", "train", "eval", "report"):
        from .preview_model import model_preview

        return model_preview(store, manifest, rows)
    return "", []


def _take(iterable, n: int) -> list:
    out = []
    for item in iterable:
        if len(out) >= n:
            break
        out.append(item)
    return out


def _tokens_preview(store: Store, dataset: dict, tokenizer: dict | None, rows: int, color: bool) -> tuple[str, list]:
    from .token_chunks import iter_token_rows

    picked = _take(iter_token_rows(store, dataset), rows)
    as_json = [{"input_ids": ids.tolist(), "weights": w.tolist()} for ids, w in picked]
    head = (
        f"tokens   {dataset['num_rows']} rows, {dataset['num_tokens']} tokens, {dataset['num_loss_tokens']} trained "
        f"({'trained tokens in green' if color else 'trained tokens inside [[ ]]'}); first {len(picked)}:"
    )
    tok = _tokenizer_from_blobs(store, tokenizer) if tokenizer else None
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


def _tokenizer_from_blobs(store: Store, tokenizer: dict):
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for name, blob in tokenizer["blobs"].items():
            Path(tmp, name).write_bytes(store.get_bytes(blob))
        return AutoTokenizer.from_pretrained(tmp, local_files_only=True)
