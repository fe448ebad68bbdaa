"""Datasets as manifests of content-defined chunks, and per-chunk cached maps.

A row closes a chunk when the xxh3_64 of its bytes hits a mask (with min/max sizes), so
inserting, editing or deleting one row changes one or two chunks. Row-local stages map
chunk -> chunk through a memo keyed by (stage identity, input chunk), so a one-row edit
recomputes one chunk, not the file.
"""

from __future__ import annotations

import json
from typing import Callable, Iterable, Iterator

import xxhash

from .chunk_index import load_index, save_index
from .chunk_workers import ChunkWorkers, compute_with_workers, standby_waiting, worker_count
from .errors import CorruptObject
from .hashing import digest
from .store import Store, referenced_objects

MIN_ROWS = 32
MASK_BITS = 8  # mean chunk ~ MIN_ROWS + 256 rows
MAX_ROWS = 4096
_WHITESPACE = b" \t\r\n\f\v"


class Chunker:
    """Content-defined grouping of a stream of rows: a row closes a chunk when the xxh3_64 of its
    boundary bytes hits the mask (and the chunk has MIN_ROWS rows), or at MAX_ROWS."""

    def __init__(self, mask_bits: int = MASK_BITS, min_rows: int = MIN_ROWS, max_rows: int = MAX_ROWS):
        self.mask = (1 << mask_bits) - 1
        self.min_rows, self.max_rows = min_rows, max_rows
        self.size = 0

    def closes(self, boundary_bytes: bytes) -> bool:
        """Count one row; True when it closes the current chunk."""
        self.size += 1
        if (self.size >= self.min_rows and (xxhash.xxh3_64_intdigest(boundary_bytes) & self.mask) == 0) or self.size >= self.max_rows:
            self.size = 0
            return True
        return False


def split_lines(lines: list[bytes], mask_bits: int = MASK_BITS, min_rows: int = MIN_ROWS, max_rows: int = MAX_ROWS) -> list[list[bytes]]:
    """Group encoded rows into content-defined chunks."""
    chunker = Chunker(mask_bits, min_rows, max_rows)
    chunks: list[list[bytes]] = []
    current: list[bytes] = []
    for line in lines:
        current.append(line)
        if chunker.closes(line):
            chunks.append(current)
            current = []
    if current:
        chunks.append(current)
    return chunks


def first_raw_chunk(data: bytes, start: int, stop: int) -> tuple[int, int] | None:
    """(end offset, rows) of the content-defined chunk that begins at `start`, a chunk boundary,
    from the lines of data[start:stop]; None when none of them closes it. Where a chunk closes
    depends only on the lines after its start: a scan begins afresh at every boundary."""
    mask = (1 << MASK_BITS) - 1
    hash_of, find = xxhash.xxh3_64_intdigest, data.find
    rows, pos = 0, start
    while pos < stop:
        newline = find(b"\n", pos, stop)
        end = stop if newline < 0 else newline + 1
        squeezed = data[pos:end].translate(None, _WHITESPACE)
        pos = end
        if squeezed:
            rows += 1  # as Chunker.closes counts it
            if rows >= MIN_ROWS and (rows >= MAX_ROWS or not hash_of(squeezed) & mask):
                return end, rows
    return None


class RowWriter:
    """Streams rows into content-defined chunk blobs: memory grows with a chunk, not the dataset."""

    def __init__(self, store: Store):
        self.store = store
        self.chunker = Chunker()
        self.current: list[bytes] = []
        self.chunks: list[dict] = []

    def add(self, row: dict) -> None:
        line = encode_row(row)
        self.current.append(line)
        if self.chunker.closes(line):
            self._flush()

    def finish(self) -> list[dict]:
        if self.current:
            self._flush()
        return self.chunks

    def _flush(self) -> None:
        data = b"".join(line + b"\n" for line in self.current)
        self.chunks.append({"blob": self.store.put_bytes(data, durable=False), "rows": len(self.current)})
        self.current = []


_ROW_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # what json.dumps(row, ...) builds per call
_decode_row = json.JSONDecoder().decode


def encode_row(row: dict) -> bytes:
    """One row as compact JSON, UTF-8 (exactly `json.dumps(row, ensure_ascii=False, separators=(",", ":"))`)."""
    return _ROW_JSON.encode(row).encode()


def write_row_chunk(store: Store, rows: list[dict]) -> dict:
    """Store one chunk of rows as JSONL; returns its descriptor."""
    data = b"".join(encode_row(r) + b"\n" for r in rows)
    return {"blob": store.put_bytes(data, durable=False), "rows": len(rows)}


def read_row_chunk(store: Store, chunk: dict) -> list[dict]:
    """The rows of one chunk. Bytes that pass the digest check but do not parse (written by a
    broken writer) are quarantined like any corrupt object, so the chunk is rebuilt."""
    data = store.get_bytes(chunk["blob"])
    try:
        rows = [_decode_row(line) for line in data.decode("utf-8").split("\n") if line]  # rows were written with "\n" only
    except (json.JSONDecodeError, UnicodeDecodeError):
        store.quarantine_object(chunk["blob"], "a row chunk that does not parse")
        raise CorruptObject(f"row chunk {chunk['blob']} does not parse; quarantined", chunk["blob"]) from None
    if len(rows) != chunk["rows"]:
        store.quarantine_object(chunk["blob"], "a row chunk with the wrong number of rows")
        raise CorruptObject(f"row chunk {chunk['blob']} holds {len(rows)} rows, not {chunk['rows']}; quarantined", chunk["blob"])
    return rows


def write_rows(store: Store, rows: Iterable[dict]) -> dict:
    """A row dataset manifest over content-defined chunks, written as the rows stream in."""
    writer = RowWriter(store)
    for row in rows:
        writer.add(row)
    return rows_dataset(writer.finish())


def rows_dataset(chunks: list[dict]) -> dict:
    return {"kind": "rows", "num_rows": sum(c["rows"] for c in chunks), "chunks": chunks}


def iter_rows(store: Store, dataset: dict) -> Iterator[dict]:
    for chunk in dataset["chunks"]:
        yield from read_row_chunk(store, chunk)


def memoised_results(store: Store, stage_identity: dict, chunks: list[dict]) -> list[dict | None]:
    """What `map_chunks` memoised for each of `chunks` under `stage_identity` (None: not memoised),
    without computing anything: which output rows came from which input chunk."""
    stage = digest(stage_identity)
    return _memo_lookup(store, load_index(store, stage), [_memo_key(stage, chunk) for chunk in chunks])


def _memo_key(stage: str, chunk: dict) -> str:
    return digest({"stage": stage, "chunk": chunk})


def _memo_lookup(store: Store, index: dict[str, dict], keys: list[str]) -> list[dict | None]:
    """Each key's memoised output chunk: from the machine-local stage `index`, else the store's memo."""
    out = []
    for key in keys:
        hit = index.get(key)
        if hit is None:
            found = store.memo_get(key)
            hit = found["chunk"] if found is not None else None
        out.append(hit)
    return out


def map_chunks(
    store: Store,
    chunks: list[dict],
    stage_identity: dict,
    fn: Callable[[dict], dict],
    progress: Callable[[int, int], None] | None = None,
    stop_check: Callable[[], None] | None = None,
    workers: ChunkWorkers | None = None,
) -> tuple[list[dict], dict]:
    """Apply a chunk -> chunk function with a per-chunk memo.

    Returns the output chunks (empty ones dropped) and stats {"chunks_ran", "chunks_cached"}.
    `stop_check()` runs before each chunk that must be computed (it raises to stop a build;
    the chunks done so far stay memoised). With `workers`, and enough chunks to compute (or a
    worker started ahead for the stage), worker processes compute chunks beside this thread
    (`chunk_workers`).
    """
    stage = digest(stage_identity)
    results: list[dict | None] = [None] * len(chunks)
    all_keys = [_memo_key(stage, chunk) for chunk in chunks]
    memo_keys: dict[int, str] = dict(enumerate(all_keys))
    index = load_index(store, stage)
    hits = {i: hit for i, hit in enumerate(_memo_lookup(store, index, all_keys)) if hit is not None}
    missing = set(store.missing_objects(name for hit in hits.values() for name in referenced_objects(hit)))
    for i, hit in hits.items():  # a hit whose blobs are gone (collected) is computed again
        if missing.isdisjoint(referenced_objects(hit)):
            results[i] = hit
            del memo_keys[i]
    done = len(chunks) - len(memo_keys)

    def record(i: int, result: dict) -> None:
        nonlocal done
        store.memo_put(memo_keys[i], {"chunk": result}, durable=False)
        results[i] = result
        done += 1
        if progress:
            progress(done, len(chunks))

    if progress:
        progress(done, len(chunks))
    processes = worker_count() if workers is not None else 0
    if processes and memo_keys and (len(memo_keys) >= workers.min_chunks or standby_waiting(workers.standby)):
        compute_with_workers(workers, processes, chunks, list(memo_keys), fn, record, stop_check)
    else:
        for i in memo_keys:
            if stop_check is not None:
                stop_check()
            record(i, fn(chunks[i]))
    save_index(store, stage, dict(zip(all_keys, results)), index)
    out = [r for r in results if r is not None and r["rows"]]
    return out, {"chunks_ran": len(memo_keys), "chunks_cached": len(chunks) - len(memo_keys)}
