"""Folders reached through a symlink are read by the libraries (AutoTokenizer, glob's `**`), so
their files are keyed too: editing one behind a link is never a stale hit."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from evsys_build.statcache import StatCache
from evsys_build.tree import files_under
from evsys_rules.data.sources import resolve_files
from evsys_rules.models.resolve import resolve


def _edit(path: Path, text: str) -> None:
    path.write_text(text)
    later = time.time() + 5  # a new stat identity even within one mtime tick
    os.utime(path, (later, later))


def test_a_template_behind_a_linked_folder_is_in_the_tokenizer_digests(tmp_path, tiny_model_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    shared = tmp_path / "shared-templates"
    shared.mkdir()
    (shared / "tool_use.jinja").write_text("{{ 'TOOLS-V1' }}")
    (model / "additional_chat_templates").symlink_to(shared, target_is_directory=True)
    before = resolve(str(model), None, StatCache(tmp_path / "stat.json")).tokenizer
    assert "additional_chat_templates/tool_use.jinja" in before
    _edit(shared / "tool_use.jinja", "{{ 'TOOLS-V2' }}")
    after = resolve(str(model), None, StatCache(tmp_path / "stat.json")).tokenizer
    assert after["additional_chat_templates/tool_use.jinja"] != before["additional_chat_templates/tool_use.jinja"]


def test_a_data_folder_reads_shards_behind_a_link_and_a_loop_ends(tmp_path):
    data = tmp_path / "data"
    (data / "own").mkdir(parents=True)
    (data / "own" / "a.jsonl").write_text("{}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "b.jsonl").write_text("{}\n")
    (data / "linked").symlink_to(elsewhere, target_is_directory=True)
    (data / "own" / "back-up").symlink_to(data, target_is_directory=True)  # a loop
    assert resolve_files(str(data), (".jsonl",)) == [data / "linked" / "b.jsonl", data / "own" / "a.jsonl"]


def test_hidden_names_are_skipped_at_any_depth_when_asked(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x").write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".hidden").write_text("")
    (tmp_path / "sub" / "kept").write_text("")
    assert files_under(tmp_path, skip_hidden=True) == [tmp_path / "sub" / "kept"]
    assert len(files_under(tmp_path)) == 3
