"""Whether a row holds a conversation tokenize can train on, without a tokenizer: the checks
tokenize makes before it renders (`validate --deep` runs them on every row, with the same words).

Keep in step with rules/nodes/tokenize.py and rules/data/chat_tokens.py: a test compares the
message `validate --deep` gives for a bad row with the one the build gives.
"""

from __future__ import annotations

from evsys_build.errors import ConfigError

from .chat_tokens import check_messages

NO_MESSAGES = "messages: the row has none; add a transform such as jsonl_to_chat before training"


def check_conversation(row: dict, supervise: str, where: str) -> None:
    """Raise the ConfigError tokenize would raise for this row (shape, roles, no assistant turn to train on)."""
    messages = row.get("messages")
    if messages is None:
        raise ConfigError(f"{where}: {NO_MESSAGES}")
    check_messages(messages, where)
    trained = [m for m in messages if m.get("role") == "assistant" and m.get("content")]
    if not trained and supervise != "all":
        raise ConfigError(f"{where}: conversation has no assistant turn to train on (supervise: {supervise})")
