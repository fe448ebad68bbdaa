"""Whether a row holds a conversation tokenize can train on, without a tokenizer: the checks
tokenize makes before it renders (`validate --deep` runs them on every row, with the same words,
because it calls the same function: chat_rows.read_conversation)."""

from __future__ import annotations

from .chat_rows import read_conversation


def check_conversation(row: dict, supervise: str, where: str) -> None:
    """Raise the ConfigError tokenize would raise for this row (shape, roles, no assistant turn to
    train on). Special-token text is checked at build time only: it needs the tokenizer."""
    read_conversation(row, where, supervise, None)
