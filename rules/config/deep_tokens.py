"""`validate --deep`'s tokenizing: every row after the transforms goes through the build's own
`tokenize_rows`, with the model's tokenizer and the algorithm's shaping params, so a row the build
would refuse (message text that spells a special token, a chat template that fails on it, no
trained token left after `max_length`) is refused here, with the build's words. What it counts
(tokens, trained tokens, rows cut to `max_length`) is reported when all is well.
"""

from __future__ import annotations

from dataclasses import dataclass

from evsys_build.errors import ConfigError

from ..data.chat_tokens import tokenize_rows
from ..data.token_chunks import cut_summary
from ..data.tokenize_chunk import refused_row, row_wheres


class RowRefused(Exception):
    """A row tokenize refuses: its index among the rows tokenize gets, and the message after `row N: `."""

    def __init__(self, index: int, message: str):
        self.index, self.message = index, message


@dataclass
class RowTokenizer:
    """Tokenizes batches of rows as the tokenize stage does and counts what it made."""

    tok: object
    supervise: str
    max_length: int
    truncation: str
    rows: int = 0
    tokens: int = 0
    trained: int = 0
    truncated: int = 0
    trained_cut: int = 0
    longest: int = 0

    def __call__(self, rows: list[dict]) -> None:
        """Tokenize the next batch; raise RowRefused for a row the build would refuse (any other
        ConfigError, such as a tokenizer without an eos token, passes through)."""
        try:
            out = tokenize_rows(self.tok, rows, self.supervise, self.max_length, self.truncation, row_wheres(self.rows, len(rows)))
        except ConfigError as exc:
            refused = refused_row(exc)
            if refused is None:
                raise
            raise RowRefused(*refused) from None
        self.rows += len(rows)
        self.tokens += len(out.ids)
        self.trained += int((out.weights > 0).sum())
        self.truncated += out.truncated
        self.trained_cut += out.trained_cut
        self.longest = max(self.longest, out.longest)

    def summary(self) -> str:
        cut = cut_summary(self.truncated, self.rows, self.trained_cut, self.max_length, self.truncation) or f"none longer than max_length {self.max_length}"
        return f"{self.tokens} tokens, {self.trained} trained; longest row {self.longest} tokens; {cut}"
