"""JSONL chunking on raw bytes: the boundaries are the Chunker's, and a scan guided by the last
scan's record gives exactly the chunks a line-by-line scan gives, whatever the record says."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from evsys_build import chunks as chunks_module
from evsys_build.chunks import Chunker, first_raw_chunk, iter_rows
from evsys_build.store import Store
from evsys_rules.nodes import jsonl_scan
from evsys_rules.nodes.jsonl_scan import jsonl_chunks

WHITESPACE = b" \t\r\n\f\v"


class Context:
    """What jsonl_chunks reads of a node's run context."""

    def __init__(self, store: Store):
        self.store = store

    def check_stop(self) -> None:
        pass


def reference_chunks(data: bytes, mask_bits: int, min_rows: int, max_rows: int) -> list[tuple[int, int]]:
    """(end offset, rows) per chunk, feeding each non-blank line to a Chunker one at a time."""
    chunker, out, pos, rows = Chunker(mask_bits, min_rows, max_rows), [], 0, 0
    for line in data.split(b"\n"):
        end = min(pos + len(line) + 1, len(data))
        squeezed = line.translate(None, WHITESPACE)
        if squeezed:
            rows += 1
            if chunker.closes(squeezed):
                out.append((end, rows))
                rows = 0
        pos = end
    return out


def scanned(data: bytes) -> list[tuple[int, int]]:
    out, start = [], 0
    while (found := first_raw_chunk(data, start, len(data))) is not None:
        out.append(found)
        start = found[0]
    return out


def random_jsonl(rng: random.Random, n: int) -> bytes:
    lines = []
    for i in range(n):
        if rng.random() < 0.03:
            lines.append(rng.choice(["", " ", "\t", " \r", "\f"]))  # blank lines: no row
        else:
            lines.append(json.dumps({"q": f"request {i} {rng.randrange(10**6)}"}, separators=rng.choice([(",", ":"), (", ", ": ")])) + rng.choice(["", " ", "\r"]))
    return ("\n".join(lines) + rng.choice(["", "\n", "\n\n", " \n"])).encode()


@pytest.mark.parametrize("mask_bits", [chunks_module.MASK_BITS, 20])  # 20: most chunks close at MAX_ROWS
def test_raw_boundaries_are_the_chunkers(monkeypatch, mask_bits):
    monkeypatch.setattr(chunks_module, "MASK_BITS", mask_bits)
    monkeypatch.setattr(chunks_module, "MAX_ROWS", 700)
    rng = random.Random(mask_bits)
    for n in (0, 1, 31, 32, 500, 5000):
        data = random_jsonl(rng, n)
        assert scanned(data) == reference_chunks(data, mask_bits, chunks_module.MIN_ROWS, 700)


def rows_file(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def chunk_list(store: Store, file: Path) -> tuple[list[dict], dict]:
    return jsonl_chunks(Context(store), [file])


@pytest.fixture
def base(tmp_path):
    rows = [{"query": f"find the tool for request {i}", "slug": f"T{i % 7}"} for i in range(30_000)]
    file = tmp_path / "train.jsonl"
    rows_file(file, rows)
    store = Store(tmp_path / "store")
    first, stats = chunk_list(store, file)
    assert stats["chunks_recognized"] == 0 and stats["chunks_parsed"] == len(first) > 50
    return rows, file, store


def fresh(tmp_path: Path, file: Path) -> list[dict]:
    """The chunks of a scan with no record, in a store of its own."""
    return chunk_list(Store(tmp_path / f"fresh-{random.random()}"), file)[0]


@pytest.mark.parametrize("change", ["edit", "insert", "delete", "append", "prepend", "swap"])
def test_a_scan_after_a_one_row_change_takes_the_rest_from_the_record(base, tmp_path, change):
    rows, file, store = base
    middle = len(rows) // 2
    changed = {
        "edit": rows[:middle] + [{"query": "edited", "slug": "E"}] + rows[middle + 1 :],
        "insert": rows[:middle] + [{"query": "inserted", "slug": "I"}] + rows[middle:],
        "delete": rows[:middle] + rows[middle + 1 :],
        "append": rows + [{"query": "appended", "slug": "A"}],
        "prepend": [{"query": "prepended", "slug": "P"}] + rows,
        "swap": rows[middle:] + rows[:middle],  # whole halves moved: found by their first bytes
    }[change]
    rows_file(file, changed)
    found, stats = chunk_list(store, file)
    assert found == fresh(tmp_path, file)
    assert list(iter_rows(store, {"chunks": found})) == changed
    assert stats["chunks_parsed"] + stats["chunks_cached"] <= 4
    assert stats["chunks_recognized"] >= len(found) - 4


def test_a_record_that_lies_is_checked_against_the_bytes(base, tmp_path):
    rows, file, store = base
    record_file = next((store.local_dir / "scans").iterdir())
    record = json.loads(record_file.read_text())
    for entry in record["chunks"][::3]:  # claim other bytes, other lengths and other row chunks
        entry[0] += 7
    for entry in record["chunks"][1::3]:
        entry[1] = "0" * 32
    for entry in record["chunks"][2::3]:
        entry[3] = record["chunks"][0][3]
        entry[1] = "1" * 32
    record_file.write_text(json.dumps(record))
    found, stats = chunk_list(store, file)
    assert found == fresh(tmp_path, file)
    assert list(iter_rows(store, {"chunks": found})) == rows


def test_a_record_naming_collected_row_chunks_gives_a_line_by_line_scan(base, tmp_path):
    rows, file, store = base
    first, _ = chunk_list(store, file)
    store.object_path(first[10]["blob"]).unlink()  # as gc would
    found, stats = chunk_list(store, file)
    assert stats["chunks_recognized"] == 0 and stats["chunks_parsed"] >= 1
    assert found == fresh(tmp_path, file)
    assert list(iter_rows(store, {"chunks": found})) == rows


def test_a_record_from_other_parse_code_is_not_used(base, monkeypatch):
    rows, file, store = base
    monkeypatch.setattr(jsonl_scan, "digest", lambda value: "f" * 32 if "parse" in value else __import__("evsys_build.hashing").hashing.digest(value))
    _, stats = chunk_list(store, file)
    assert stats["chunks_recognized"] == 0


def test_small_blocks_give_the_same_chunks(base, tmp_path, monkeypatch):
    """Chunks that cross a block end are carried into the next block, taken from the record or not."""
    rows, file, store = base
    whole = fresh(tmp_path, file)
    monkeypatch.setattr(jsonl_scan, "BLOCK_BYTES", 50_000)
    assert fresh(tmp_path, file) == whole
    found, stats = chunk_list(store, file)
    assert found == whole and stats["chunks_recognized"] >= len(whole) - 2


def test_chunks_parsed_in_workers_are_those_parsed_here(tmp_path, monkeypatch):
    rows = [{"query": f"request {i}", "slug": f"T{i % 7}"} for i in range(20_000)]
    file = tmp_path / "train.jsonl"
    rows_file(file, rows)
    monkeypatch.setenv("EVSYS_DATA_WORKERS", "0")
    here = fresh(tmp_path, file)
    monkeypatch.setenv("EVSYS_DATA_WORKERS", "1")
    monkeypatch.setattr(jsonl_scan, "WORKER_MIN_CHUNKS", 4)
    store = Store(tmp_path / "workers")
    there, stats = chunk_list(store, file)
    assert there == here and stats["chunks_parsed"] == len(here)
    assert list(iter_rows(store, {"chunks": there})) == rows


def test_a_bad_line_parsed_in_a_worker_is_named_by_file_and_line(tmp_path, monkeypatch):
    from evsys_build.errors import ConfigError

    lines = [json.dumps({"query": f"request {i}"}) for i in range(20_000)]
    lines[15_000] = '{"query": "unterminated'
    file = tmp_path / "train.jsonl"
    file.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("EVSYS_DATA_WORKERS", "1")
    monkeypatch.setattr(jsonl_scan, "WORKER_MIN_CHUNKS", 4)
    with pytest.raises(ConfigError, match=rf"{file}:15001: invalid JSON"):
        chunk_list(Store(tmp_path / "store"), file)


def test_a_file_that_changes_between_scan_and_parse_is_an_error(tmp_path):
    from evsys_build.errors import ConfigError

    file = tmp_path / "train.jsonl"
    rows_file(file, [{"q": i} for i in range(10)])
    item = {"offset": 0, "length": file.stat().st_size, "line": 1, "raw": "0" * 32}
    with pytest.raises(ConfigError, match="changed while it was being read"):
        jsonl_scan.parse_range(Store(tmp_path / "store"), file, item)
