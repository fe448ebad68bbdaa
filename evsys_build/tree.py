"""The files of a folder as the libraries that read it see them: links to folders are followed
(AutoTokenizer, `datasets` and glob's `**` all follow them), a link back up the tree is not."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator


def walk(root, *, skip_hidden: bool = False) -> Iterator[tuple[str, list[str]]]:
    """(folder, its file names) for `root` and every folder below it, links to folders followed
    (a folder that links to one of its own ancestors is not entered again). Sorted, so listings are
    stable; `skip_hidden` leaves out names starting with a dot, folders and files alike."""
    yield from _walk(os.fspath(root), frozenset(), skip_hidden)


def _walk(folder: str, ancestors: frozenset, skip_hidden: bool) -> Iterator[tuple[str, list[str]]]:
    real = os.path.realpath(folder)
    if real in ancestors:
        return
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except (NotADirectoryError, FileNotFoundError):
        return
    files, folders = [], []
    for entry in entries:
        if skip_hidden and entry.name.startswith("."):
            continue
        if entry.is_dir():  # follows a link
            folders.append(entry.path)
        elif entry.is_file():
            files.append(entry.name)
    yield folder, files
    for sub in folders:
        yield from _walk(sub, ancestors | {real}, skip_hidden)


def files_under(root, *, skip_hidden: bool = False) -> list[Path]:
    """Every file under `root` (see `walk`), as paths through `root`, sorted."""
    return sorted(Path(folder, name) for folder, names in walk(root, skip_hidden=skip_hidden) for name in names)


def first_existing(path: Path) -> Path:
    """`path` or its nearest ancestor that exists (what a `mkdir -p path` would build on)."""
    for part in (path, *path.parents):
        if part.exists():
            return part
    return Path(path.anchor or ".")
