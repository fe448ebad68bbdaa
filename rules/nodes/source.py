"""The `source` node: data files read into a row dataset of content-defined chunks.

Its key holds the bytes of the files (through the stat cache), never their path. JSON lines are
chunked on their raw bytes (whitespace-insensitive boundaries) and each raw chunk is parsed only
when its bytes are new (a per-chunk memo), so a one-row edit in a million-row file parses one
chunk; other formats stream their rows into content-defined chunks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import xxhash

from evsys_build.chunks import raw_line_chunks, write_row_chunk, write_rows
from evsys_build.errors import ConfigError
from evsys_build.executor import RunContext
from evsys_build.graph import Node
from evsys_build.hashing import digest
from evsys_build.statcache import StatCache
from evsys_build.store import Store

from ..config.loading import Arm, LoadedConfig, check_source
from ..data.sources import read_jsonl
from ..plugins import kinds
from ..plugins.code_identity import code_identity
from .views import RowDataset

BLOCK_BYTES = 32 << 20  # a JSONL file is read this much at a time


def source_node(loaded: LoadedConfig, arm: Arm, statcache: StatCache) -> Node:
    """The arm's source node; its params hold the source kind, its params (not the path) and the files' digests."""
    cfg = arm.config
    source_cls = kinds.sources.get(cfg.data.source_kind)
    source = source_cls(**arm.params["data"].model_dump())
    check_source(loaded, source)
    source_params = arm.params["data"].model_dump(exclude_defaults=True)
    source_params.pop("path", None)
    identity = getattr(source, "identity", None)
    return Node(
        rule="source",
        name="source",
        version=f"{code_identity(run_source)}/{code_identity(source_cls)}",
        params={
            "kind": cfg.data.source_kind,
            "params": source_params,
            "content": [statcache.file_digest(f) for f in source.files()],
            **({"identity": identity()} if identity is not None else {}),
        },
        run=run_source,
        arm=arm.name,
        param_paths={"params": "data.params", "kind": "data.source_kind"},
        param_labels={"content": "data file content changed", "identity": "dataset revision changed"},
        payload={"source": source},
    )


def run_source(ctx: RunContext) -> dict:
    source = ctx.node.payload["source"]
    if hasattr(source, "jsonl_files"):
        chunks, stats = jsonl_chunks(ctx, source.jsonl_files())
        dataset = RowDataset(chunks)
    else:
        dataset = RowDataset.from_json(write_rows(ctx.store, _rows(source.read(), ctx)))
        stats = {}
    if not dataset.num_rows:
        raise ConfigError(f"data.path: the source {ctx.node.params['kind']} read no rows; check the path and the files")
    return {"outputs": dataset.outputs(), "stats": {"rows": dataset.num_rows, "chunks": len(dataset.chunks), **stats}}


def _rows(rows, ctx: RunContext) -> Iterator[dict]:
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ConfigError(f"source: row {i}: the source yielded a {type(row).__name__}, not a dict")
        if i % 4096 == 0:
            ctx.check_stop()
        yield row


def jsonl_chunks(ctx: RunContext, files: list[Path]) -> tuple[list[dict], dict]:
    """Row chunks of JSONL files, parsing a raw chunk only when its bytes were never parsed."""
    stage = digest({"parse": code_identity(parse_raw_chunk)})
    chunks: list[dict] = []
    ran = cached = 0
    for file in files:
        for data, first_line in raw_chunks(file):
            memo_key = digest({"stage": stage, "raw": xxhash.xxh3_128_hexdigest(data)})
            hit = ctx.store.memo_get(memo_key)
            if hit is not None and not ctx.store.missing_objects([hit["chunk"]["blob"]]):
                chunks.append(hit["chunk"])
                cached += 1
                continue
            ctx.check_stop()
            chunk = parse_raw_chunk(ctx.store, file, data, first_line)
            ctx.store.memo_put(memo_key, {"chunk": chunk})
            chunks.append(chunk)
            ran += 1
    return chunks, {"chunks_parsed": ran, "chunks_cached": cached}


def parse_raw_chunk(store: Store, file: Path, data: bytes, first_line: int) -> dict:
    """Parse one raw chunk of JSON lines into a stored row chunk (errors name file:line)."""
    return write_row_chunk(store, list(read_jsonl(file, first_line, data)))


def raw_chunks(file: Path) -> Iterator[tuple[bytes, int]]:
    """(bytes, first line number) of each content-defined chunk of a JSONL file, reading it a
    block at a time: memory holds a block and a chunk, not the file."""
    carry, line = b"", 1  # `carry` always starts at a chunk boundary, on line `line`
    with open(file, "rb") as f:
        while True:
            block = f.read(BLOCK_BYTES)
            data = carry + block
            final = not block
            complete = len(data) if final else data.rfind(b"\n") + 1  # a block ends mid-line: carry the rest
            done = 0
            for start, end, _rows, first in raw_line_chunks(memoryview(data)[:complete], line, final=final):
                yield data[start:end], first
                done = end
            if final:
                return
            line += data.count(b"\n", 0, done)
            carry = data[done:]
