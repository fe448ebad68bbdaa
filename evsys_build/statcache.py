"""Content hashes of files, with a stat cache so unchanged files are not reread."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import xxhash

from .atomic import write_atomic
from .watch import RACY_NS, watch


class StatCache:
    """(path, size, mtime_ns, inode, ctime_ns, device) -> xxh3_128 of the content, persisted in the store."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, list] | None = None
        self._dirty = False
        self._resolved: dict[str, str] = {}  # path as given -> real path (a sweep asks for the same files per arm)
        self.keyed: dict[str, list] = {}  # real path -> the stat identity its digest was taken under (keys hold that content)

    def file_digest(self, file: Path) -> str:
        watch(file)
        st = os.stat(file)
        # ctime cannot be set from user space: `cp -p` / `rsync -t` keep size, mtime and inode but not ctime
        ident = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, st.st_dev]
        name = self._resolved.get(str(file))
        if name is None:
            name = self._resolved[str(file)] = os.path.realpath(file)
        racy = time.time_ns() - st.st_mtime_ns < RACY_NS  # written just now: may change again within the tick
        self.keyed[name] = ident
        with self._lock:
            entries = self._load()
            hit = entries.get(name)
            if hit and hit[:-1] == ident and not racy:
                return hit[-1]
        h = xxhash.xxh3_128()
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        value = h.hexdigest()
        if racy:  # a same-size write later in this tick would keep the stat: the entry would vouch for old bytes
            return value
        with self._lock:
            self._load()[name] = ident + [value]
            self._dirty = True
        return value

    def save(self) -> None:
        with self._lock:
            if self._dirty and self._entries is not None:
                write_atomic(self.path, json.dumps(self._entries).encode(), self.path.parent / "tmp")
                self._dirty = False

    def _load(self) -> dict:
        if self._entries is None:
            try:
                self._entries = json.loads(self.path.read_bytes())
            except (FileNotFoundError, json.JSONDecodeError):
                self._entries = {}
        return self._entries
