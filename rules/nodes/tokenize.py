"""The `tokenize` node: chat rows -> input ids + per-token loss weights, per chunk, with the
model's own tokenizer and chat template. Its key holds the tokenizer files' digests and the
algorithm params that shape tokens (supervise, max_length, truncation)."""

from __future__ import annotations

from pathlib import Path

from evsys_build.chunks import map_chunks, read_row_chunk
from evsys_build.executor import RunContext
from evsys_build.graph import Node
from evsys_build.statcache import StatCache

from ..config.loading import Arm
from ..data.chat_tokens import load_tokenizer, tokenize_conversations, tokenizer_files
from ..data.token_chunks import write_token_chunk
from ..ml_stack import preload_ml
from .row_chunks import chunk_starts, stage_identity
from .views import RowDataset, TokenDataset

TOKENIZE_VERSION = "2"  # 2: weights by construction (prompt prefixes, offsets), whole-text ids
SHAPING_PARAMS = ("supervise", "max_length", "truncation")  # algorithm params that shape the tokens, not training


def tokenize_node(arm: Arm, rows: Node, model_dir: Path, statcache: StatCache) -> Node:
    algo = arm.params["algorithm"]
    return Node(
        rule="tokenize",
        name="tokenize",
        version=TOKENIZE_VERSION,
        params={
            "tokenizer": {f.name: statcache.file_digest(f) for f in tokenizer_files(model_dir)},
            "supervise": getattr(algo, "supervise", "all_assistant"),
            "max_length": getattr(algo, "max_length", 2048),
            "truncation": getattr(algo, "truncation", "right"),
        },
        inputs=[("rows", rows)],
        run=run_tokenize,
        arm=arm.name,
        param_paths={k: f"algorithm.params.{k}" for k in SHAPING_PARAMS},
        param_labels={"tokenizer": "tokenizer or chat template changed"},
        payload={"model_dir": model_dir},
    )


def run_tokenize(ctx: RunContext) -> dict:
    preload_ml()
    model_dir = ctx.node.payload["model_dir"]
    tok = load_tokenizer(str(model_dir))
    dataset = RowDataset.of(ctx.inputs["rows"])
    starts = chunk_starts(dataset.chunks)
    p = ctx.node.params

    def one_chunk(chunk: dict) -> dict:
        rows = read_row_chunk(ctx.store, chunk)
        wheres = [f"tokenize: row {starts[chunk['blob']] + i}" for i in range(len(rows))]
        out = tokenize_conversations(tok, rows, p["supervise"], p["max_length"], p["truncation"], wheres)
        return write_token_chunk(ctx.store, out)

    chunks, stats = map_chunks(ctx.store, dataset.chunks, stage_identity(ctx), one_chunk, ctx.progress)
    kept = [f for f in tokenizer_files(model_dir) if f.name not in ("vocab.json", "merges.txt")]  # tokenizer.json holds them
    tokens = TokenDataset([c for c in chunks if c["rows"]], {f.name: ctx.store.put_bytes(f.read_bytes()) for f in kept})
    return {
        "outputs": tokens.outputs(),
        "stats": dict(stats, rows=tokens.num_rows, tokens=tokens.num_tokens, loss_tokens=tokens.num_loss_tokens),
    }
