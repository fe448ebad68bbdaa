"""The `tokenize` node: chat rows -> input ids + per-token loss weights, per chunk, with the
model's own tokenizer and chat template. Its key holds the tokenizer files' digests and the
algorithm params that shape tokens (supervise, max_length, truncation)."""

from __future__ import annotations

import re
import threading

from evsys_build.chunks import map_chunks, read_row_chunk
from evsys_build.errors import ConfigError
from evsys_build.executor import RunContext
from evsys_build.graph import Node

from ..config.loading import Arm
from ..data.chat_tokens import load_tokenizer, tokenize_rows
from ..data.token_chunks import write_token_chunk
from ..ml_stack import preload_tokenizers
from ..models.resolve import ResolvedModel, tokenizer_files
from ..plugins.code_identity import code_identity, library_versions
from .row_chunks import chunk_starts, row_location, stage_identity
from .views import RowDataset, TokenDataset

TOKENIZER_LIBRARIES = ("transformers", "tokenizers", "jinja2")  # rendering and encoding
SHAPING_PARAMS = ("supervise", "max_length", "truncation")  # algorithm params that shape the tokens, not training


def tokenize_node(arm: Arm, rows: Node, model: ResolvedModel) -> Node:
    algo = arm.params["algorithm"]
    return Node(
        rule="tokenize",
        name="tokenize",
        version=code_identity(run_tokenize),
        params={
            "tokenizer": model.tokenizer,
            "supervise": getattr(algo, "supervise", "all_assistant"),
            "max_length": getattr(algo, "max_length", 2048),
            "truncation": getattr(algo, "truncation", "right"),
            "libraries": library_versions(*TOKENIZER_LIBRARIES),
        },
        inputs=[("rows", rows)],
        run=run_tokenize,
        arm=arm.name,
        param_paths={k: f"algorithm.params.{k}" for k in SHAPING_PARAMS},
        param_labels={"tokenizer": "tokenizer or chat template changed", "libraries": "tokenizer library versions changed"},
        payload={"model_dir": model.dir},
    )


def run_tokenize(ctx: RunContext) -> dict:
    model_dir = ctx.node.payload["model_dir"]
    loaded: list = []
    loading = threading.Lock()

    def tokenizer():
        """Loaded on the first chunk that misses: a rebuild that reruns none pays nothing for it."""
        with loading:
            if not loaded:
                preload_tokenizers()
                loaded.append(load_tokenizer(str(model_dir)))
        return loaded[0]

    dataset = RowDataset.of(ctx.inputs["rows"])
    starts = chunk_starts(dataset.chunks)
    p = ctx.node.params

    def one_chunk(chunk: dict) -> dict:
        rows = read_row_chunk(ctx.store, chunk)
        start = starts[chunk["blob"]]
        wheres = [f"row {start + i}" for i in range(len(rows))]
        try:
            out = tokenize_rows(tokenizer(), rows, p["supervise"], p["max_length"], p["truncation"], wheres)
        except ConfigError as exc:  # name the row by where it came from: data/train.jsonl:6
            row = re.match(r"row (\d+): ", exc.message)
            if row is None:
                raise
            located = row_location(ctx.store, rows_node, int(row.group(1)))
            raise ConfigError(f"{located}: tokenize: {exc.message[row.end():]}") from None
        return write_token_chunk(ctx.store, out)

    rows_node = ctx.node.inputs[0][1]
    chunks, stats = map_chunks(ctx.store, dataset.chunks, stage_identity(ctx), one_chunk, ctx.progress, ctx.check_stop)
    files = tokenizer_files(model_dir)
    kept = [f for f in files if f.name not in ("vocab.json", "merges.txt")] if any(f.name == "tokenizer.json" for f in files) else files
    tokens = TokenDataset([c for c in chunks if c["rows"]], {f.relative_to(model_dir).as_posix(): ctx.store.put_bytes(f.read_bytes()) for f in kept})
    return {
        "outputs": tokens.outputs(),
        "attachments": tokens.attachments(),
        "stats": dict(stats, rows=tokens.num_rows, tokens=tokens.num_tokens, loss_tokens=tokens.num_loss_tokens),
    }
