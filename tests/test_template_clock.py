"""A chat template that renders the date (`strftime_now`, as Llama 3.2's does) is keyed by the
date it renders: another day is another key, and a node renders exactly the date its key holds."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from evsys_build.statcache import StatCache
from evsys_rules.data.chat_tokens import load_tokenizer_uncached, render
from evsys_rules.data.template_clock import pinned, template_clock
from evsys_rules.data.tokenizer_snapshot import capture, rebuild
from evsys_rules.models.resolve import resolve
from evsys_testkit import BASE_CONFIG, evsys, linked_model_copy, make_project, ok, plan_json, ref_keys, tool_rows

SYSTEM_TURN = "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
# Etc/GMT+12 and Etc/GMT-14 are 26 hours apart: their dates always differ (a build today, a plan tomorrow)
YESTERDAY, TOMORROW = {"TZ": "Etc/GMT+12"}, {"TZ": "Etc/GMT-14"}


def dated_model(tiny_model_dir: Path, dest: Path, call: str = "strftime_now('%d %b %Y')") -> Path:
    model = linked_model_copy(tiny_model_dir, dest)
    path = model / "tokenizer_config.json"
    config = json.loads(path.read_text())
    assert config["chat_template"].count(SYSTEM_TURN) == 1
    dated = "{%- if strftime_now is defined %}{%- set today = " + call + " %}{%- endif %}" + SYSTEM_TURN.replace(
        "'<|im_start|>system\\n' +", "'<|im_start|>system\\nToday Date: ' + today + '\\n' +")
    config["chat_template"] = config["chat_template"].replace(SYSTEM_TURN, dated)
    path.write_text(json.dumps(config, indent=1))
    return model


def test_the_formats_a_template_writes_are_rendered_into_the_key(tmp_path, tiny_model_dir):
    model = dated_model(tiny_model_dir, tmp_path / "m")
    moment = datetime.datetime(2031, 2, 3, 4, 5, 6)
    digests = resolve(str(model), None, StatCache(tmp_path / "s.json")).tokenizer
    assert template_clock(model, digests, moment) == {"formats": {"%d %b %Y": "03 Feb 2031"}}
    assert template_clock(tiny_model_dir, resolve(str(tiny_model_dir), None, StatCache(tmp_path / "t.json")).tokenizer) is None
    computed = dated_model(tiny_model_dir, tmp_path / "c", call="strftime_now(messages[0].content)")
    digests = resolve(str(computed), None, StatCache(tmp_path / "c.json")).tokenizer
    assert template_clock(computed, digests, moment) == {"at": "2031-02-03T04:05:06"}  # to the second


def test_a_pinned_clock_is_what_the_template_renders(tmp_path, tiny_model_dir):
    tok = load_tokenizer_uncached(str(dated_model(tiny_model_dir, tmp_path / "m")))
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    with pinned({"formats": {"%d %b %Y": "01 Jan 2001"}}):
        assert "Today Date: 01 Jan 2001\n" in render(tok, messages)
    assert datetime.datetime.now().strftime("Today Date: %d %b %Y") in render(tok, messages)  # the time again outside
    with pinned({"formats": {"%Y": "2001"}}), pytest.raises(ValueError, match="did not show"):
        render(tok, messages)


def test_another_date_reruns_tokenize_with_its_reason_and_renders_that_date(tmp_path, tiny_model_dir):
    model = dated_model(tiny_model_dir, tmp_path / "model")
    project = make_project(tmp_path / "p", tool_rows(6), BASE_CONFIG.replace("evsys/tiny-qwen3", str(model)))
    ok(evsys("build", "config.yaml", "--cache-dir", "cache", "--target", "tokenize", cwd=project, env=YESTERDAY))
    first = ref_keys(project / "cache")["tokenize"]
    assert plan_json(project, env=YESTERDAY)["tokenize"]["status"] == "cached"
    again = plan_json(project, env=TOMORROW)["tokenize"]
    assert again["status"] == "run"
    assert "the date the chat template renders changed" in again["reasons"]
    ok(evsys("build", "config.yaml", "--cache-dir", "cache", "--target", "tokenize", cwd=project, env=TOMORROW))
    second = ref_keys(project / "cache")["tokenize"]
    assert second != first
    shown = {key: ok(evsys("show", f"node:{key[:12]}", "--rows", "1", "--cache-dir", "cache", cwd=project)).stdout for key in (first, second)}
    dates = {key: text.split("Today Date: ", 1)[1][:11] for key, text in shown.items()}
    assert dates[first] != dates[second]
    for key, text in shown.items():  # each node's tokens hold one date, the one its key was made with
        assert text.count("Today Date: ") == text.count(f"Today Date: {dates[key]}")


def test_a_tokenizer_snapshot_of_a_dated_template_is_checked_on_one_fixed_date(tmp_path, tiny_model_dir):
    """The machine-wide tokenizer snapshot is checked against renders it captured: those hold a
    fixed date, so tomorrow's check still matches and the snapshot stays usable."""
    captured = capture(load_tokenizer_uncached(str(dated_model(tiny_model_dir, tmp_path / "m"))))
    assert any("Today Date: 03 Feb 2001\n" in text for _, _, text in captured["renders"])
    assert rebuild(captured) is not None
