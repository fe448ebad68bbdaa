"""The offline walkthrough example, built through the CLI exactly as the README runs it: it must learn."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from evsys_testkit import evsys, ok

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "sft_walkthrough"


def test_offline_example_validates_builds_and_learns(tmp_path, tiny_model_dir):
    # the config's paths are relative to the repository root, so run from a copy laid out the same way
    root = tmp_path / "repo"
    shutil.copytree(EXAMPLE, root / "examples" / "sft_walkthrough", ignore=shutil.ignore_patterns("outputs"))
    config = "examples/sft_walkthrough/offline.yaml"
    ok(evsys("validate", config, "--deep", cwd=root))
    out = ok(evsys("build", config, "--cache-dir", "cache", cwd=root, timeout=900)).stdout
    assert out.rstrip().splitlines()[-1] == "run dir: examples/sft_walkthrough/outputs/sft_tool_selection"
    run_dir = root / "examples" / "sft_walkthrough" / "outputs" / "sft_tool_selection"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r["metrics"]["train_mean_nll"] for r in rows if r["split"] == "train"]
    val = [(r["step"], r["metrics"]["val/val/pass@1"]) for r in rows if r["split"] == "val"]
    test = [r["metrics"]["test/test/pass@1"] for r in rows if r["split"] == "test"]
    assert train[-1] < train[0] / 2, f"loss {train[0]:.3f} -> {train[-1]:.3f}"
    assert [s for s, _ in val] == [50, 100, 150, 200, 250]
    first, final = val[0][1], val[-1][1]
    assert final >= 0.5 and final > first, f"val pass@1 {val}"
    assert len(test) == 1  # no run_every: scored once, after training
    rebuild = ok(evsys("build", config, "--cache-dir", "cache", cwd=root)).stdout
    assert [line for line in rebuild.splitlines() if line.startswith("ran ")] == []
