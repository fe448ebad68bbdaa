"""The walkthrough's example data: size, shape, held-out splits, reproducibility."""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from evsys_rules.evals.benchmarks import load_tasks
from evsys_rules.evals.verifiers import check

DATA = Path(__file__).resolve().parents[1] / "examples" / "sft_walkthrough" / "data"
WALKTHROUGH_ROWS = [
    {"query": "save a contact from this email", "tool_slug": "OUTLOOK_CREATE_CONTACT"},
    {"query": "edit a slack message I sent earlier", "tool_slug": "SLACK_UPDATES_A_SLACK_MESSAGE"},
    {"query": "create a new event on my calendar", "tool_slug": "GOOGLECALENDAR_CREATE_EVENT"},
]
WALKTHROUGH_VAL0 = (
    '{"task_id": "val_0", "instruction": "Query: schedule a meeting on my calendar\\nReply with the tool slug '
    'inside <answer></answer>.", "verifier": {"kind": "in_process", "fn_name": "contains", '
    '"expected": "<answer>GOOGLECALENDAR_CREATE_EVENT</answer>"}}'
)
QUERY_RE = re.compile(r"^Query: (.*)\nReply with the tool slug inside <answer></answer>\.$", re.DOTALL)


def train_rows() -> list[dict]:
    return [json.loads(line) for line in (DATA / "train.jsonl").read_text().splitlines() if line.strip()]


def split_queries(split: str) -> list[tuple[str, str]]:
    """(query, slug) per task, the slug taken from the verifier's expected value."""
    out = []
    for task in load_tasks(DATA / split):
        query = QUERY_RE.match(task.instruction).group(1)
        slug = task.verifier["expected"].removeprefix("<answer>").removesuffix("</answer>")
        out.append((query, slug))
    return out


def test_train_size_slugs_and_first_rows():
    rows = train_rows()
    assert len(rows) >= 300
    assert all(set(r) == {"query", "tool_slug"} for r in rows)
    counts = Counter(r["tool_slug"] for r in rows)
    assert len(counts) >= 24
    assert min(counts.values()) >= 10  # balanced enough for every slug to be learnable
    assert rows[:3] == WALKTHROUGH_ROWS
    first = (DATA / "train.jsonl").read_text().splitlines()[0]
    assert first == '{"query": "save a contact from this email", "tool_slug": "OUTLOOK_CREATE_CONTACT"}'


def test_train_has_no_duplicate_queries():
    queries = [r["query"] for r in train_rows()]
    assert len(queries) == len(set(queries))


def test_val_shape_and_first_task():
    lines = (DATA / "val" / "tasks.jsonl").read_text().splitlines()
    assert lines[0] == WALKTHROUGH_VAL0
    tasks = load_tasks(DATA / "val")
    assert len(tasks) >= 48
    assert [t.task_id for t in tasks] == [f"val_{i}" for i in range(len(tasks))]
    assert all(t.verifier["fn_name"] == "contains" for t in tasks)
    assert all(QUERY_RE.match(t.instruction) for t in tasks)


def test_test_split_shape():
    tasks = load_tasks(DATA / "test")
    assert len(tasks) >= 24
    assert [t.task_id for t in tasks] == [f"test_{i}" for i in range(len(tasks))]
    assert all(t.verifier["fn_name"] == "answer_tag" for t in tasks)


@pytest.mark.parametrize("split", ["val", "test"])
def test_verifiers_accept_own_slug_and_reject_others(split):
    slugs = sorted({r["tool_slug"] for r in train_rows()})
    for task in load_tasks(DATA / split):
        slug = task.verifier["expected"].removeprefix("<answer>").removesuffix("</answer>")
        assert slug in slugs
        assert check(task.verifier, f"<answer>{slug}</answer>", task.task_id) is True
        other = next(s for s in slugs if s != slug)
        assert check(task.verifier, f"<answer>{other}</answer>", task.task_id) is False


def test_every_slug_has_two_val_tasks():
    slugs = {r["tool_slug"] for r in train_rows()}
    per_slug = Counter(slug for _, slug in split_queries("val"))
    assert set(per_slug) == slugs
    assert min(per_slug.values()) >= 2


def test_held_out_queries_not_in_train_nor_shared():
    train = {r["query"] for r in train_rows()}
    val = [q for q, _ in split_queries("val")]
    test = [q for q, _ in split_queries("test")]
    assert not train & set(val)
    assert not train & set(test)
    assert not set(val) & set(test)
    assert len(val) == len(set(val)) and len(test) == len(set(test))


def test_generator_is_deterministic_and_matches_files():
    spec = importlib.util.spec_from_file_location("make_data", DATA / "make_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    train, val, test = module.build()
    assert (train, val, test) == module.build()
    assert train == train_rows()
    on_disk = [json.loads(line) for line in (DATA / "val" / "tasks.jsonl").read_text().splitlines()]
    assert val == on_disk
    on_disk = [json.loads(line) for line in (DATA / "test" / "tasks.jsonl").read_text().splitlines()]
    assert test == on_disk
