"""Configs are read by libyaml where PyYAML has it: the same values, positions and error lines as
the pure-Python loader, which stays the reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from evsys_build.errors import ConfigError
from evsys_rules.config import yaml_marks
from evsys_testkit import BASE_CONFIG

REPO = Path(__file__).resolve().parents[1]

DOCUMENTS = {
    "test config": BASE_CONFIG,
    "sweep": BASE_CONFIG + "\nsweep:\n  algorithm.params.learning_rate: [1e-4, 2.0e-4, .5e-3]\n  seed: [1, 0x10, 0o7]\n",
    "scalars": "a: yes\nb: ~\nc: 2026-11-28\nd: 1_000\ne: '1'\nf: \"x\\ty\"\ng: .inf\nh: -.NaN\ni: |\n  two\n  lines\nj: >-\n  folded\n  text\nk: !!str 3\n",
    "anchors": "base: &b {x: 1, y: [1, 2]}\nother: *b\nlist: [*b, {z: 3}]\n",
    "flow and unicode": "names: [\"é\", 'ü', 名前]\nnested: {a: {b: {c: [1, {d: 2}]}}}\n",
}
BROKEN = ["a: [1, 2\nb: 3\n", "a: b: c\n", "a:\n  - x\n - y\n", "\tx: 1\n", "a: 'x\n", "key: @foo\n", "a: 1\na: 2\n", "? [a, b]\n: 1\n", "a: *nowhere\n"]


def load_with(loader: type, text: str, tmp_path: Path):
    """What load_yaml_with_marks returns (or the error line it raises) with `loader` as libyaml."""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(yaml_marks, "_FastLoader", loader)
        try:
            data, marks, _ = yaml_marks.load_yaml_with_marks(path)
        except ConfigError as exc:
            return "error", str(exc)
    return yaml.safe_dump(data, sort_keys=True, allow_unicode=True), marks


def test_libyaml_is_the_fast_loader_here():
    assert yaml_marks._FastLoader is yaml.CSafeLoader  # else the comparisons below compare one loader with itself


@pytest.mark.parametrize("name", [*DOCUMENTS, "the offline walkthrough"])
def test_values_and_positions_match_the_python_loader(tmp_path, name):
    text = DOCUMENTS[name] if name in DOCUMENTS else (REPO / "examples" / "sft_walkthrough" / "offline.yaml").read_text()
    fast = load_with(yaml.CSafeLoader, text, tmp_path)
    assert fast[0] != "error", fast
    assert fast == load_with(yaml_marks._MarkedLoader, text, tmp_path)


@pytest.mark.parametrize("text", BROKEN)
def test_a_broken_document_gets_the_python_loaders_error_line(tmp_path, text):
    fast = load_with(yaml.CSafeLoader, text, tmp_path)
    assert fast[0] == "error" and fast == load_with(yaml_marks._MarkedLoader, text, tmp_path)
