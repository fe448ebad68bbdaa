"""What a command read from a local store, kept as stat identities: enough for a later process
to tell, with a few hundred `stat` calls, that every one of those reads would return the same.

`JournalBucket` wraps a `LocalBucket`, passes everything through, and reports what it read to
a `Watcher` (watch.py), beside the files the compile read, under the same 2 s racy rule. A file
whose bytes or size were read (a manifest, a ref) is reported itself. A presence check that
found nothing, or a batch of them (`exists_many`), is reported as the folder the file is or
would be in: creating, removing or renaming a file in a folder changes the folder's mtime and
ctime, and a folder that did not exist stamps as None until it does. A listing is reported as
every folder it walked. Each stamp is taken before the read it stands for, so a change that
lands during the read shows as a different stamp later. A write through the bucket (a
quarantine, a cache object) marks the journal `wrote`: what it read is then not what is there.
"""

from __future__ import annotations

import os
from typing import Any

from .watch import Watcher, stamp


class JournalBucket:
    """A local bucket that reports the stat identity of everything read through it to `watcher`."""

    def __init__(self, inner: Any, watcher: Watcher):
        self._inner = inner
        self._prefix = os.path.join(inner.location, "")
        self._watcher = watcher
        self.wrote = False

    def __getattr__(self, name: str) -> Any:  # root, local_dir, location, locks, staging
        return getattr(self._inner, name)

    def __str__(self) -> str:
        return str(self._inner)

    def _keep_file(self, path: str) -> None:
        """The file's stamp when it exists, else its folder's (absence is a property of the folder)."""
        full = self._prefix + path
        if full not in self._watcher.paths:
            found = stamp(full)
            if found is None:
                self._watcher.add(os.path.dirname(full))
            else:
                self._watcher.paths[full] = found

    # -- reads --------------------------------------------------------------------------------
    def read_versioned(self, path: str):
        self._keep_file(path)
        return self._inner.read_versioned(path)

    def size(self, path: str) -> int | None:
        self._keep_file(path)
        return self._inner.size(path)

    def exists_many(self, paths: list[str]) -> set[str]:
        for folder in {os.path.dirname(p) for p in paths}:
            self._watcher.add(self._prefix + folder)
        return self._inner.exists_many(paths)

    def list(self, prefix: str) -> dict:
        base = self._prefix + prefix
        self._watcher.add(base)
        for folder, _dirs, _files in os.walk(base):
            self._watcher.add(folder)
        return self._inner.list(prefix)

    # -- writes -------------------------------------------------------------------------------
    def create(self, path: str, data: bytes, durable: bool = True) -> bool:
        self.wrote = True
        return self._inner.create(path, data, durable)

    def replace(self, path: str, data: bytes, token: str | None) -> bool:
        self.wrote = True
        return self._inner.replace(path, data, token)

    def delete(self, path: str, token: str | None = None) -> bool:
        self.wrote = True
        return self._inner.delete(path, token)

    def quarantine(self, path: str, token: str | None) -> str | None:
        self.wrote = True
        return self._inner.quarantine(path, token)


def first_changed(stamps: dict[str, list | None]) -> str | None:
    """The first path whose stamp differs from the one recorded; None when none does."""
    return next((p for p, s in stamps.items() if stamp(p) != s), None)
