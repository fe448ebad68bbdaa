"""JSONL files as row chunks, found again fast after a small edit.

A file is cut into content-defined chunks on its raw line bytes (`evsys_build.chunks`) and each
raw chunk is parsed only when its bytes were never parsed (a memo keyed by their xxh3_128). A full
scan still looks at every line (strip whitespace, hash, decide: about half a second per million
rows), though after a one-row edit all but one or two chunks are in the file byte for byte,
only perhaps at another offset.

So the last scan of each file is kept, machine-local beside the stat cache: per chunk, its length,
the xxh3_128 of its bytes, the xxh3_64 of its first HEAD_BYTES bytes and the row chunk it parsed
to. At each chunk boundary a new scan first tries the recorded chunks that followed the last one
it took, then those that begin with the same bytes; one whose bytes hash to the recorded hash is
taken whole, no line looked at. Only chunks closed by the boundary rule are recorded (never a
file's tail), and where such a chunk closes depends only on its own lines (a scan begins afresh
at every boundary), so a taken chunk ends exactly where a line-by-line scan would end it. The
record only saves time: every chunk taken from it is checked against the bytes, and a record that
is missing, stale, from other code or names a collected row chunk gives a line-by-line scan.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import xxhash

from evsys_build.atomic import write_atomic
from evsys_build.chunk_workers import ChunkWorkers, compute_with_workers, store_address, worker_count, worker_store
from evsys_build.chunks import first_raw_chunk, write_row_chunk
from evsys_build.errors import ConfigError
from evsys_build.executor import RunContext
from evsys_build.hashing import digest
from evsys_build.store import Store

from ..data.sources import read_jsonl
from ..plugins.code_identity import code_identity

BLOCK_BYTES = 32 << 20  # a file is read this much at a time
HEAD_BYTES = 256  # a recorded chunk is looked up by the hash of its first bytes
NEXT_TRIED = 3  # recorded chunks after the last one taken, tried before the lookup by head
WORKER_MIN_CHUNKS = 128  # chunks to parse before worker processes are worth starting


def jsonl_chunks(ctx: RunContext, files: list[Path]) -> tuple[list[dict], dict]:
    """Row chunks of JSONL files, and how each was found: taken from the last scan, parse memo
    hit, or parsed."""
    stage = digest({"parse": code_identity(parse_raw_chunk), "boundaries": code_identity(first_raw_chunk)})
    chunks: list[dict] = []
    counts = {"chunks_parsed": 0, "chunks_cached": 0, "chunks_recognized": 0}
    for file in files:
        record = ScanRecord.load(ctx.store, file, stage)
        found, seen, taken = _file_chunks(ctx, file, stage, record)
        if taken and ctx.store.missing_objects([c["blob"] for c in taken]):  # collected since: scan it line by line
            record = ScanRecord.empty(ctx.store, file, stage)
            found, seen, taken = _file_chunks(ctx, file, stage, record)
        counts["chunks_recognized"] += len(taken)
        for how in seen:
            counts[how] += 1
        chunks += found
        record.save()
    return chunks, counts


def _file_chunks(ctx: RunContext, file: Path, stage: str, record: "ScanRecord") -> tuple[list[dict], list[str], list[dict]]:
    """(row chunks, how each scanned chunk was had, the chunks taken from the record).

    First a scan (holding offsets, never the bytes), then the chunks to parse are parsed, in
    worker processes too when there are many (`evsys_build.chunk_workers`), each re-read from the
    file and checked against the hash the scan took."""
    chunks: list[dict | None] = []
    seen, taken, todo = [], [], []
    for offset, data, first_line, known, closed in raw_chunks(file, record):
        if known is not None:
            chunks.append(known)
            taken.append(known)
            continue
        raw = xxhash.xxh3_128_hexdigest(data)
        memo_key = digest({"stage": stage, "raw": raw})
        hit = ctx.store.memo_get(memo_key)
        slot = record.scanned(data, raw) if closed else None
        if hit is not None and not ctx.store.missing_objects([hit["chunk"]["blob"]]):
            chunks.append(hit["chunk"])
            record.fill(slot, hit["chunk"])
            seen.append("chunks_cached")
        else:
            todo.append({"index": len(chunks), "offset": offset, "length": len(data), "line": first_line, "raw": raw, "memo": memo_key, "slot": slot})
            chunks.append(None)
            seen.append("chunks_parsed")

    def record_parsed(i: int, chunk: dict) -> None:
        item = todo[i]
        ctx.store.memo_put(item["memo"], {"chunk": chunk}, durable=False)
        chunks[item["index"]] = chunk
        record.fill(item["slot"], chunk)

    address = store_address(ctx.store)
    workers = ChunkWorkers(task=parse_range_in_worker, args_of=lambda item: (address, str(file), item), min_chunks=WORKER_MIN_CHUNKS)
    compute = lambda item: parse_range(ctx.store, file, item)  # noqa: E731
    if worker_count() and len(todo) >= workers.min_chunks:
        compute_with_workers(workers, worker_count(), todo, list(range(len(todo))), compute, record_parsed, ctx.check_stop)
    else:
        for i, item in enumerate(todo):
            ctx.check_stop()
            record_parsed(i, compute(item))
    return chunks, seen, taken


def parse_range(store: Store, file: Path, item: dict) -> dict:
    """Parse the raw chunk the scan found at item["offset"], re-read from the file: a file that
    changed since is an error, never a chunk of other bytes."""
    with open(file, "rb") as f:
        data = os.pread(f.fileno(), item["length"], item["offset"])
    if xxhash.xxh3_128_hexdigest(data) != item["raw"]:
        raise ConfigError(f"{file}: the file changed while it was being read; build again")
    return parse_raw_chunk(store, file, data, item["line"])


def parse_range_in_worker(address: tuple, file: str, item: dict) -> dict:
    """`parse_range` in a worker process (a failure is parsed again by the build, which names the line)."""
    return parse_range(worker_store(address), Path(file), item)


def parse_raw_chunk(store: Store, file: Path, data: bytes, first_line: int) -> dict:
    """Parse one raw chunk of JSON lines into a stored row chunk (errors name file:line)."""
    return write_row_chunk(store, list(read_jsonl(file, first_line, data)))


def raw_chunks(file: Path, record: "ScanRecord") -> Iterator[tuple[int, bytes, int, dict | None, bool]]:
    """(offset in the file, bytes, first line number, the row chunk when `record` knows these bytes else None,
    whether a boundary closed it: False for the file's tail) of each content-defined chunk of a
    JSONL file, a block at a time: memory holds a block, not the file. A chunk the record knows
    comes with no bytes (b"")."""
    carry, line, base = b"", 1, 0  # `carry` always starts at a chunk boundary, on line `line`, at file offset `base`
    with open(file, "rb") as f:
        while True:
            block = f.read(BLOCK_BYTES)
            data = carry + block
            final = not block
            complete = len(data) if final else data.rfind(b"\n") + 1  # a block ends mid-line: carry the rest
            start, view = 0, memoryview(data)
            while start < complete:
                known = record.take(data, view, start, complete)
                if known is not None:
                    end, chunk = known
                else:
                    found = first_raw_chunk(data, start, complete)
                    if found is None:
                        break
                    end, chunk = found[0], None
                yield base + start, (data[start:end] if chunk is None else b""), line, chunk, True
                line += data.count(b"\n", start, end)
                start = end
            if final:
                if start < len(data) and data[start:].translate(None, b" \t\r\n\f\v"):  # the tail: rows no boundary closed
                    yield base + start, data[start:], line, None, False
                return
            carry = data[start:]
            base += start


class ScanRecord:
    """The chunks of a file's last scan (length, bytes hash, head hash, row chunk), in file order,
    and the record this scan leaves (`after`)."""

    def __init__(self, path: Path, stage: str, chunks: list[list]):
        self.path, self.stage, self.chunks = path, stage, chunks
        self.by_head: dict[int, list[int]] = {}
        for i, (_length, _raw, head, _chunk) in enumerate(chunks):
            self.by_head.setdefault(head, []).append(i)
        self.next = 0  # the recorded chunk after the last one taken
        self.after: list[list] = []

    @classmethod
    def empty(cls, store: Store, file: Path, stage: str) -> "ScanRecord":
        return cls(_record_path(store, file), stage, [])

    @classmethod
    def load(cls, store: Store, file: Path, stage: str) -> "ScanRecord":
        path = _record_path(store, file)
        try:
            saved = json.loads(path.read_bytes())
            chunks = saved["chunks"] if saved.get("stage") == stage else []
        except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):
            chunks = []
        return cls(path, stage, chunks)

    def take(self, data: bytes, view: memoryview, start: int, stop: int) -> tuple[int, dict] | None:
        """(end, row chunk) of a recorded chunk whose bytes begin at `start` (a boundary) within
        data[:stop] (`view` is memoryview(data): hashed without copying)."""
        if not self.chunks:
            return None
        head = xxhash.xxh3_64_intdigest(data[start:start + HEAD_BYTES])
        tried = range(self.next, min(self.next + NEXT_TRIED, len(self.chunks)))
        for i in [*tried, *self.by_head.get(head, ())[:NEXT_TRIED]]:
            length, raw, recorded_head, chunk = self.chunks[i]
            end = start + length
            if recorded_head == head and end <= stop and xxhash.xxh3_128_hexdigest(view[start:end]) == raw:
                self.next = i + 1
                self.after.append(self.chunks[i])
                return end, chunk
        return None

    def scanned(self, data: bytes, raw: str) -> int | None:
        """Record a chunk a boundary closed, found line by line; its row chunk comes with `fill`,
        at the slot returned. One whose last line has no newline is not kept (None): where more
        text follows it, that line is another line."""
        if not data.endswith(b"\n"):
            return None
        self.after.append([len(data), raw, xxhash.xxh3_64_intdigest(data[:HEAD_BYTES]), None])
        return len(self.after) - 1

    def fill(self, slot: int | None, chunk: dict) -> None:
        if slot is not None:
            self.after[slot][3] = chunk

    def save(self) -> None:
        """Keep what this scan found, for the next one."""
        chunks = [entry for entry in self.after if entry[3] is not None]
        write_atomic(self.path, json.dumps({"stage": self.stage, "chunks": chunks}).encode(), self.path.parent.parent / "tmp")


def _record_path(store: Store, file: Path) -> Path:
    return store.local_dir / "scans" / f"{xxhash.xxh3_64_hexdigest(os.path.realpath(file).encode())}.json"
