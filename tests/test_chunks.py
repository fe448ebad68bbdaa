"""Content-defined chunks: a one-row change touches one or two chunks, and row-local stages
(filter, jsonl_to_chat, tokenize) recompute only those chunks — counted from the manifests.

The file is 100,000 rows; a filter keeps 1 in 5, so tokenize (the slow stage on 2 cores) sees 20,000.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import xxhash

from evsys_build.chunks import MASK_BITS, MAX_ROWS, encode_row, iter_rows, split_lines, write_rows
from evsys_build.executor import Executor
from evsys_build.store import Store
from evsys_testkit import ASSISTANT_TEMPLATE, SYSTEM_PROMPT, USER_TEMPLATE, data_graph

N_ROWS = 100_000
KEEP_EVERY = 5  # rows with i % 5 == 0 are "train"; the filter keeps those


def big_rows(n: int = N_ROWS) -> list[dict]:
    return [
        {"query": f"find the tool for request number {i}", "tool_slug": f"TOOL_{i % 23}", "split": "train" if i % KEEP_EVERY == 0 else "hold"}
        for i in range(n)
    ]


def new_chunks(before: list[list[bytes]], after: list[list[bytes]]) -> int:
    """How many chunks of `after` did not exist (as whole chunks) in `before`."""
    old = Counter(b"".join(c) for c in before)
    new = Counter(b"".join(c) for c in after)
    return sum((new - old).values())


# -- the chunker alone ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def lines() -> list[bytes]:
    return [encode_row(r) for r in big_rows()]


@pytest.fixture(scope="module")
def base_chunks(lines) -> list[list[bytes]]:
    return split_lines(lines)


def test_chunks_partition_the_rows_in_order(lines, base_chunks):
    assert [line for chunk in base_chunks for line in chunk] == lines
    assert 100 < len(base_chunks) < 2000  # many chunks, neither one per row nor one per file
    assert max(len(c) for c in base_chunks) <= MAX_ROWS


@pytest.mark.parametrize("position", [0, 1234, 50_000, 99_999])
def test_editing_one_row_changes_at_most_two_chunks(lines, base_chunks, position):
    edited = list(lines)
    edited[position] = encode_row({"query": "an edited query", "tool_slug": "EDITED", "split": "train"})
    assert 1 <= new_chunks(base_chunks, split_lines(edited)) <= 2


def test_appending_one_row_changes_at_most_two_chunks(lines, base_chunks):
    appended = lines + [encode_row({"query": "appended", "tool_slug": "NEW", "split": "train"})]
    assert 1 <= new_chunks(base_chunks, split_lines(appended)) <= 2


@pytest.mark.parametrize("position", [1, 33_333, 50_000, 77_777])
def test_inserting_one_row_changes_at_most_two_chunks(lines, base_chunks, position):
    inserted = lines[:position] + [encode_row({"query": "inserted", "tool_slug": "NEW", "split": "train"})] + lines[position:]
    assert 1 <= new_chunks(base_chunks, split_lines(inserted)) <= 2


def test_deleting_one_row_changes_at_most_two_chunks(lines, base_chunks):
    deleted = lines[:60_000] + lines[60_001:]
    assert 1 <= new_chunks(base_chunks, split_lines(deleted)) <= 2


def test_chunking_is_deterministic_and_rows_round_trip(tmp_path):
    rows = big_rows(3000)
    store = Store(tmp_path)
    a, b = write_rows(store, rows), write_rows(store, rows)
    assert a == b and a["num_rows"] == 3000 and len(a["chunks"]) > 1
    assert list(iter_rows(store, a)) == rows


# -- through the real rules: source → filter → jsonl_to_chat → tokenize ---------------------

CONFIG = f"""\
data:
  source_kind: jsonl
  path: data/train.jsonl
transforms:
  - kind: filter
    params:
      field: split
      op: equals
      value: train
  - kind: jsonl_to_chat
    params:
      system_prompt: "{SYSTEM_PROMPT}"
      user_template: "{USER_TEMPLATE}"
      assistant_template: "{ASSISTANT_TEMPLATE}"
model:
  name: evsys/tiny-qwen3
algorithm:
  kind: sft
  params:
    max_steps: 1
    batch_size: 2
"""
STAGES = ["transform[0] filter", "transform[1] jsonl_to_chat", "tokenize"]


def build_data_nodes(project: Path) -> dict[str, dict]:
    """Build source, transforms and tokenize only (no training), via the frontend + Executor."""
    store = Store(project / "cache")
    results = Executor(store).run(data_graph(project / "config.yaml", store))
    return {m["name"]: m for m in results.values()}


def _is_boundary(row: dict) -> bool:
    """Whether this row's hash would close a chunk (see evsys_build.chunks.split_lines)."""
    return (xxhash.xxh3_64_intdigest(encode_row(row)) & ((1 << MASK_BITS) - 1)) == 0


def write_lines(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def incremental(tmp_path_factory, tiny_model_dir):
    """A 100k-row project built once; the test below edits it step by step."""
    project = tmp_path_factory.mktemp("chunks")
    (project / "data").mkdir()
    rows = big_rows()
    write_lines(project / "data" / "train.jsonl", rows)
    (project / "config.yaml").write_text(CONFIG)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        first = build_data_nodes(project)
        yield project, rows, first, mp


def _assert_incremental(before: dict, after: dict, what: str, max_new_source_chunks: int = 2) -> None:
    old_src = {c["blob"] for c in before["source"]["outputs"]["dataset"]["chunks"]}
    new_src = [c["blob"] for c in after["source"]["outputs"]["dataset"]["chunks"]]
    assert 1 <= sum(b not in old_src for b in new_src) <= max_new_source_chunks, what
    for stage in STAGES:
        stats = after[stage]["stats"]
        total = len(before[stage]["outputs"]["dataset"]["chunks"])
        assert stats["chunks_ran"] <= 2, (what, stage, stats)
        assert stats["chunks_cached"] >= total - 2, (what, stage, stats)


def test_row_local_stages_rerun_one_or_two_chunks(incremental):
    project, rows, first, _ = incremental
    data = project / "data" / "train.jsonl"

    # the first build ran every chunk of every stage
    assert first["source"]["stats"]["rows"] == N_ROWS
    assert first["tokenize"]["stats"]["rows"] == N_ROWS // KEEP_EVERY
    n_source_chunks = len(first["source"]["outputs"]["dataset"]["chunks"])
    assert n_source_chunks > 100
    for stage in STAGES:
        assert first[stage]["stats"]["chunks_cached"] == 0
        assert first[stage]["stats"]["chunks_ran"] == n_source_chunks  # one output chunk per input chunk

    # edit one kept row in the middle
    rows = list(rows)
    rows[50_000] = dict(rows[50_000], query="an edited query about calendars")
    write_lines(data, rows)
    edited = build_data_nodes(project)
    _assert_incremental(first, edited, "edit")
    assert edited["tokenize"]["stats"]["chunks_ran"] >= 1
    assert edited["tokenize"]["key"] != first["tokenize"]["key"]
    assert edited["tokenize"]["stats"]["rows"] == N_ROWS // KEEP_EVERY

    # append one row
    rows.append({"query": "an appended query", "tool_slug": "TOOL_NEW", "split": "train"})
    write_lines(data, rows)
    appended = build_data_nodes(project)
    _assert_incremental(edited, appended, "append")
    assert appended["tokenize"]["stats"]["rows"] == N_ROWS // KEEP_EVERY + 1

    # insert one row in the middle
    rows.insert(33_333, {"query": "an inserted query", "tool_slug": "TOOL_INS", "split": "train"})
    write_lines(data, rows)
    inserted = build_data_nodes(project)
    _assert_incremental(appended, inserted, "insert")
    assert inserted["tokenize"]["stats"]["rows"] == N_ROWS // KEEP_EVERY + 2

    # editing a row the filter drops (and whose edit moves no chunk boundary) reruns one filter
    # chunk, whose output is unchanged, so nothing after the filter reruns: early cutoff keeps
    # their keys (made of the filter's output content), so they are served whole from the cache
    i = next(i for i in range(70_001, N_ROWS) if rows[i]["split"] == "hold" and not _is_boundary(rows[i]))
    rows[i] = dict(rows[i], query="an edited row the filter drops")
    assert not _is_boundary(rows[i])
    write_lines(data, rows)
    dropped = build_data_nodes(project)
    assert dropped["transform[0] filter"]["stats"]["chunks_ran"] <= 2
    assert dropped["transform[0] filter"]["key"] != inserted["transform[0] filter"]["key"]
    assert dropped["transform[0] filter"]["output_digest"] == inserted["transform[0] filter"]["output_digest"]
    assert dropped["transform[1] jsonl_to_chat"]["key"] == inserted["transform[1] jsonl_to_chat"]["key"]
    assert dropped["tokenize"]["key"] == inserted["tokenize"]["key"]
    assert dropped["tokenize"]["created"] == inserted["tokenize"]["created"]  # not rebuilt


def test_a_one_row_edit_tokenizes_in_the_warmed_worker_exactly_as_a_cold_build(tmp_path, monkeypatch, tiny_model_dir):
    """After a one-row edit, the chunk tokenize reruns is computed in the worker its warm-up started
    while the source was scanned: the build's process loads no tokenizer, keeps no worker, and the
    tokens are those a cold build of the edited file makes."""
    import evsys_rules.nodes.tokenize as tokenize_rule
    from evsys_build import chunk_workers

    monkeypatch.setenv("EVSYS_DATA_WORKERS", "1")
    project = tmp_path / "edited"
    (project / "data").mkdir(parents=True)
    (project / "config.yaml").write_text(CONFIG)
    rows = big_rows(6000)
    write_lines(project / "data" / "train.jsonl", rows)
    monkeypatch.chdir(project)
    build_data_nodes(project)
    rows[3000] = dict(rows[3000], query="an edited query about contacts")  # a kept row (3000 % KEEP_EVERY == 0)
    write_lines(project / "data" / "train.jsonl", rows)
    real = tokenize_rule.load_chat_tokenizer
    monkeypatch.setattr(tokenize_rule, "load_chat_tokenizer", lambda *a, **k: pytest.fail("the build loaded a tokenizer itself"))
    edited = build_data_nodes(project)["tokenize"]
    monkeypatch.setattr(tokenize_rule, "load_chat_tokenizer", real)
    assert 1 <= edited["stats"]["chunks_ran"] <= 2 and edited["stats"]["rows"] == 6000 // KEEP_EVERY
    assert not chunk_workers._standby

    cold = tmp_path / "cold"
    shutil.copytree(project / "data", cold / "data")
    (cold / "config.yaml").write_text(CONFIG)
    monkeypatch.chdir(cold)
    fresh = build_data_nodes(cold)["tokenize"]
    assert fresh["stats"]["chunks_cached"] == 0
    assert (fresh["key"], fresh["output_digest"]) == (edited["key"], edited["output_digest"])


def test_a_rule_code_change_recomputes_every_chunk(tmp_path, monkeypatch, tiny_model_dir):
    """Per-chunk memos are keyed by the rule's code identity too: new tokenize code must not serve old chunks."""
    import evsys_rules.nodes.tokenize as tokenize_rule

    (tmp_path / "data").mkdir()
    write_lines(tmp_path / "data" / "train.jsonl", big_rows(5000))
    (tmp_path / "config.yaml").write_text(CONFIG)
    monkeypatch.chdir(tmp_path)
    before = build_data_nodes(tmp_path)
    n_chunks = len(before["tokenize"]["outputs"]["dataset"]["chunks"])
    assert n_chunks > 5 and before["tokenize"]["stats"]["chunks_ran"] == n_chunks
    again = build_data_nodes(tmp_path)["tokenize"]
    assert again["key"] == before["tokenize"]["key"] and again["created"] == before["tokenize"]["created"]  # cached
    real = tokenize_rule.code_identity
    monkeypatch.setattr(tokenize_rule, "code_identity", lambda obj: real(obj) + ("-edited" if obj is tokenize_rule.run_tokenize else ""))
    after = build_data_nodes(tmp_path)
    assert after["tokenize"]["key"] != before["tokenize"]["key"]
    assert after["tokenize"]["stats"]["chunks_cached"] == 0
    assert after["tokenize"]["stats"]["chunks_ran"] == n_chunks
    assert after["transform[1] jsonl_to_chat"]["key"] == before["transform[1] jsonl_to_chat"]["key"]


def test_the_stage_index_serves_a_rebuild_and_never_a_wrong_or_missing_chunk(tmp_path):
    """A rebuild looks chunks up in the stage's machine-local index (one file) before the memo;
    a damaged index is ignored, and an indexed chunk whose blob is gone is computed again."""
    from evsys_build import chunk_index
    from evsys_build.chunks import map_chunks, read_row_chunk, write_row_chunk
    from evsys_build.store import Store

    store = Store(tmp_path / "cache")
    chunks = [write_row_chunk(store, [{"n": i}]) for i in range(6)]
    calls = []

    def double(chunk):
        calls.append(chunk["blob"])
        return write_row_chunk(store, [{"n": r["n"] * 2} for r in read_row_chunk(store, chunk)])

    first, _ = map_chunks(store, chunks, {"rule": "double"}, double)
    stage_files = list((tmp_path / "cache" / "chunkmaps").glob("*.json"))
    assert len(stage_files) == 1
    store.memo_get = lambda key: pytest.fail("a rebuild read the memo although the index holds every chunk")
    again, stats = map_chunks(store, chunks, {"rule": "double"}, double)
    assert again == first and stats == {"chunks_ran": 0, "chunks_cached": 6}
    del store.memo_get

    stage_files[0].write_text(stage_files[0].read_text().replace('"rows": 1', '"rows": 7', 1))  # damaged: its digest fails
    assert chunk_index.load_index(store, stage_files[0].stem) == {}
    again, stats = map_chunks(store, chunks, {"rule": "double"}, double)
    assert again == first and stats["chunks_ran"] == 0  # from the memo

    store.object_path(first[2]["blob"]).unlink()  # collected since
    before = len(calls)
    again, stats = map_chunks(store, chunks, {"rule": "double"}, double)
    assert stats["chunks_ran"] == 1 and calls[before:] == [chunks[2]["blob"]]
    assert [r["n"] for c in again for r in read_row_chunk(store, c)] == [0, 2, 4, 6, 8, 10]


def test_gc_prunes_stage_indexes_of_what_it_removes(tmp_path):
    """Stage indexes are machine-local and grow with every stage identity a build meets: gc drops
    the entries that name objects it removes, and an index left empty; a dry run changes none."""
    from evsys_build import chunk_index
    from evsys_build.chunks import map_chunks, read_row_chunk, write_row_chunk
    from evsys_build.gc import collect_garbage
    from evsys_build.store import Store

    store = Store(tmp_path / "cache")
    chunks = [write_row_chunk(store, [{"n": i}]) for i in range(4)]
    twice = lambda c: write_row_chunk(store, [{"n": r["n"] * 2} for r in read_row_chunk(store, c)])  # noqa: E731
    thrice = lambda c: write_row_chunk(store, [{"n": r["n"] * 3} for r in read_row_chunk(store, c)])  # noqa: E731
    map_chunks(store, chunks, {"rule": "twice"}, twice)
    map_chunks(store, chunks[:2], {"rule": "thrice"}, thrice)
    index_files = lambda: sorted(p.name for p in (tmp_path / "cache" / "chunkmaps").glob("*.json"))  # noqa: E731
    assert len(index_files()) == 2
    # nothing references any of it (no run keeps it): gc removes every object older than now
    dry = collect_garbage(store, dry_run=True)
    assert dry.pruned_indexes == 2 and len(index_files()) == 2
    report = collect_garbage(store)
    assert report.pruned_indexes == 2 and index_files() == []

    # a partly dead index keeps what still exists, and still checks out
    kept = [write_row_chunk(store, [{"n": i}]) for i in range(3)]
    out, _ = map_chunks(store, kept, {"rule": "twice"}, twice)
    (stage_file,) = (tmp_path / "cache" / "chunkmaps").glob("*.json")
    assert chunk_index.prune_indexes(store, {out[0]["blob"]}) == 1
    entries = chunk_index.load_index(store, stage_file.stem)
    assert sorted(c["blob"] for c in entries.values()) == sorted(c["blob"] for c in out[1:])
    assert chunk_index.prune_indexes(store, {out[0]["blob"]}) == 0  # nothing left to drop
