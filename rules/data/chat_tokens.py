"""Chat rows → token ids + per-token loss weights, with the model's own chat template.

The rendered conversation is cut into segments at assistant turns and each segment is
tokenized on its own, so the prompt part of a training row tokenizes exactly like the
prompt evaluation sends (`prompt_ids`). Trained tokens: the assistant content and its
end-of-turn token; never the system/user turns or the template's scaffolding.
"""

from __future__ import annotations

import functools
from pathlib import Path

from evsys_build.errors import ConfigError

KEYED_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json", "special_tokens_map.json", "vocab.json", "merges.txt")


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


def render(tok, messages: list[dict], generation_prompt: bool = False) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt, enable_thinking=False)


def prompt_ids(tok, messages: list[dict]) -> list[int]:
    """Token ids of a prompt (no assistant turn yet) ending with the generation prompt."""
    return tok.encode(render(tok, messages, generation_prompt=True), add_special_tokens=False)


def end_of_turn_ids(tok) -> list[int]:
    """Token ids that end an assistant turn (the template's eos, plus the pad/endoftext token)."""
    ids = {tok.eos_token_id}
    if tok.pad_token_id is not None:
        ids.add(tok.pad_token_id)
    return sorted(i for i in ids if i is not None)


def tokenize_conversation(tok, messages: list[dict], supervise: str, max_length: int, truncation: str, where: str):
    """(input_ids, weights) for one conversation; weights[t] is the loss weight of predicting token t."""
    check_messages(messages, where)
    text = render(tok, messages)
    spans = _assistant_spans(text, messages, tok.eos_token, where)
    if supervise == "last_assistant":
        spans = spans[-1:]
    if not spans and supervise != "all":
        raise ConfigError(f"{where}: conversation has no assistant turn to train on (supervise: {supervise})")
    ids: list[int] = []
    weights: list[float] = []
    cursor = 0
    for start, end in spans + [(len(text), len(text))]:
        for seg, w in ((text[cursor:start], 0.0), (text[start:end], 1.0)):
            if seg:
                seg_ids = tok.encode(seg, add_special_tokens=False)
                ids += seg_ids
                weights += [1.0 if supervise == "all" else w] * len(seg_ids)
        cursor = end
    if ids:
        weights[0] = 0.0
    if len(ids) > max_length:
        keep = slice(0, max_length) if truncation == "right" else slice(len(ids) - max_length, len(ids))
        ids, weights = ids[keep], weights[keep]
        weights[0] = 0.0
    if not any(weights):
        raise ConfigError(
            f"{where}: no trained tokens left after truncation to max_length={max_length}; "
            "raise algorithm.params.max_length or drop long rows with a filter transform"
        )
    return ids, weights


ROLES = ("system", "user", "assistant", "tool")


def check_messages(messages, where: str) -> None:
    """Row data the template would choke on, as one ConfigError naming the message."""
    if not isinstance(messages, list):
        raise ConfigError(f"{where}: messages: must be a list of {{role, content}} messages, got {type(messages).__name__}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ConfigError(f"{where}: messages[{i}]: must be an object with role and content, got {type(message).__name__}")
        if message.get("role") not in ROLES:
            raise ConfigError(f"{where}: messages[{i}].role: {message.get('role')!r} is not one of {', '.join(ROLES)}")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise ConfigError(f"{where}: messages[{i}].content: must be a string, got {type(content).__name__}")


def _assistant_spans(text: str, messages: list[dict], eos: str, where: str) -> list[tuple[int, int]]:
    """Character spans of each assistant turn's content plus its end-of-turn marker."""
    spans = []
    cursor = 0
    for i, message in enumerate(messages):
        content = message.get("content") or ""
        if not isinstance(content, str):
            raise ConfigError(f"{where}: messages[{i}].content must be a string")
        if message.get("role") not in ("system", "user", "assistant", "tool"):
            raise ConfigError(f"{where}: messages[{i}].role {message.get('role')!r} is not system, user, assistant or tool")
        if not content:
            continue
        pos = text.find(content, cursor)
        if pos < 0:
            if message.get("role") == "assistant":
                raise ConfigError(f"{where}: the chat template changed assistant message {i}; cannot locate its tokens to train on")
            continue
        end = pos + len(content)
        if message.get("role") == "assistant":
            if eos and text.startswith(eos, end):
                end += len(eos)
            spans.append((pos, end))
        cursor = end
    return spans
