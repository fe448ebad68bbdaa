"""Tokenizer snapshots kept once per machine, for every store on it.

Taking a snapshot (tokenizer_snapshot.py) costs a process about 3 s: transformers and torch
imported, AutoTokenizer's pipeline built and checked. A store keeps its snapshots as memos, so
each new store (another project, a CI run, a fresh clone) took the same snapshot again. This
folder holds each one under the same key (the tokenizer files' bytes, the versions of the
libraries, the code that makes and reads it) with a digest of its content that every read checks;
a store that lacks a snapshot copies it in from here. A damaged file is removed and the snapshot
taken again.

`EVSYS_TOKENIZER_CACHE` names the folder (default `$XDG_CACHE_HOME/evsys/tokenizer-snapshots`,
else `~/.cache/evsys/tokenizer-snapshots`); `off` keeps snapshots in stores only. The KEEP most
recently used snapshots stay (5-10 MB each).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from evsys_build.atomic import WriteFailed, write_atomic
from evsys_build.hashing import digest

KEEP = 8


def folder() -> Path | None:
    """Where this machine keeps snapshots; None when turned off."""
    value = os.environ.get("EVSYS_TOKENIZER_CACHE", "")
    if value == "off":
        return None
    if value:
        return Path(value)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "evsys" / "tokenizer-snapshots"


def read(key: str) -> tuple[dict, str] | None:
    """(snapshot, serialized pipeline) kept under `key`, or None (absent, off, or damaged: removed)."""
    where = folder()
    if where is None:
        return None
    path = where / f"{key}.json"
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        entry = json.loads(data)
        body = {"key": entry["key"], "snapshot": entry["snapshot"], "backend": entry["backend"]}
        if entry["key"] != key or entry["check"] != digest(body) or not isinstance(entry["backend"], str):
            raise ValueError("does not match its digest")
    except (ValueError, KeyError, TypeError):
        _remove(path)
        return None
    try:
        os.utime(path)  # used: the last to be pruned
    except OSError:
        pass
    return entry["snapshot"], entry["backend"]


def write(key: str, snapshot: dict, backend: str) -> None:
    """Keep a snapshot for the machine's other stores (quietly nothing where the folder cannot be
    written: the store's own copy is enough), then prune to the KEEP most recently used."""
    where = folder()
    if where is None:
        return
    body = {"key": key, "snapshot": snapshot, "backend": backend}
    try:
        where.mkdir(parents=True, exist_ok=True)
        write_atomic(where / f"{key}.json", json.dumps({**body, "check": digest(body)}).encode(), where / "tmp")
        _prune(where)
    except (OSError, WriteFailed):
        pass


def _prune(where: Path) -> None:
    kept = sorted(where.glob("*.json"), key=_used, reverse=True)
    for path in kept[KEEP:]:
        _remove(path)


def _used(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
