"""A benchmark's `stop` strings against the tokenizer's special tokens: completions are decoded
without special tokens, so a stop that is one special token ends generation at that token, and a
stop that holds one among other text could never match. Refused before any node runs (compile
and validate read the special tokens from the tokenizer's files), and again where the eval runs."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from evsys_build.errors import ConfigError

from ..config.loading import Arm, LoadedConfig, located


def stop_problem(stop: str, specials) -> str | None:
    """Why `stop` could never match, or None."""
    if stop in specials:
        return None
    held = next((s for s in specials if s and s in stop), None)
    if held is None:
        return None
    return (f"{stop!r} holds the special token {held!r}, which completions are decoded without, "
            f"so it could never match; give {held!r} as a stop of its own (generation then ends at it)")


def special_token_texts(folder: Path | str | None) -> set[str] | None:
    """The special tokens a tokenizer folder declares, as the tokenizer loads them:
    tokenizer_config.json's `added_tokens_decoder` when it has one (it wins), else tokenizer.json's
    `added_tokens`; None when neither says. Read once per folder and file state: a sweep's arms
    share their tokenizer, and tokenizer.json can be megabytes."""
    if folder is None:
        return None
    files = [Path(folder) / "tokenizer_config.json", Path(folder) / "tokenizer.json"]
    state = []
    for f in files:
        try:
            st = f.stat()
            state.append((st.st_mtime_ns, st.st_size))
        except OSError:
            state.append(None)
    return _special_tokens(str(folder), tuple(state))


@functools.lru_cache(maxsize=16)
def _special_tokens(folder: str, _state: tuple) -> set[str] | None:
    for name, entries in (("tokenizer_config.json", lambda d: list((d.get("added_tokens_decoder") or {}).values())),
                          ("tokenizer.json", lambda d: list(d.get("added_tokens") or []))):
        try:
            data = json.loads((Path(folder) / name).read_text(encoding="utf-8"))
            listed = entries(data) if isinstance(data, dict) else []
        except (OSError, ValueError, AttributeError):
            continue
        if listed:
            return {t["content"] for t in listed if isinstance(t, dict) and t.get("special") and isinstance(t.get("content"), str)}
    return None


def check_stops(loaded: LoadedConfig, index: int, bench, arm: Arm | None, tokenizer_folder) -> None:
    """Each `stop` of a tasks benchmark can match, refused at its config line otherwise."""
    if getattr(bench, "kind", None) == "nll" or not bench.stop:
        return
    specials = special_token_texts(tokenizer_folder)
    if not specials:
        return
    for j, stop in enumerate(bench.stop):
        problem = stop_problem(stop, specials)
        if problem:
            with located(loaded, ("metadata", "benchmark", index, "stop", j), arm):
                raise ConfigError(f"metadata.benchmark[{index}] ({bench.name}).stop: {problem}")
