"""Recipes kept between processes render exactly what apply_chat_template renders, without
compiling the template, and a file that is not this template's (or is damaged) is never read."""

from __future__ import annotations

import json
import random

import pytest

from evsys_rules.data import tokenizer_snapshot
from evsys_rules.data.chat_render import ChatRenderer, chat_renderer
from evsys_rules.data.saved_recipes import _SAME, _decode, _encode, recipes_path, save_recipes, seed_recipes

TEXTS = ["d", "user", "\n", "\nfoo", "foo\n", " x", "<think>\nr\n</think>\n\nans", "<tool_response>x</tool_response>", "{ }", "🙂", "</think>", ""]


def conversations(seed: int, n: int) -> list[list[dict]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        messages = [{"role": "system", "content": rng.choice(TEXTS)}] if rng.random() < 0.5 else []
        for i in range(rng.randrange(1, 5)):
            messages.append({"role": ("user", "assistant")[i % 2], "content": rng.choice(TEXTS)})
        out.append(messages)
    return out


class Fresh:
    """A second tokenizer object sharing `tok`'s template: a new process's renderer, in effect."""

    def __init__(self, tok):
        self.tok = tok

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_seeded_recipes_render_as_apply_chat_template_without_compiling(tok, tmp_path):
    learner = chat_renderer(tok)
    for messages in conversations(0, 300):
        for prompt in (False, True):
            learner.render(messages, None, prompt, {"enable_thinking": False}, True)
    path = tmp_path / "recipes" / "r.json"
    save_recipes(tok, path)
    fresh = Fresh(tok)
    seed_recipes(fresh, path)
    renderer = chat_renderer(fresh)
    assert renderer is not learner and sum(len(r) for r in renderer.recipes.values()) > 10
    first = conversations(0, 1)[0]  # a row whose shape and contents the learner saw
    assert renderer.render(first, None, False, {"enable_thinking": False}, True) == tok.apply_chat_template(first, tokenize=False, enable_thinking=False)
    assert renderer._compiled is None  # rendered from a saved recipe: no template compiled, no transformers needed
    references = []
    reference = renderer.reference
    renderer.reference = lambda *args: references.append(1) or reference(*args)
    total = 0
    for messages in conversations(1, 300):
        for prompt in (False, True):
            expected = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt, enable_thinking=False)
            assert renderer.render(messages, None, prompt, {"enable_thinking": False}, True) == expected
            total += 1
    assert total - len(references) > total // 2  # most rows rendered from saved recipes


def test_a_damaged_file_is_ignored(tok, tmp_path):
    chat_renderer(tok).render(conversations(2, 1)[0], None, False, {}, True)
    path = tmp_path / "recipes" / "r.json"
    save_recipes(tok, path)
    saved = json.loads(path.read_text())
    saved["recipes"][0][1][0][0] = _encode(["tampered"])
    path.write_text(json.dumps(saved))
    fresh = Fresh(tok)
    seed_recipes(fresh, path)
    assert not any(chat_renderer(fresh).recipes.values())


def test_the_file_is_named_by_a_snapshot_key_that_covers_the_renderer_code(tmp_path, monkeypatch, tiny_model_dir):
    assert recipes_path(tmp_path, "a" * 32) != recipes_path(tmp_path, "b" * 32)
    before = tokenizer_snapshot.snapshot_key(str(tiny_model_dir))
    real = tokenizer_snapshot.code_identity
    monkeypatch.setattr(tokenizer_snapshot, "code_identity", lambda obj: "edited" if obj is ChatRenderer else real(obj))
    tokenizer_snapshot.tokenizer_code.cache_clear()
    try:
        assert tokenizer_snapshot.snapshot_key(str(tiny_model_dir)) != before  # new renderer code never reads the old recipes
    finally:
        tokenizer_snapshot.tokenizer_code.cache_clear()


def test_guard_values_round_trip_exactly():
    values = [("<think>", "</think>"), ["x", 1], _SAME, None, True, 3, 1.5, "s", ((1, 2), [3, (4,)])]
    assert [_decode(_encode(v)) for v in values] == values
    assert _decode(_encode(True)) is True and _decode(_encode(1)) == 1 and type(_decode(_encode(1))) is int
    with pytest.raises(TypeError):
        _encode(b"bytes")
