"""Each row-local stage's last map, kept on this machine: one file read instead of one memo entry
per chunk.

A rebuild after a one-row edit looks up every chunk of every row-local stage; at 1M rows that was
about 3,900 memo files per stage, 0.1 s each stage. `map_chunks` first looks a chunk up here.
The entries are the memo's own pairs (memo key of stage and input chunk -> output chunk), the file
carries their digest, and a hit's blobs are checked to exist as a memo hit's are: a missing,
stale or damaged index costs memo reads, never a wrong chunk. Like the store's other
machine-local entries (`scans/`, `recipes/`), deleting it only makes the next build slower.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from .atomic import write_atomic
from .hashing import digest
from .store import referenced_objects

KEPT_OTHERS = 4096  # entries of other datasets through the same stage kept beside the current map's


def load_index(store, stage: str) -> dict[str, dict]:
    """The stage's index (memo key -> output chunk); empty when there is none or it does not check out."""
    try:
        saved = json.loads(_path(store, stage).read_bytes())
        entries = saved["entries"]
        if isinstance(entries, dict) and digest(entries) == saved["digest"]:
            return entries
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return {}


def save_index(store, stage: str, current: dict[str, dict], previous: dict[str, dict]) -> None:
    """Keep this map's entries, and up to KEPT_OTHERS of the previous index's others (another
    dataset through the same stage), unless nothing changed."""
    if all(previous.get(key) == chunk for key, chunk in current.items()):
        return
    others = [(key, chunk) for key, chunk in previous.items() if key not in current][-KEPT_OTHERS:]
    entries = dict(others)
    entries.update(current)
    _write(_path(store, stage), entries)


def prune_indexes(store, dead: set[str], dry_run: bool = False) -> int:
    """gc is removing the objects in `dead`: drop every index entry that names one (and remove an
    index left empty, or one that does not check out). Returns how many indexes that changes. A
    build on this machine writing its index meanwhile (a remote store's gc takes no local lock)
    only costs memo reads: hits are checked to exist before use."""
    changed = 0
    for path in sorted((Path(store.local_dir) / "chunkmaps").glob("*.json")):
        entries = load_index(store, path.stem)
        kept = {key: chunk for key, chunk in entries.items() if referenced_objects(chunk).isdisjoint(dead)}
        if entries and len(kept) == len(entries):
            continue
        changed += 1
        if dry_run:
            continue
        if kept:
            _write(path, kept)
        else:
            with contextlib.suppress(OSError):  # one left as it was is checked on use
                path.unlink(missing_ok=True)
    return changed


def _write(path: Path, entries: dict[str, dict]) -> None:
    """Write an index with its digest, without fsync (machine-local, checked on every load)."""
    try:
        write_atomic(path, json.dumps({"digest": digest(entries), "entries": entries}).encode(), path.parent.parent / "tmp", fsync=False)
    except OSError:  # only a speed-up: a store that cannot keep it builds as before
        pass


def _path(store, stage: str) -> Path:
    return Path(store.local_dir) / "chunkmaps" / f"{stage}.json"
