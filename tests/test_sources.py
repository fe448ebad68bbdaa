"""Sources: JSONL, JSON, CSV, parquet and Hugging Face datasets, over one file, a glob or a
directory of shards; keyed by content (never the path); errors name file:line (or the row)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from evsys_build.executor import Executor
from evsys_build.graph import Graph
from evsys_build.store import Store
from evsys_testkit import evsys, plan_json, write_jsonl

ROWS = [{"query": f"q{i}", "tool_slug": f"T{i % 3}"} for i in range(40)]


def config(kind: str, path: str, params: str = "") -> str:
    return (
        f"data: {{source_kind: {kind}, path: {path}{', params: {' + params + '}' if params else ''}}}\n"
        "transforms:\n  - {kind: jsonl_to_chat, params: {user_template: '{query}', assistant_template: '{tool_slug}'}}\n"
        "model: {name: evsys/tiny-qwen3}\n"
    )


def source_rows(project: Path) -> tuple[list[dict], dict]:
    """Build the source node in process; its rows and manifest."""
    from evsys_build.chunks import iter_rows
    from evsys_rules.frontend import open_project

    store = Store(project / "cache")
    opened = open_project(project / "config.yaml", store)
    graph = Graph()
    source = graph.add(next(n for n in opened.graph.nodes() if n.rule == "source"))
    manifest = Executor(store).run(graph)[source.id]
    return list(iter_rows(store, manifest["outputs"]["dataset"])), manifest


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(here: Path, kind: str, path: str, params: str = "") -> None:
    (here / "config.yaml").write_text(config(kind, path, params))


def test_jsonl_one_file_a_glob_and_a_directory_give_the_same_rows(here, tiny_model_dir):
    write_jsonl(here / "data" / "a.jsonl", ROWS[:25])
    write_jsonl(here / "data" / "b.jsonl", ROWS[25:])
    write_jsonl(here / "all.jsonl", ROWS)
    results = {}
    for path in ("all.jsonl", "'data/*.jsonl'", "data"):
        write(here, "jsonl", path)
        results[path] = source_rows(here)[0]
    assert results["all.jsonl"] == results["'data/*.jsonl'"] == results["data"] == ROWS


def test_the_key_is_the_content_not_the_path(here, tiny_model_dir):
    write_jsonl(here / "shards" / "part-0.jsonl", ROWS)
    write(here, "jsonl", "shards")
    source_rows(here)
    shutil.move(here / "shards", here / "moved")
    write(here, "jsonl", "moved")
    assert plan_json(here)["source"]["status"] == "cached"
    (here / "moved" / "part-0.jsonl").write_text((here / "moved" / "part-0.jsonl").read_text().replace("q7", "q7!"))
    assert plan_json(here)["source"]["status"] == "run"


def test_json_arrays_and_a_field(here, tiny_model_dir):
    (here / "rows.json").write_text(json.dumps(ROWS))
    write(here, "json", "rows.json")
    assert source_rows(here)[0] == ROWS
    (here / "wrapped.json").write_text(json.dumps({"data": ROWS}))
    write(here, "json", "wrapped.json", "field: data")
    assert source_rows(here)[0] == ROWS


def test_csv_rows_are_strings_and_a_bad_row_names_its_line(here, tiny_model_dir):
    (here / "rows.csv").write_text("query,tool_slug\n" + "".join(f'"{r["query"]}, quoted",{r["tool_slug"]}\n' for r in ROWS))
    write(here, "csv", "rows.csv")
    rows = source_rows(here)[0]
    assert rows[0] == {"query": "q0, quoted", "tool_slug": "T0"} and len(rows) == 40
    (here / "rows.csv").write_text("query,tool_slug\nq0,T0\nq1,T1,extra\n")
    proc = evsys("build", "config.yaml", "--cache-dir", "cache", cwd=here)
    assert proc.returncode in (1, 2) and "rows.csv:3: 3 fields, but the header has 2" in proc.stderr


def test_parquet_is_read_in_batches(here, tiny_model_dir, monkeypatch):
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"query": [r["query"] for r in ROWS], "tool_slug": [r["tool_slug"] for r in ROWS],
                      "when": [datetime.date(2026, 1, 1 + i % 28) for i in range(40)]})
    pq.write_table(table, here / "rows.parquet", row_group_size=8)
    monkeypatch.setattr(pq.ParquetFile, "read", lambda *a, **k: pytest.fail("read the whole table at once"))
    write(here, "parquet", "rows.parquet", "batch_size: 7")
    rows, manifest = source_rows(here)
    assert rows[3] == {"query": "q3", "tool_slug": "T0", "when": "2026-01-04"} and len(rows) == 40
    write(here, "parquet", "rows.parquet", "columns: [query], batch_size: 7")
    assert source_rows(here)[0][0] == {"query": "q0"}


def test_a_source_that_decodes_with_a_library_keys_its_version(here, tiny_model_dir):
    """pyarrow decodes parquet: another release may give other rows from the same bytes."""
    import importlib.metadata

    import pyarrow as pa
    import pyarrow.parquet as pq

    from evsys_rules.frontend import open_project

    pq.write_table(pa.table({"query": ["q"], "tool_slug": ["T"]}), here / "rows.parquet")
    write(here, "parquet", "rows.parquet")
    source = next(n for n in open_project(here / "config.yaml", Store(here / "cache")).graph.nodes() if n.rule == "source")
    assert source.params["libraries"] == {"pyarrow": importlib.metadata.version("pyarrow")}
    write_jsonl(here / "rows.jsonl", ROWS)
    write(here, "jsonl", "rows.jsonl")
    source = next(n for n in open_project(here / "config.yaml", Store(here / "cache")).graph.nodes() if n.rule == "source")
    assert "libraries" not in source.params  # evsys parses JSON Lines itself


def test_hf_datasets_are_read_from_the_local_cache_and_keyed_by_content(here, tiny_model_dir, monkeypatch):
    """A local dataset folder through `datasets.load_dataset`, offline, with its own cache."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setenv("HF_DATASETS_CACHE", str(here / "hf-cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (here / "ds" / "data").mkdir(parents=True)
    pq.write_table(pa.table({"query": [r["query"] for r in ROWS], "tool_slug": [r["tool_slug"] for r in ROWS]}), here / "ds" / "data" / "train-00000.parquet")
    (here / "config.yaml").write_text(config("hf", "null", f"name: {here / 'ds'}, split: train").replace("path: null, ", ""))
    rows, manifest = source_rows(here)
    assert rows == ROWS
    assert plan_json(here)["source"]["status"] == "cached"  # same prepared files: same key
    pq.write_table(pa.table({"query": ["new"], "tool_slug": ["T9"]}), here / "ds" / "data" / "train-00000.parquet")
    assert plan_json(here)["source"]["status"] == "run"  # new data: new prepared files
    assert source_rows(here)[0] == [{"query": "new", "tool_slug": "T9"}]
    shard = here / "ds" / "data" / "train-00000.parquet"
    before = shard.stat()
    pq.write_table(pa.table({"query": ["old"], "tool_slug": ["T8"]}), shard)  # the same size
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `cp -p` and `rsync -t` keep it: datasets' cache would reuse its Arrow files
    assert shard.stat().st_size == before.st_size
    assert source_rows(here)[0] == [{"query": "old", "tool_slug": "T8"}]
    (here / "config.yaml").write_text(config("hf", "null", f"name: {here / 'ds'}, split: nope").replace("path: null, ", ""))
    proc = evsys("plan", "config.yaml", "--cache-dir", "cache", cwd=here)
    assert proc.returncode == 2 and "data.params.split" in proc.stderr and "Traceback" not in proc.stderr


def test_a_directory_leaves_out_hidden_folders_and_a_bracketed_file_name_is_that_file(here, tiny_model_dir):
    """Jupyter's `.ipynb_checkpoints/` copies inside a data folder were read too (every row twice);
    `data[1].jsonl` was taken as a glob and read `data1.jsonl` instead."""
    write_jsonl(here / "data" / "a.jsonl", ROWS[:25])
    write_jsonl(here / "data" / ".ipynb_checkpoints" / "a-checkpoint.jsonl", ROWS[:25])
    write(here, "jsonl", "data")
    assert source_rows(here)[0] == ROWS[:25]
    write_jsonl(here / "shards" / "data[1].jsonl", ROWS[:5])
    write_jsonl(here / "shards" / "data1.jsonl", ROWS[5:9])
    write(here, "jsonl", "'shards/data[1].jsonl'")
    assert source_rows(here)[0] == ROWS[:5]


def test_a_bom_before_a_blank_line_and_a_lone_surrogate(here, tiny_model_dir):
    """A UTF-8 BOM opens the file (a blank first line is still skipped); an escaped half of a
    surrogate pair is one line naming the row, not a traceback from the chunk writer."""
    (here / "train.jsonl").write_bytes(b"\xef\xbb\xbf\n" + b"".join(json.dumps(r).encode() + b"\n" for r in ROWS[:3]))
    write(here, "jsonl", "train.jsonl")
    assert source_rows(here)[0] == ROWS[:3]
    pair = '{"query": "\\ud83d\\ude00 ok", "tool_slug": "A"}\n'  # an escaped emoji: a whole pair
    lone = '{"query": "\\ud800 lone", "tool_slug": "A"}\n'
    (here / "train.jsonl").write_text(json.dumps(ROWS[0]) + "\n" + pair + lone)
    proc = evsys("build", "config.yaml", "--cache-dir", "cache", "--target", "source", cwd=here)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("evsys: error: train.jsonl:3: a \\u escape stands for half of a surrogate pair (U+D800 to U+DFFF), "
                                                    "which is not text; fix the escape (write the character itself, or both halves of the pair) or remove the line")


def test_no_file_matches_is_one_line(here):
    write(here, "jsonl", "'nothing/*.jsonl'")
    for command in (["validate", "config.yaml", "--deep"], ["plan", "config.yaml"]):
        proc = evsys(*command, cwd=here)
        assert proc.returncode == 2 and "config.yaml:1:" in proc.stderr and "matches no .jsonl file" in proc.stderr


def test_a_one_row_edit_parses_one_or_two_raw_chunks(here, tiny_model_dir):
    rows = [{"query": f"request {i}", "tool_slug": "T"} for i in range(20000)]
    write_jsonl(here / "big.jsonl", rows)
    write(here, "jsonl", "big.jsonl")
    first = source_rows(here)[1]
    assert first["stats"]["chunks_parsed"] > 20 and first["stats"]["chunks_cached"] == 0
    rows[10000] = {"query": "edited", "tool_slug": "T"}
    write_jsonl(here / "big.jsonl", rows)
    second = source_rows(here)[1]
    assert 1 <= second["stats"]["chunks_parsed"] <= 2
    assert second["stats"]["chunks_recognized"] + second["stats"]["chunks_cached"] >= first["stats"]["chunks_parsed"] - 2
