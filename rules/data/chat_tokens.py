"""Chat rows -> token ids + per-token loss weights, with the model's own chat template.

How a token gets its weight (nothing ever searches the rendered text for a message's text):

1. The conversation is rendered once, whole, by the chat template (`chat_render`), and
   tokenized once, whole (one batched fast-tokenizer call with offsets), so special tokens are
   never split and the ids are exactly the tokenization of the text the model sees.
2. An assistant turn k is trained on its *completion*: the text after the template's own
   generation prompt for messages[:k], up to and including the first end-of-turn token after
   it: exactly what a sampler must produce from that prompt before it stops. The prompt is
   rendered by the template (`enable_thinking=False` first, as evaluation prompts are, then the
   template's default for turns it renders without the empty think block) and must be a prefix
   of the whole rendering; then every character before it belongs to the earlier turns and the
   assistant header, every character after it up to the end of turn to message k: its content,
   the tool calls and think block the template renders for it, and `<|im_end|>`. Never the role
   header, never Qwen3's empty `<think>\\n\\n</think>\\n\\n` before a final reply (the eval prompt
   ends with it), never system, user or tool turns.
3. When no prompt is a prefix (the template renders earlier turns differently once a turn
   follows), the turn has no end-of-turn token, or the template writes a special token inside
   the turn, the row fails with a one-line ConfigError naming it and messages[k]: never a guess.
   Message text that spells a special token (`<|im_end|>`) is refused (`chat_rows`).
4. Characters become token weights through the tokenizer's offsets: a token is trained when any
   character it covers is trained. A token that straddles a boundary (Qwen3 renders an earlier
   reply "\\nHi" as "assistant\\n\\nHi", and "\\n\\n" is one token) is therefore trained: it holds text
   the model must produce, and HF's `return_assistant_tokens_mask` makes the same choice.

Conventions: weights[t] is the weight of predicting token t, weights[0] = 0; `supervise: all`
trains every other token; truncation keeps the head (right) or the tail (left) of max_length
tokens, and a row left with no trained token is an error.
"""

from __future__ import annotations

import functools
import re
import weakref
from pathlib import Path

from evsys_build.errors import ConfigError

from .chat_render import chat_renderer
from .chat_rows import Conversation, read_conversation

KEYED_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json", "special_tokens_map.json", "vocab.json", "merges.txt")
EVAL_PROMPT = {"enable_thinking": False}  # the template kwargs training and evaluation render with
PROMPT_VARIANTS = (EVAL_PROMPT, {})  # the eval prompt, then the template's default generation prompt
SUPERVISE = ("all", "all_assistant", "last_assistant")


def load_tokenizer(model_dir: str):
    """The model's own tokenizer, from its directory, offline; reloaded when its files change
    (an edited chat template must never be served from a process-wide cache)."""
    files = tokenizer_files(Path(model_dir))
    stamp = tuple((f.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) for f in files for st in [f.stat()])
    return _load_tokenizer(str(model_dir), stamp)


@functools.lru_cache(maxsize=8)
def _load_tokenizer(model_dir: str, stamp: tuple):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if not getattr(tok, "chat_template", None):
        raise ConfigError(f"model.name: the tokenizer in {model_dir} has no chat template; use a chat model")
    return tok


def tokenizer_files(model_dir: Path) -> list[Path]:
    return [model_dir / name for name in KEYED_TOKENIZER_FILES if (model_dir / name).is_file()]


def render(tok, messages: list[dict], generation_prompt: bool = False, where: str = "conversation") -> str:
    """The conversation as the model's chat template writes it (enable_thinking=False, as training and evaluation use)."""
    conv = read_conversation(messages, where, None, special_tokens_pattern(tok))
    return _render(chat_renderer(tok), conv, len(conv.messages), generation_prompt, EVAL_PROMPT, where)


def prompt_ids(tok, messages: list[dict], where: str = "eval prompt") -> list[int]:
    """Token ids of a prompt (no assistant turn yet) ending with the generation prompt: the exact
    prefix training used for the same turns."""
    return list(_encode(tok, [render(tok, messages, generation_prompt=True, where=where)])[0].ids)


def end_of_turn_ids(tok) -> list[int]:
    """Token ids that end an assistant turn (the template's eos, plus the pad/endoftext token)."""
    ids = {tok.eos_token_id}
    if tok.pad_token_id is not None:
        ids.add(tok.pad_token_id)
    return sorted(i for i in ids if i is not None)


def special_tokens_pattern(tok) -> re.Pattern:
    """Matches any of the tokenizer's special tokens (`<|im_end|>`, ...) written as text (kept per tokenizer)."""
    size = len(tok)
    cached = _special_patterns.get(tok)
    if cached is None or cached[0] != size:
        specials = {t.content for t in tok.added_tokens_decoder.values() if t.special} | {t for t in (tok.eos_token,) if t}
        specials = sorted(specials, key=len, reverse=True)  # the end of turn, even if not flagged special
        cached = _special_patterns[tok] = (size, re.compile("|".join(re.escape(s) for s in specials) or r"(?!x)x"))
    return cached[1]


_special_patterns: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def tokenize_conversation(tok, messages, supervise: str, max_length: int, truncation: str, where: str):
    """(input_ids, weights) for one conversation (a messages list, or a row with `messages` and `tools`)."""
    return tokenize_conversations(tok, [messages], supervise, max_length, truncation, [where])[0]


def tokenize_conversations(tok, conversations, supervise: str, max_length: int, truncation: str, wheres) -> list[tuple[list[int], list[float]]]:
    """(input_ids, weights) lists per conversation: all rows rendered, then encoded in one batched call.

    Errors name the first bad row in order (`wheres[i]`); rows before it are still checked first.
    """
    if supervise not in SUPERVISE:
        raise ConfigError(f"algorithm.params.supervise: {supervise!r} is not one of {', '.join(SUPERVISE)}")
    wheres = list(wheres)
    if len(wheres) != len(conversations):
        raise ValueError(f"tokenize_conversations: {len(conversations)} conversations but {len(wheres)} wheres")
    renderer, turn_end, specials = chat_renderer(tok), _turn_end(tok), special_tokens_pattern(tok)
    texts, spans, failure = [], [], None
    for row, where in zip(conversations, wheres):
        try:
            conv = read_conversation(row, where, supervise, specials)
            text = _render(renderer, conv, len(conv.messages), False, EVAL_PROMPT, where)
            spans.append(_trained_spans(renderer, conv, text, supervise, turn_end, specials, where))
        except ConfigError as exc:
            failure = exc
            break
        texts.append(text)
    out = [
        _row_tokens(enc, row_spans, supervise, max_length, truncation, where)
        for enc, row_spans, where in zip(_encode(tok, texts) if texts else [], spans, wheres)
    ]
    if failure is not None:
        raise failure
    return out


def _trained_spans(renderer, conv: Conversation, text: str, supervise: str, turn_end: str, specials: re.Pattern, where: str) -> list[tuple[int, int]]:
    """Character spans [start, end) of the rendered text that carry loss."""
    if supervise == "all":
        return [(0, len(text))]
    turns = [k for k, m in enumerate(conv.messages) if m["role"] == "assistant"]
    if supervise == "last_assistant":
        turns = turns[-1:]
    spans = []
    for k in turns:
        start = _completion_start(renderer, conv, k, text, where)
        spans.append((start, _completion_end(text, start, turn_end, specials, f"{where}: messages[{k}]")))
    return spans


def _completion_start(renderer, conv: Conversation, k: int, text: str, where: str) -> int:
    """Where assistant turn k's completion starts: the end of the template's prompt for messages[:k]."""
    if k == 0:
        raise ConfigError(f"{where}: messages[0] is an assistant turn with no turn before it to prompt it; start with a system or user message")
    for variant in PROMPT_VARIANTS:
        prompt = _render(renderer, conv, k, True, variant, where)
        if text.startswith(prompt):
            return len(prompt)
    raise ConfigError(
        f"{where}: messages[{k}]: the chat template renders the turns before this assistant turn differently from its "
        "own prompt for them, so which tokens this turn produced cannot be told; use supervise: all or another template"
    )


def _completion_end(text: str, start: int, turn_end: str, specials: re.Pattern, at: str) -> int:
    """Where the completion ends: just after the first end-of-turn token from `start` (where a sampler stops)."""
    end = text.find(turn_end, start)
    if end < 0:
        raise ConfigError(f"{at}: the chat template does not end this assistant turn with {turn_end!r}; cannot tell where it ends")
    inside = specials.search(text, start, end)
    if inside:
        raise ConfigError(f"{at}: the chat template writes {inside.group()!r} inside this assistant turn; cannot tell where it ends")
    return end + len(turn_end)


def _render(renderer, conv: Conversation, end: int, generation_prompt: bool, variant: dict, where: str) -> str:
    """messages[:end] rendered; a template failure is a one-line error naming the row."""
    messages = conv.messages if end == len(conv.messages) else conv.messages[:end]
    try:
        return renderer.render(messages, conv.tools, generation_prompt, variant, conv.plain_prefix(end))
    except ConfigError:
        raise
    except Exception as exc:  # the template's own raise_exception, or a Jinja error on odd data
        message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{where}: the chat template failed on this conversation: {message}") from None


def _turn_end(tok) -> str:
    if not tok.eos_token:
        raise ConfigError("model.name: the tokenizer has no eos token, so where an assistant turn ends cannot be told")
    return tok.eos_token


def _encode(tok, texts: list[str]):
    """One batched fast-tokenizer call (with offsets) over whole texts, no special tokens added."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError("model.name: training needs a fast tokenizer (tokenizer.json) for character offsets")
    if getattr(tok, "split_special_tokens", False):
        raise ConfigError("model.name: the tokenizer splits special tokens (split_special_tokens: true); chat templates need them whole")
    if backend.truncation is None and backend.padding is None and not backend.encode_special_tokens:
        return backend.encode_batch(texts, add_special_tokens=False)
    return tok(texts, add_special_tokens=False).encodings  # transformers resets truncation and padding first


def _row_tokens(enc, spans: list[tuple[int, int]], supervise: str, max_length: int, truncation: str, where: str):
    """(ids, weights) of one encoded row: weights from character spans, then truncation."""
    ids = enc.ids
    if supervise == "all":
        weights = [1.0] * len(ids)
    else:
        weights = [0.0] * len(ids)
        for start, end in spans:
            first, last = _token_range(enc, start, end)
            weights[first : last + 1] = [1.0] * (last + 1 - first)
    if len(ids) > max_length:
        keep = slice(0, max_length) if truncation == "right" else slice(len(ids) - max_length, len(ids))
        ids, weights = ids[keep], weights[keep]
    if weights:
        weights[0] = 0.0
    if not any(weights):
        raise ConfigError(
            f"{where}: no trained tokens left after truncation to max_length={max_length}; "
            "raise algorithm.params.max_length or drop long rows with a filter transform"
        )
    return ids, weights


def _token_range(enc, start: int, end: int) -> tuple[int, int]:
    """First and last token overlapping characters [start, end)."""
    first, last = enc.char_to_token(start), enc.char_to_token(end - 1)
    if first is None or last is None:  # a character normalization merged into a neighbour: use the offsets
        hits = [t for t, (a, b) in enumerate(enc.offsets) if a < end and b > start]
        first, last = hits[0], hits[-1]
    return first, last
