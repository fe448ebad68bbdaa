"""load_tasks: valid files load; every bad line is one `file:line: what (fix)` error."""

from __future__ import annotations

import json

import pytest

from evsys_build.errors import ConfigError, UnknownKindError
from evsys_rules.evals.benchmarks import Task, load_tasks

GOOD = {"task_id": "t0", "instruction": "Query: hi", "verifier": {"kind": "in_process", "fn_name": "contains", "expected": "x"}}


def write(tmp_path, *lines: str):
    (tmp_path / "tasks.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path / "tasks.jsonl"


def row(**overrides) -> str:
    data = {**GOOD, **overrides}
    return json.dumps({k: v for k, v in data.items() if v is not ...})


def error_for(tmp_path, *lines: str, exc=ConfigError) -> str:
    write(tmp_path, *lines)
    with pytest.raises(exc) as info:
        load_tasks(tmp_path)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_loads_tasks_and_skips_blank_lines(tmp_path):
    write(tmp_path, row(), "", "   ", row(task_id="t1", system_prompt="be brief"))
    tasks = load_tasks(tmp_path)
    assert [t.task_id for t in tasks] == ["t0", "t1"]
    assert isinstance(tasks[0], Task)
    assert tasks[0].system_prompt is None
    assert tasks[1].system_prompt == "be brief"
    assert tasks[0].verifier["expected"] == "x"


def test_missing_directory_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_tasks(tmp_path / "nope")
    with pytest.raises(ConfigError, match="tasks.jsonl: missing"):
        load_tasks(tmp_path)


def test_bad_json_names_line(tmp_path):
    msg = error_for(tmp_path, row(), '{"task_id": "t1", ')
    assert msg.startswith(f"{tmp_path / 'tasks.jsonl'}:2: invalid JSON")


def test_non_object_line(tmp_path):
    msg = error_for(tmp_path, "[1, 2]")
    assert msg.startswith(f"{tmp_path / 'tasks.jsonl'}:1: expected a JSON object")


def test_missing_field(tmp_path):
    msg = error_for(tmp_path, row(), row(task_id="t1", instruction=...))
    assert msg.startswith(f"{tmp_path / 'tasks.jsonl'}:2: missing field 'instruction'")


def test_unknown_field_lists_allowed(tmp_path):
    msg = error_for(tmp_path, row(answer="x"))
    assert ":1: unknown field 'answer'" in msg
    assert "system_prompt" in msg


def test_wrong_type(tmp_path):
    msg = error_for(tmp_path, row(task_id=7))
    assert ":1: field 'task_id'" in msg


def test_verifier_without_kind(tmp_path):
    msg = error_for(tmp_path, row(verifier={"fn_name": "contains", "expected": "x"}))
    assert ':1: verifier has no "kind"' in msg


def test_duplicate_task_id(tmp_path):
    msg = error_for(tmp_path, row(), "", row())
    assert msg.startswith(f"{tmp_path / 'tasks.jsonl'}:3: duplicate task_id 't0'")
    assert "first on line 1" in msg


def test_unknown_verifier_fn_name_suggests(tmp_path):
    bad = {"kind": "in_process", "fn_name": "answer_tga", "expected": "X"}
    msg = error_for(tmp_path, row(), row(task_id="t1", verifier=bad), exc=UnknownKindError)
    assert msg.startswith(f"{tmp_path / 'tasks.jsonl'}:2: ")
    assert "did you mean answer_tag?" in msg


def test_bad_verifier_args_name_line(tmp_path):
    bad = {"kind": "in_process", "fn_name": "regex", "pattern": "(", "flags": 1}
    msg = error_for(tmp_path, row(verifier=bad))
    assert ":1: verifier 'regex': unexpected flags" in msg


def test_empty_file(tmp_path):
    msg = error_for(tmp_path, "", "")
    assert "no tasks" in msg
