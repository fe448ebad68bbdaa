"""Chat rows -> token ids + per-token loss weights, with the model's own chat template.

How a token gets its weight (nothing ever searches the rendered text for a message's text):

1. The conversation is rendered once, whole, by the chat template (`chat_render`), and
   tokenized as the fast tokenizer tokenizes the whole text, with offsets (`piece_encoding`:
   the pieces between added tokens, each distinct piece encoded once), so special tokens are
   never split and the ids are exactly the tokenization of the text the model sees.
2. An assistant turn k is trained on its *completion*: the text after the template's own
   generation prompt for messages[:k], up to and including the first end-of-turn token after
   it: exactly what a sampler must produce from that prompt before it stops. The prompt is
   rendered by the template (`enable_thinking=False` first, as evaluation prompts are, then the
   template's default for turns it renders without the empty think block) and must be a prefix
   of the whole rendering; then every character before it belongs to the earlier turns and the
   assistant header, every character after it up to the end of turn to message k: its content,
   the tool calls and think block the template renders for it, and the end of turn (`turn_end`:
   the first special token the template writes after a reply, `<|im_end|>` for Qwen). Never the
   generation prompt's role header (a template that writes no generation prompt leaves the header
   to the completion: its sampler must write it too), never Qwen3's empty
   `<think>\\n\\n</think>\\n\\n` before a final reply (the eval prompt ends with it), never
   system, user or tool turns.
3. When no prompt is a prefix (the template renders earlier turns differently once a turn
   follows), the turn has no end-of-turn token, the template writes a special token inside
   the turn, or the span holds text of a later message (a template that skips an empty reply, or
   ends turns only at the end of the conversation: found by rendering again with later messages
   marked or changed), the row fails with a one-line ConfigError naming it and messages[k]:
   never a guess.
   Message text that spells a special token (`<|im_end|>`) is refused (`chat_rows`).
4. Characters become token weights through the tokenizer's offsets: a token is trained when any
   character it covers is trained. A token that straddles a boundary (Qwen3 renders an earlier
   reply "\\nHi" as "assistant\\n\\nHi", and "\\n\\n" is one token) is therefore trained: it holds text
   the model must produce, and HF's `return_assistant_tokens_mask` makes the same choice.

Conventions: weights[t] is the weight of predicting token t, weights[0] = 0; `supervise: all`
trains every other token; an assistant turn marked `weight: 0` is never one of the trained turns; truncation keeps the head (right) or the tail (left) of max_length
tokens, and a row left with no trained token is an error.
"""

from __future__ import annotations

import functools
import re
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from evsys_build.change_text import change_pair
from evsys_build.errors import ConfigError
from evsys_build.watch import RACY_NS

from ..ml_stack import import_lock, preload_tokenizers
from ..models.resolve import tokenizer_files
from .chat_render import chat_renderer
from .chat_rows import Conversation, read_conversation
from .piece_encoding import piece_encoder

EVAL_PROMPT = {"enable_thinking": False}  # the template kwargs training and evaluation render with
PROMPT_VARIANTS = (EVAL_PROMPT, {})  # the eval prompt, then the template's default generation prompt
SUPERVISE = ("all", "all_assistant", "last_assistant")


def load_tokenizer(model_dir: str):
    """The model's own tokenizer, from its directory, offline; reloaded when any file the keys
    cover changes (every non-weight file: an edited chat template or added_tokens.json must
    never be served from a process-wide cache)."""
    stamp = stat_stamp(tokenizer_files(Path(model_dir)))
    return load_tokenizer_uncached(str(model_dir)) if racy(stamp) else _load_tokenizer(str(model_dir), stamp)


def stat_stamp(files: list[Path]) -> tuple:
    """The files' stat identities: a process-wide cache keyed by it reloads when any file changes
    (unless `racy`: then it must not be used at all)."""
    return tuple((f.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) for f in files for st in [f.stat()])


def racy(stamp: tuple) -> bool:
    """Whether a file of `stamp` changed too recently for its stat to vouch for its bytes: a second
    same-size write within one timestamp tick leaves the stat as it was (git's racy-clean rule)."""
    now = time.time_ns()
    return any(now - mtime < RACY_NS for _, _, mtime, _, _ in stamp)


@functools.lru_cache(maxsize=8)
def _load_tokenizer(model_dir: str, stamp: tuple):
    return load_tokenizer_uncached(model_dir)


def load_tokenizer_uncached(model_dir: str):
    """AutoTokenizer's tokenizer of `model_dir`, loaded afresh (`load_tokenizer` keeps it). Under
    the ML stack's import lock: the first load imports its tokenizer class's module."""
    preload_tokenizers()
    from transformers import AutoTokenizer

    with import_lock():
        tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if not getattr(tok, "chat_template", None):
        raise ConfigError(f"model.name: the tokenizer in {model_dir} has no chat template; use a chat model")
    return tok


def render(tok, messages: list[dict], generation_prompt: bool = False, where: str = "conversation", template_kwargs: dict | None = None) -> str:
    """The conversation as the model's chat template writes it (enable_thinking=False, as training
    and evaluation use, unless `template_kwargs` say otherwise)."""
    conv = read_conversation(messages, where, None, special_tokens_pattern(tok))
    return _render(chat_renderer(tok), conv, len(conv.messages), generation_prompt, {**EVAL_PROMPT, **(template_kwargs or {})}, where)


def prompt_ids(tok, messages: list[dict], where: str = "eval prompt", template_kwargs: dict | None = None) -> list[int]:
    """Token ids of a prompt (no assistant turn yet) ending with the generation prompt: the exact
    prefix training used for the same turns (a benchmark's `chat_template_kwargs` may ask for
    another: `enable_thinking: true` leaves Qwen3's think block to the model)."""
    return _encoder(tok).encode([render(tok, messages, generation_prompt=True, where=where, template_kwargs=template_kwargs)]).ids.tolist()


def end_of_turn_ids(tok) -> list[int]:
    """Token ids that end an assistant turn: what the template closes a turn with (`turn_end`),
    the eos, and the pad/endoftext token."""
    added = {t.content: i for i, t in tok.added_tokens_decoder.items()}
    ids = {tok.eos_token_id, added.get(turn_end(tok))}
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
    """(input_ids, weights) lists per conversation (`tokenize_rows`, as plain lists)."""
    rows = tokenize_rows(tok, conversations, supervise, max_length, truncation, wheres)
    ids, weights, bounds = rows.ids.tolist(), rows.weights.tolist(), rows.offsets.tolist()
    return [(ids[a:b], weights[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


@dataclass
class TokenRows:
    """Tokenized rows as flat arrays: row i is [offsets[i], offsets[i + 1])."""

    ids: "object"  # np.int32
    weights: "object"  # np.float32
    offsets: "object"  # np.int64, one more than rows
    truncated: int = 0  # rows cut to max_length
    longest: int = 0  # tokens in the longest row before the cut
    trained_cut: int = 0  # trained tokens the cut dropped


def tokenize_rows(tok, conversations, supervise: str, max_length: int, truncation: str, wheres) -> TokenRows:
    """All rows rendered, then encoded together (`piece_encoding`), weights from character spans.

    Errors name the first bad row in order (`wheres[i]`); rows before it are still checked first.
    """
    if supervise not in SUPERVISE:
        raise ConfigError(f"algorithm.params.supervise: {supervise!r} is not one of {', '.join(SUPERVISE)}")
    wheres = list(wheres)
    if len(wheres) != len(conversations):
        raise ValueError(f"tokenize_conversations: {len(conversations)} conversations but {len(wheres)} wheres")
    renderer, turn_end_text, specials = chat_renderer(tok), turn_end(tok), special_tokens_pattern(tok)
    texts, spans, failure = [], [], None
    for row, where in zip(conversations, wheres):
        try:
            conv = read_conversation(row, where, supervise, specials)
            text = _render(renderer, conv, len(conv.messages), False, EVAL_PROMPT, where)
            spans.append(_trained_spans(renderer, conv, text, supervise, turn_end_text, specials, where))
        except ConfigError as exc:
            failure = exc
            break
        texts.append(text)
    boundaries = [[x for span in row for x in span] for row in spans] if supervise != "all" else [[] for _ in spans]
    rows = _weighted(_encoder(tok).encode(texts, boundaries), spans, supervise, max_length, truncation, wheres)
    if failure is not None:
        raise failure
    return rows


def _trained_spans(renderer, conv: Conversation, text: str, supervise: str, turn_end: str, specials: re.Pattern, where: str) -> list[tuple[int, int]]:
    """Character spans [start, end) of the rendered text that carry loss."""
    if supervise == "all":
        if conv.untrained:
            k = min(conv.untrained)
            raise ConfigError(f"{where}: messages[{k}].weight is 0, which supervise: all cannot honour (it trains every token); use supervise: all_assistant")
        return [(0, len(text))]
    turns = [k for k, m in enumerate(conv.messages) if m["role"] == "assistant" and k not in conv.untrained]
    if supervise == "last_assistant":
        turns = turns[-1:]
    spans = []
    for k in turns:
        start = _completion_start(renderer, conv, k, text, where)
        spans.append((start, _completion_end(text, start, turn_end, specials, f"{where}: messages[{k}]")))
    _refuse_later_text_in_spans(renderer, conv, turns, spans, text, turn_end, where)
    return spans


def _completion_start(renderer, conv: Conversation, k: int, text: str, where: str) -> int:
    """Where assistant turn k's completion starts: the end of the template's prompt for messages[:k]."""
    if k == 0:
        raise ConfigError(f"{where}: messages[0] is an assistant turn with no turn before it to prompt it; start with a system or user message")
    prompts = [_render(renderer, conv, k, True, variant, where) for variant in PROMPT_VARIANTS]
    for prompt in prompts:
        if text.startswith(prompt):
            return len(prompt)
    theirs, ours = change_pair(prompts[0], text[: len(prompts[0]) + 20])
    later = any(m["role"] == "assistant" for m in conv.messages[k + 1 :])  # an earlier reply: leaving it untrained may do
    fixes = ("train only the last reply (supervise: last_assistant, or weight: 0 on this turn), every token (supervise: all), or use another template"
             if later else "use supervise: all or another template")
    raise ConfigError(
        f"{where}: messages[{k}]: the chat template renders the turns before this assistant turn differently from its "
        f"own prompt for them (the prompt reads '{theirs}', the conversation '{ours}'), so which tokens this turn "
        f"produced cannot be told; {fixes}"
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


MARKS = 0xE000, 0xF8FF  # private-use characters, to mark contents with (no template treats them specially)
_MARK = re.compile(f"[{chr(MARKS[0])}-{chr(MARKS[1])}]")
_UNKNOWN = -1


def _refuse_later_text_in_spans(renderer, conv: Conversation, turns: list[int], spans: list[tuple[int, int]], text: str, turn_end: str, where: str) -> None:
    """No trained span may hold text of a later message (a template that skips an empty reply,
    or ends turns only at the end of the conversation, would train a turn on the next message).
    One render with every later message marked answers for all turns when the template wrote
    the marks verbatim (`later_marks_in_spans`); otherwise each turn is checked on its own by
    changing the messages after it (`later_contents_move_text`)."""
    checked = [(k, span) for k, span in zip(turns, spans) if k < len(conv.messages) - 1]
    if not checked:
        return
    first = later_marks_in_spans(renderer, conv, checked, text, where)
    if first == _UNKNOWN:
        first = next((k for k, (_, end) in checked if later_contents_move_text(renderer, conv, k, text, end, where)), None)
    if first is not None:
        raise ConfigError(
            f"{where}: messages[{first}]: the chat template writes later messages inside this assistant turn (before its "
            f"{turn_end!r}), so which tokens it produced cannot be told; drop empty assistant turns, or use "
            "supervise: last_assistant or a template that ends every turn"
        )


def later_marks_in_spans(renderer, conv: Conversation, checked: list[tuple[int, tuple[int, int]]], text: str, where: str) -> int:
    """The first checked turn whose span holds text of a later message, None if none, or _UNKNOWN
    when this render cannot tell.

    Each message after the first checked turn gets its own private-use character, put before and
    after each of its texts: content, reasoning, each tool call's name (`_with_texts_changed`).
    With the marks removed the render must be `text` exactly (else the template inspected what
    the marks changed: _UNKNOWN), and each pair of marks is then where that text sits in `text`.
    An empty content is not marked (that would change its truthiness); a message with no text to
    mark, or whose marks the template did not write, cannot be placed: _UNKNOWN."""
    low = checked[0][0] + 1
    if len(conv.messages) - low > MARKS[1] - MARKS[0] or _MARK.search(text):
        return _UNKNOWN
    marked = list(conv.messages[:low])
    for j in range(low, len(conv.messages)):
        mark = chr(MARKS[0] + j - low)
        message = _with_texts_changed(conv.messages[j], lambda t, mark=mark: mark + t + mark if t else t)
        if message is conv.messages[j]:
            return _UNKNOWN
        marked.append(message)
    try:
        other = _render(renderer, Conversation(marked, conv.tools, conv.plain, conv.untrained), len(marked), False, EVAL_PROMPT, where)
    except ConfigError:
        return _UNKNOWN
    places: dict[int, list[int]] = {}
    for removed, found in enumerate(_MARK.finditer(other)):  # where each mark sits in `text`
        places.setdefault(low + ord(found.group()) - MARKS[0], []).append(found.start() - removed)
    if _MARK.sub("", other) != text or len(places) != len(marked) - low or any(len(at) % 2 for at in places.values()):
        return _UNKNOWN  # not the text with marks added, or a message the template wrote no mark of (where is it?)
    for k, (start, end) in checked:
        for j in range(k + 1, len(conv.messages)):
            at = places.get(j, ())
            if any(a < end and b > start for a, b in zip(at[::2], at[1::2])):
                return k
    return None


def later_contents_move_text(renderer, conv: Conversation, k: int, text: str, end: int, where: str) -> bool:
    """Whether the text before turn k's `end` changes when every later message's texts change (a
    mark in the middle of its content, reasoning and tool names, so `startswith` and `endswith`
    answer as before; a mark for an empty content; one more key in each tool call's arguments)."""
    changed = list(conv.messages[: k + 1])
    for message in conv.messages[k + 1 :]:
        changed.append(_with_texts_changed(message, lambda t: t[: len(t) // 2] + chr(MARKS[0]) + t[len(t) // 2 :], arguments=True))
    try:
        other = _render(renderer, Conversation(changed, conv.tools, conv.plain, conv.untrained), len(changed), False, EVAL_PROMPT, where)
    except ConfigError:
        return True
    return other[:end] != text[:end]


def _with_texts_changed(message: dict, change, arguments: bool = False) -> dict:
    """`message` with `change` applied to its content, reasoning and tool call names (and, with
    `arguments`, a key added to each tool call's arguments object); the same object when none
    changed."""
    out = {}
    for key in ("content", "reasoning_content", "reasoning", "thinking"):  # reasoning under each name a row gave it
        if isinstance(message.get(key), str) and change(message[key]) != message[key]:
            out[key] = change(message[key])
    if message.get("tool_calls"):
        calls = []
        for call in message["tool_calls"]:
            function = {**call["function"], "name": change(call["function"]["name"])}
            if arguments and isinstance(function.get("arguments"), dict):
                function["arguments"] = {**function["arguments"], chr(MARKS[0]): chr(MARKS[0])}
            calls.append({**call, "function": function})
        out["tool_calls"] = calls
    return {**message, **out} if out else message


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


def turn_end(tok) -> str:
    """The text that ends an assistant turn: the first special token the chat template writes
    after an assistant's content (Gemma's `<end_of_turn>` and Phi-3's `<|end|>`, whose eos is
    another token; for most models it is the eos), else the tokenizer's eos. What a sampler
    must stop at and what a trained completion ends with (kept per tokenizer and template)."""
    key = (len(tok), getattr(tok, "chat_template", None), tok.eos_token)
    cached = _turn_ends.get(tok)
    if cached is None or cached[0] != key:
        cached = _turn_ends[tok] = (key, template_turn_end(tok) or tok.eos_token)
    if not cached[1]:
        raise ConfigError("model.name: the tokenizer has no eos token and its chat template closes no assistant turn with a special token, so where a turn ends cannot be told")
    return cached[1]


_turn_ends: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_PROBE_REPLY = "\ue000"  # a private-use character: no template treats it specially


def template_turn_end(tok) -> str | None:
    """The first special token after a probe reply, as the template renders a user turn and that
    reply (a snapshot tokenizer holds what its capture found: rendering here would import
    transformers' tokenizer base, 0.6 s of a one-row rebuild)."""
    known = getattr(tok, "template_turn_end", None)
    if isinstance(known, tuple) and known[0] == tok.chat_template:
        return known[1]
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE_REPLY}]
    try:
        text = tok.apply_chat_template(probe, tokenize=False, **EVAL_PROMPT)
    except Exception:  # a template that refuses this probe (one that needs a system turn, ...): the eos it is
        return None
    at = text.find(_PROBE_REPLY) if isinstance(text, str) else -1
    found = special_tokens_pattern(tok).search(text, at + len(_PROBE_REPLY)) if at >= 0 else None
    return found.group() if found else None


def _weighted(encoded, spans: list[list[tuple[int, int]]], supervise: str, max_length: int, truncation: str, wheres: list[str]) -> TokenRows:
    """Weights of encoded rows: a token is trained when any character it covers is in one of its
    row's spans; then truncation to max_length, weights[0] = 0 in each row, and every row must
    keep a trained token."""
    import numpy as np

    n = len(spans)
    lengths = np.diff(encoded.bounds)
    row_of = np.repeat(np.arange(n, dtype=np.int64), lengths)
    if supervise == "all":
        trained = np.ones(len(encoded.ids), dtype=bool)
    else:
        trained = np.zeros(len(encoded.ids), dtype=bool)
        for k in range(max((len(s) for s in spans), default=0)):  # the k-th span of every row at once
            start = np.array([s[k][0] if k < len(s) else -1 for s in spans], dtype=np.int64)
            end = np.array([s[k][1] if k < len(s) else -1 for s in spans], dtype=np.int64)
            trained |= (encoded.starts < end[row_of]) & (encoded.ends > start[row_of])
    ids = encoded.ids
    truncated, longest, trained_cut = int((lengths > max_length).sum()), int(lengths.max(initial=0)), 0
    if truncated:
        position = np.arange(len(ids), dtype=np.int64) - encoded.bounds[:-1][row_of]
        keep = position < max_length if truncation == "right" else position >= (lengths - max_length)[row_of]
        trained_cut = int(trained.sum() - trained[keep].sum())
        ids, trained, row_of = ids[keep], trained[keep], row_of[keep]
        lengths = np.minimum(lengths, max_length)
    offsets = np.zeros(n + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lengths)
    trained[offsets[:-1][lengths > 0]] = False  # weights[0]: nothing predicts a row's first token
    untrained = np.flatnonzero(np.bincount(row_of, weights=trained, minlength=n) == 0)
    if len(untrained):
        raise ConfigError(
            f"{wheres[int(untrained[0])]}: no trained tokens left after truncation to max_length={max_length}; "
            "raise algorithm.params.max_length or drop long rows with a filter transform"
        )
    return TokenRows(ids, trained.astype(np.float32), offsets, truncated, longest, trained_cut)


def _encoder(tok):
    """The piece encoder of `tok`'s fast tokenizer; refuses tokenizers whose offsets cannot be trusted."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError("model.name: training needs a fast tokenizer (tokenizer.json) for character offsets")
    if getattr(tok, "split_special_tokens", False):
        raise ConfigError("model.name: the tokenizer splits special tokens (split_special_tokens: true); chat templates need them whole")
    if backend.truncation is not None or backend.padding is not None or backend.encode_special_tokens:
        backend.no_truncation()  # as transformers resets them before it encodes: a saved truncation would cut rows silently
        backend.no_padding()
        backend.encode_special_tokens = False
    return piece_encoder(backend)
