"""Runners of the data nodes: source, transform (per chunk when row-local), tokenize (per chunk)."""

from __future__ import annotations

from evsys_build.chunks import iter_rows, map_chunks, read_row_chunk, rows_dataset, write_row_chunk, write_rows
from evsys_build.errors import ConfigError
from evsys_build.executor import RunContext

from .token_chunks import write_token_chunk

SOURCE_VERSION = "1"
TRANSFORM_VERSION = "1"
TOKENIZE_VERSION = "1"


def run_source(ctx: RunContext) -> dict:
    source = ctx.node.payload["source"]
    dataset = write_rows(ctx.store, source.read())
    return {"outputs": {"dataset": dataset}, "stats": {"rows": dataset["num_rows"], "chunks": len(dataset["chunks"])}}


def run_transform(ctx: RunContext) -> dict:
    transform = ctx.node.payload["transform"]
    dataset = ctx.inputs["rows"]["outputs"]["dataset"]
    if getattr(transform, "row_local", False):
        starts = _chunk_starts(dataset["chunks"])

        def one_chunk(chunk: dict) -> dict:
            rows = read_row_chunk(ctx.store, chunk)
            try:
                out_rows = transform(rows)
            except ConfigError as exc:
                raise _locate_row(transform, rows, starts[chunk["blob"]], ctx, exc) from None
            return write_row_chunk(ctx.store, _checked(out_rows, ctx))

        chunks, stats = map_chunks(ctx.store, dataset["chunks"], stage_identity(ctx), one_chunk, ctx.progress)
        out = rows_dataset(chunks)
    else:
        out = write_rows(ctx.store, _checked(transform(list(iter_rows(ctx.store, dataset))), ctx))
        stats = {"chunks_ran": len(out["chunks"]), "chunks_cached": 0}
    return {"outputs": {"dataset": out}, "stats": dict(stats, rows_in=dataset["num_rows"], rows_out=out["num_rows"])}


def stage_identity(ctx: RunContext) -> dict:
    """What a per-chunk memo is keyed by: the rule, its version and the node's params.

    The version matters: bumping TOKENIZE_VERSION (or TRANSFORM_VERSION) must recompute every
    chunk, not serve the chunks the old code memoized.
    """
    return {"rule": ctx.node.rule, "version": ctx.node.version, "params": ctx.node.params}


def _chunk_starts(chunks: list[dict]) -> dict[str, int]:
    """Index of each chunk's first row in the dataset (by blob; identical chunks share the first)."""
    starts, total = {}, 0
    for chunk in chunks:
        starts.setdefault(chunk["blob"], total)
        total += chunk["rows"]
    return starts


def _locate_row(transform, rows: list[dict], start: int, ctx: RunContext, exc: ConfigError) -> ConfigError:
    """A row-local transform failed on a chunk: name the failing row by its index in the whole input."""
    for i, row in enumerate(rows):
        try:
            transform([dict(row)])
        except ConfigError as row_exc:
            return ConfigError(f"{ctx.node.name}: input row {start + i}: {row_exc.message}")
    return exc


def _checked(rows, ctx: RunContext) -> list[dict]:
    if rows is None:
        raise ConfigError(f"{ctx.node.name}: the transform returned None; it must return the rows (rows -> rows)")
    rows = list(rows)
    for row in rows:
        if not isinstance(row, dict):
            raise ConfigError(f"{ctx.node.name}: the transform returned a {type(row).__name__}, not a dict row")
    return rows


def run_tokenize(ctx: RunContext) -> dict:
    from .heavy import preload_ml

    preload_ml()
    from .chat_tokens import load_tokenizer, tokenize_conversation, tokenizer_files

    payload = ctx.node.payload
    tok = load_tokenizer(str(payload["model_dir"]))
    dataset = ctx.inputs["rows"]["outputs"]["dataset"]
    starts = _chunk_starts(dataset["chunks"])
    p = ctx.node.params

    def one_chunk(chunk: dict) -> dict:
        rows = read_row_chunk(ctx.store, chunk)
        out = []
        for i, row in enumerate(rows):
            index = starts[chunk["blob"]] + i
            where = f"tokenize: row {index}"
            messages = row.get("messages")
            if not isinstance(messages, list):
                raise ConfigError(f"{where}: has no `messages` list; add a transform such as jsonl_to_chat before training")
            out.append(tokenize_conversation(tok, messages, p["supervise"], p["max_length"], p["truncation"], where))
        return write_token_chunk(ctx.store, out)

    chunks, stats = map_chunks(ctx.store, dataset["chunks"], stage_identity(ctx), one_chunk, ctx.progress)
    chunks = [c for c in chunks if c["rows"]]
    out = {
        "kind": "tokens",
        "num_rows": sum(c["rows"] for c in chunks),
        "num_tokens": sum(c["tokens"] for c in chunks),
        "num_loss_tokens": sum(c["loss_tokens"] for c in chunks),
        "chunks": chunks,
    }
    kept = [f for f in tokenizer_files(payload["model_dir"]) if f.name not in ("vocab.json", "merges.txt")]  # tokenizer.json holds them
    tokenizer = {"blobs": {f.name: ctx.store.put_bytes(f.read_bytes()) for f in kept}}
    return {
        "outputs": {"dataset": out, "tokenizer": tokenizer},
        "stats": dict(stats, rows=out["num_rows"], tokens=out["num_tokens"], loss_tokens=out["num_loss_tokens"]),
    }
