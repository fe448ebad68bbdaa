"""`.evsys-cache-example/` (built by scripts/build-example-store) opened with today's code.

If a key or the store format changes, these fail: rebuild the example store on purpose.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from evsys_build.store import Store
from evsys_testkit import evsys, ok

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_STORE = REPO / ".evsys-cache-example"
CONFIG = "examples/sft_walkthrough/offline.yaml"


@pytest.fixture(scope="module")
def store_copy(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("example") / "store"
    shutil.copytree(EXAMPLE_STORE, dest)
    return dest


def _ref_nodes(store: Path) -> dict[str, str]:
    ref = Store(store).read_ref("sft_tool_selection", "default")
    return {name: entry["key"] for name, entry in ref["nodes"].items()}


def test_example_store_verifies(store_copy):
    proc = ok(evsys("verify", "--cache-dir", str(store_copy), cwd=REPO))
    assert proc.stdout.rstrip().endswith("0 problem(s)")


def test_todays_keys_match_the_example_store(store_copy, tiny_model_dir):
    plan = json.loads(ok(evsys("plan", CONFIG, "--json", "--cache-dir", str(store_copy), cwd=REPO)).stdout)["nodes"]
    not_cached = [(n["name"], n["reasons"]) for n in plan if n["status"] != "cached"]
    assert not_cached == []
    assert {n["key"] for n in plan} == set(_ref_nodes(store_copy).values())


def test_deep_validate_counts_the_tokens_the_build_made(store_copy, tiny_model_dir):
    """`validate --deep` tokenizes as the tokenize node did: the same token and trained-token counts."""
    out = ok(evsys("validate", CONFIG, "--deep", cwd=REPO)).stdout
    dataset = Store(store_copy).read_manifest(_ref_nodes(store_copy)["tokenize"])["outputs"]["dataset"]
    assert f"tokens: {dataset['num_tokens']} tokens, {dataset['num_loss_tokens']} trained; longest row " in out


@pytest.mark.parametrize(
    "name,expected",
    [
        ("source", "rows     780 in"),
        ("transform[0] jsonl_to_chat", '"role": "assistant"'),
        ("tokenize", "[[<answer>OUTLOOK_CREATE_CONTACT</answer><|im_end|>]]"),
        ("train", "trained 250 steps"),
        ("checkpoint@250", "checkpoint step 250 of base model evsys/tiny-qwen3"),
        ("eval val@250", "eval val at step 250: pass@1="),
        ("report", "summary.md"),
    ],
)
def test_show_every_node_kind(store_copy, name, expected):
    key = _ref_nodes(store_copy)[name]
    proc = ok(evsys("show", f"node:{key[:8]}", "--cache-dir", str(store_copy), "--rows", "1", cwd=REPO))
    assert expected in proc.stdout
