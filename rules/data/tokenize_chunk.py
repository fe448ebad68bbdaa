"""One chunk of chat rows -> one token chunk, here or in a worker process.

Kept apart from the tokenize node (`nodes/tokenize.py`) so that a worker imports what tokenizing
needs and nothing of the config layer: a worker started ahead of a one-row edit's chunk
(`chunk_workers.start_standby`) is ready that much sooner.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

from evsys_build.chunk_workers import worker_store
from evsys_build.chunks import read_row_chunk
from evsys_build.errors import ConfigError
from evsys_build.store import Store

from .chat_tokens import tokenize_rows
from .template_clock import pinned
from .saved_recipes import recipe_count
from .token_chunks import write_token_chunk
from .tokenizer_snapshot import load_chat_tokenizer, save_chat_recipes


class TokenShaping(NamedTuple):
    """What a tokenize node's params say about its tokens, besides the tokenizer: the algorithm's
    shaping params, and the date a chat template that renders one renders (None: it does not)."""

    supervise: str
    max_length: int
    truncation: str
    clock: dict | None


def tokenize_chunk(store: Store, tok, chunk: dict, start: int, shaping: TokenShaping) -> dict:
    """One chunk of chat rows -> one token chunk; a bad row fails as `row <index in the dataset>: ...`."""
    rows = read_row_chunk(store, chunk)
    with pinned(shaping.clock):  # the date the key holds, for a template that renders it
        out = tokenize_rows(tok, rows, shaping.supervise, shaping.max_length, shaping.truncation, row_wheres(start, len(rows)))
    return write_token_chunk(store, out)


def row_wheres(start: int, count: int) -> list[str]:
    """How tokenize names rows `start` to `start + count` in its errors (`refused_row` reads it back)."""
    return [f"row {start + i}" for i in range(count)]


_ROW = re.compile(r"row (\d+): ")


def refused_row(exc: ConfigError) -> tuple[int, str] | None:
    """(the row's index, the message after `row N: `) of a row `row_wheres` named; None for
    an error about no one row (a tokenizer without an eos token, ...)."""
    row = _ROW.match(exc.message)
    return (int(row.group(1)), exc.message[row.end():]) if row else None


def start_tokenize_worker(address: tuple, model_dir: str, code: str) -> None:
    """A worker's start: its tokenizer, loaded before it says it is ready."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker process: the processes are the parallelism
    load_chat_tokenizer(model_dir, worker_store(address), code)


def tokenize_chunk_in_worker(address: tuple, model_dir: str, code: str, shaping: TokenShaping, chunk: dict, start: int) -> dict:
    """`tokenize_chunk` in a worker process: the store and tokenizer opened once per process; the
    recipes it learns are kept for the next process, as the build's own are."""
    store = worker_store(address)
    tok = load_chat_tokenizer(model_dir, store, code)
    learned = recipe_count(tok)
    result = tokenize_chunk(store, tok, chunk, start, shaping)
    if recipe_count(tok) != learned:
        save_chat_recipes(tok, model_dir, store, code)
    return result
