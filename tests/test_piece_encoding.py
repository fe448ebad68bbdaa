"""Piece encoding gives exactly the tokenizer's own ids and offsets for whole texts, and the loss
weights built on it are the documented rule (a token is trained when a character it covers is)."""

from __future__ import annotations

import random

import pytest
from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers

from evsys_rules.data import piece_encoding
from evsys_rules.data.chat_tokens import tokenize_conversations, tokenize_rows
from evsys_rules.data.piece_encoding import piece_encoder

# Pieces chosen to stress the split: special and non-special added tokens side by side, text that
# nearly spells one, whitespace runs at piece edges, combining marks and NFC-composable pairs,
# emoji (several byte-level tokens per character), CJK, and repeated pieces.
FRAGMENTS = [
    "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>", "</tool_response>", "<|endoftext|>",
    "<|im_", "im_end|>", "<thin", "k>", "\n", "\n\n", "  ", " \t ", "system\nYou are terse.", "user\n", "assistant\n",
    "Query: send mail", "e\u0301", "\u0301", "A\u030a", "🙂", "👩‍👩‍👧", "漢字かな", "ü", "'s", "'ll", "123456", "x" * 40,
    "<answer>GMAIL_SEND_EMAIL</answer>", "\r\n", "\u00a0", "",
]


def random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(FRAGMENTS) for _ in range(rng.randrange(1, 14))) for _ in range(n)]


def whole(backend, texts):
    return [(e.ids, [tuple(o) for o in e.offsets]) for e in backend.encode_batch(texts, add_special_tokens=False)]


def pieces(encoder, texts):
    out = encoder._pieces(texts, None, 0)
    b = out.bounds.tolist()
    return [(out.ids[x:y].tolist(), list(zip(out.starts[x:y].tolist(), out.ends[x:y].tolist()))) for x, y in zip(b[:-1], b[1:])]


def test_pieces_equal_the_whole_text_encoding_of_the_qwen3_tokenizer(tok):
    encoder = piece_encoder(tok.backend_tokenizer)
    assert encoder.off is None and "<|im_end|>" in encoder.tokens and "<think>" in encoder.tokens
    for seed in range(4):  # several batches, so pieces kept from earlier batches are reused
        texts = random_texts(300, seed)
        assert pieces(encoder, texts) == whole(tok.backend_tokenizer, texts)


def test_kept_pieces_stay_bounded(tok, monkeypatch):
    monkeypatch.setattr(piece_encoding, "MAX_KEPT_PIECES", 50)
    encoder = piece_encoding.PieceEncoder(tok.backend_tokenizer, ())
    for seed in range(3):
        texts = random_texts(200, 10 + seed)
        assert pieces(encoder, texts) == whole(tok.backend_tokenizer, texts)
        assert len(encoder.kept) <= 50


def byte_level(added: list[AddedToken], prefix_space=False) -> Tokenizer:
    vocab = {c: i for i, c in enumerate(sorted(set(pre_tokenizers.ByteLevel.alphabet())))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
    tokenizer.add_special_tokens(added)
    return tokenizer


def test_tokens_that_strip_whitespace_turn_the_piece_path_off():
    tokenizer = byte_level([AddedToken("<|im_end|>", special=True, normalized=False, lstrip=True)])
    encoder = piece_encoder(tokenizer)
    assert encoder.off and "strip whitespace" in encoder.off
    texts = ["a  <|im_end|>  b", "<|im_end|>"]
    out = encoder.encode(texts)
    assert [out.ids[x:y].tolist() for x, y in zip(out.bounds[:-1], out.bounds[1:])] == [ids for ids, _ in whole(tokenizer, texts)]


def test_a_metaspace_first_pre_tokenizer_turns_the_piece_path_off():
    tokenizer = byte_level([AddedToken("<s>", special=True, normalized=False)])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    assert "Metaspace" in piece_encoder(tokenizer).off


def test_pieces_equal_the_whole_text_with_a_prefix_space_and_a_normalized_added_token():
    tokenizer = byte_level([AddedToken("<sep>", special=True, normalized=False)], prefix_space=True)
    tokenizer.add_tokens([AddedToken("hello", normalized=True)])  # matched inside pieces, by the tokenizer itself
    encoder = piece_encoder(tokenizer)
    assert encoder.off is None and "hello" not in encoder.tokens
    texts = ["hello<sep>hello world<sep><sep> x", "e\u0301<sep>hello", "<sep>"]
    assert pieces(encoder, texts) == whole(tokenizer, texts)


def test_a_changed_tokenizer_gets_a_new_encoder():
    tokenizer = byte_level([AddedToken("<a>", special=True, normalized=False)])
    first = piece_encoder(tokenizer)
    tokenizer.add_special_tokens([AddedToken("<b>", special=True, normalized=False)])
    second = piece_encoder(tokenizer)
    assert second is not first and "<b>" in second.tokens
    assert pieces(second, ["x<b>y<a>"]) == whole(tokenizer, ["x<b>y<a>"])


def test_a_difference_found_by_the_check_falls_back_to_whole_texts(tok, monkeypatch):
    encoder = piece_encoding.PieceEncoder(tok.backend_tokenizer, ())
    real = encoder._pieces

    def broken(texts, *rest):
        out = real(texts, *rest)
        out.ids[0] += 1  # a wrong id on the first row
        return out

    monkeypatch.setattr(encoder, "_pieces", broken)
    texts = ["<|im_start|>user\nhi<|im_end|>"]
    out = encoder.encode(texts)
    assert out.ids.tolist() == whole(tok.backend_tokenizer, texts)[0][0]
    assert encoder.off and "differed" in encoder.off


def reference_weights(tok, conversation, max_length=4096):
    """The documented rule, one row at a time: whole-text offsets, a token trained when it covers a
    trained character (the spans from tokenize's own renderer), weights[0] = 0."""
    from evsys_rules.data.chat_render import chat_renderer
    from evsys_rules.data.chat_rows import read_conversation
    from evsys_rules.data.chat_tokens import EVAL_PROMPT, _render, _trained_spans, special_tokens_pattern

    specials = special_tokens_pattern(tok)
    conv = read_conversation(conversation, "row", "all_assistant", specials)
    renderer = chat_renderer(tok)
    text = _render(renderer, conv, len(conv.messages), False, EVAL_PROMPT, "row")
    spans = _trained_spans(renderer, conv, text, "all_assistant", tok.eos_token, specials, "row")
    enc = tok.backend_tokenizer.encode(text, add_special_tokens=False)
    weights = [1.0 if any(a < e and b > s for s, e in spans) else 0.0 for a, b in enc.offsets]
    weights[0] = 0.0
    return enc.ids[:max_length], weights[:max_length]


def test_batched_weights_equal_the_row_by_row_rule_on_varied_conversations(tok):
    rng = random.Random(7)
    words = ["hi", "🙂 ok", "e\u0301", "\n\nlead", "trail\n\n", "  spaced  ", "漢字", "<answer>X</answer>", "a" * 30, "1 2 3"]
    rows = []
    for _ in range(150):
        turns = rng.randrange(1, 4)
        messages = [{"role": "system", "content": rng.choice(words)}] if rng.random() < 0.5 else []
        for _ in range(turns):
            messages += [{"role": "user", "content": rng.choice(words)}, {"role": "assistant", "content": rng.choice(words)}]
        rows.append(messages)
    got = tokenize_conversations(tok, rows, "all_assistant", 4096, "right", [f"row {i}" for i in range(len(rows))])
    assert got == [reference_weights(tok, r) for r in rows]
    assert sum(sum(w) for _, w in got) > 0


@pytest.mark.parametrize("supervise", ["all_assistant", "last_assistant", "all"])
def test_pieces_without_a_loss_boundary_give_the_weights_real_offsets_give(tok, monkeypatch, supervise):
    """Pieces that hold no span edge take the piece's offsets for every token; the weights (and
    ids) must be exactly those of every token's own offsets, edge tokens with trimmed, empty
    offsets included (whitespace-only turns, leading and trailing newlines)."""
    rng = random.Random(11)
    words = ["hi", " ", "\n", "", "\n\nlead", "trail\n\n", "  spaced  ", " \t x", "🙂 ok", "e\u0301", "漢字", "<answer>X</answer>", "a" * 30, "1 2 3"]
    rows = []
    for i in range(200):
        messages = [{"role": "system", "content": rng.choice(words)}] if rng.random() < 0.5 else []
        for _ in range(rng.randrange(1, 4)):
            messages += [{"role": "user", "content": rng.choice(words) + f" {i}"}, {"role": "assistant", "content": rng.choice(words) + rng.choice(["", f" {i}", f"{i}\n"])}]
        rows.append(messages)
    wheres = [f"row {i}" for i in range(len(rows))]
    monkeypatch.setattr(piece_encoding, "CHECKED_FIRST", 0)  # only the first row of each batch is checked against the whole text
    got = [tokenize_rows(tok, rows[i : i + 50], supervise, 4096, "right", wheres[i : i + 50]) for i in range(0, 200, 50)]
    real = piece_encoding.PieceEncoder.encode
    monkeypatch.setattr(piece_encoding.PieceEncoder, "encode", lambda self, texts, boundaries=None: real(self, texts))
    want = [tokenize_rows(tok, rows[i : i + 50], supervise, 4096, "right", wheres[i : i + 50]) for i in range(0, 200, 50)]
    for a, b in zip(got, want):
        assert a.ids.tolist() == b.ids.tolist() and a.weights.tolist() == b.weights.tolist() and a.offsets.tolist() == b.offsets.tolist()
    if supervise != "all":
        assert sum(r.weights.sum() for r in got) < sum(len(r.weights) for r in got)  # some tokens untrained: the mask is not trivial


def test_truncation_cuts_each_row_on_its_own(tok):
    rows = [[{"role": "user", "content": "q " * n}, {"role": "assistant", "content": "yes"}] for n in (1, 40, 3)]
    left = tokenize_rows(tok, rows, "all_assistant", 30, "left", ["a", "b", "c"])
    full = tokenize_conversations(tok, rows, "all_assistant", 4096, "right", ["a", "b", "c"])
    bounds = left.offsets.tolist()
    for i, (ids, _) in enumerate(full):
        assert left.ids[bounds[i] : bounds[i + 1]].tolist() == ids[-30:]
        assert left.weights[bounds[i]] == 0.0 and left.weights[bounds[i + 1] - 2] == 1.0  # <|im_end|>, before the final "\n"
