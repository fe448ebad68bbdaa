"""`evsys show node:<prefix>`: the manifest, a preview of rows, and tokens with the trained ones marked."""

from __future__ import annotations

import json
import re

import pytest

from evsys_build.store import Store
from evsys_testkit import SYSTEM_PROMPT, USER_TEMPLATE_TEXT, evsys, ok, ref_keys, tool_rows


def show(project, *args):
    return evsys("show", *args, "--cache-dir", "cache", cwd=project)


@pytest.fixture(scope="module")
def keys(built_project) -> dict[str, str]:
    return ref_keys(built_project / "cache")


@pytest.fixture(scope="module")
def tokenize_text(built_project, keys) -> str:
    return ok(show(built_project, f"node:{keys['tokenize'][:8]}", "--rows", "2")).stdout


def row_block(text: str, i: int) -> str:
    """The decoded text of preview row `i` (between its `--- row i` header and the next one)."""
    return re.split(r"^--- row \d+: .*$\n", text, flags=re.M)[i + 1].rstrip("\n")


def test_show_a_source_node_prints_its_manifest_and_rows(built_project, keys):
    out = ok(show(built_project, f"node:{keys['source'][:10]}")).stdout
    lines = out.splitlines()
    assert lines[0] == f"node     {keys['source']}"
    assert lines[1].startswith("rule     source (version ")
    assert lines[2] == "name     source"
    assert any(line.startswith("outputs  dataset — ") for line in lines)
    start = next(i for i, line in enumerate(lines) if line.startswith("rows     60 in "))
    assert lines[start].endswith("first 3:")
    assert [json.loads(line) for line in lines[start + 1 : start + 4]] == tool_rows(60)[:3]


def test_show_a_transform_node_lists_its_input_and_chat_rows(built_project, keys):
    out = ok(show(built_project, keys["transform[0] jsonl_to_chat"][:12], "--rows", "1")).stdout
    assert f"input    rows: source (source) node:{keys['source'][:12]}" in out
    row = json.loads(out.rstrip().splitlines()[-1])
    first = tool_rows(60)[0]
    assert row == {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": USER_TEMPLATE_TEXT.format(**first)},
            {"role": "assistant", "content": f"<answer>{first['tool_slug']}</answer>"},
        ]
    }


def test_show_tokens_marks_exactly_the_trained_tokens(tokenize_text):
    assert "trained tokens inside [[ ]]" in tokenize_text  # not a terminal: brackets, no colour
    assert "\x1b[" not in tokenize_text
    first = tool_rows(60)[0]
    text = row_block(tokenize_text, 0)
    marked = re.findall(r"\[\[(.*?)\]\]", text, flags=re.S)
    assert marked == [f"<answer>{first['tool_slug']}</answer><|im_end|>"]
    outside = re.sub(r"\[\[.*?\]\]", "", text, flags=re.S)
    assert SYSTEM_PROMPT in outside
    assert USER_TEMPLATE_TEXT.format(**first) in outside
    assert outside.startswith("<|im_start|>system\n")
    assert "<|im_start|>assistant\n" in outside  # the template's scaffolding is not trained


def test_show_tokens_header_counts_match_the_marks(tokenize_text):
    header = re.search(r"^--- row 0: (\d+) tokens, (\d+) trained$", tokenize_text, flags=re.M)
    assert header and int(header.group(2)) > 0 and int(header.group(1)) > int(header.group(2))
    assert len(re.findall(r"^--- row \d+:", tokenize_text, flags=re.M)) == 2
    assert "stats    {" in tokenize_text and '"chunks_ran": ' in tokenize_text


def test_show_json_rows_give_ids_and_weights(built_project, keys):
    out = json.loads(ok(show(built_project, f"node:{keys['tokenize'][:8]}", "--json", "--rows", "2")).stdout)
    assert out["manifest"]["key"] == keys["tokenize"] and out["manifest"]["rule"] == "tokenize"
    assert len(out["rows"]) == 2
    for row in out["rows"]:
        assert set(row) == {"input_ids", "weights"}
        assert len(row["input_ids"]) == len(row["weights"]) > 0
        assert all(isinstance(t, int) for t in row["input_ids"])
        assert set(row["weights"]) == {0.0, 1.0}
        assert row["weights"][0] == 0.0


def test_show_json_without_rows_is_the_manifest_only(built_project, keys):
    out = json.loads(ok(show(built_project, f"node:{keys['source'][:8]}", "--json")).stdout)
    assert set(out) == {"manifest"}
    assert out["manifest"]["outputs"]["dataset"]["num_rows"] == 60


def test_show_json_rows_of_a_rows_node(built_project, keys):
    out = json.loads(ok(show(built_project, f"node:{keys['source'][:8]}", "--json", "--rows", "2")).stdout)
    assert out["rows"] == tool_rows(60)[:2]


def test_unknown_prefix_exits_2_with_one_clear_line(built_project):
    used = {k[:2] for k in Store(built_project / "cache").iter_manifests()}
    free = next(f"{i:02x}" for i in range(256) if f"{i:02x}" not in used)
    proc = show(built_project, f"node:{free}")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"evsys: error: no node matches '{free}' in cache; `evsys plan CONFIG` lists node keys"]


def test_ambiguous_prefix_exits_2_and_lists_candidates(project_copy):
    cache = project_copy / "cache"
    key = ref_keys(cache)["source"]
    twin = key[:6] + ("0" if key[6] != "0" else "1") + key[7:]
    (cache / "nodes" / key[:2] / f"{twin}.json").write_text((cache / "nodes" / key[:2] / f"{key}.json").read_text())
    proc = show(project_copy, f"node:{key[:6]}")
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"evsys: error: node prefix '{key[:6]}' is ambiguous (2 nodes: ")
    assert key[:12] in line and twin[:12] in line and line.endswith("give more characters")
    assert ok(show(project_copy, f"node:{key[:7]}")).stdout.startswith(f"node     {key}")


def test_too_short_prefix(built_project):
    proc = show(built_project, "node:a")
    assert proc.returncode == 2
    assert "too short" in proc.stderr and "Traceback" not in proc.stderr


def test_a_manifest_that_fails_its_checksum_is_quarantined_and_named_in_one_line(project_copy):
    cache = project_copy / "cache"
    key = ref_keys(cache)["source"]
    path = cache / "nodes" / key[:2] / f"{key}.json"
    manifest = json.loads(path.read_text())
    manifest["name"] = "edited by hand"  # valid JSON, wrong checksum
    path.write_text(json.dumps(manifest))
    proc = show(project_copy, f"node:{key[:12]}")
    assert proc.returncode == 1 and proc.stdout == "" and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.splitlines()[-1] == f"evsys: error: node:{key[:12]} has no readable manifest in {cache} (a corrupt one is quarantined); `evsys build` makes it again"
    assert not path.exists()
