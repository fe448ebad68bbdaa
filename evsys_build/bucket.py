"""Where a store keeps its files: the small interface every store location implements, and the
local folder that implements it.

A `Bucket` is a flat namespace of paths (`objects/ab/cdef…`, `nodes/ab/<key>.json`, …) with the
few operations the store's guarantees rest on: create-only writes, compare-and-swap, batched
existence, listing, and locks. `Store` (store.py) keeps the format — names, checksums, quarantine,
what "built" means — on top, so every location gets the same format and the same contract
(tests/test_store_contract.py runs one suite over each). Remote buckets (S3, GCS) live in
remote_bucket.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Protocol

from .atomic import STAGING_PREFIX, create_atomic, staging_owner_alive, write_atomic
from .errors import Interrupted
from .hashing import digest_bytes


@dataclass
class Versioned:
    """A file's bytes with the token a compare-and-swap needs (S3 ETag, GCS generation, local
    digest), when it was last written and the bucket's own clock at the read (leases use both,
    so a client's clock never matters)."""

    data: bytes
    token_fn: Callable[[], str] = field(repr=False)
    modified: float = 0.0
    now: float = 0.0

    @property
    def token(self) -> str:
        return self.token_fn()

    @property
    def age(self) -> float:
        return self.now - self.modified


@dataclass(frozen=True)
class Entry:
    size: int
    modified: float  # seconds since the epoch, by the bucket's clock


class Bucket(Protocol):
    """What a store location provides. Every write is all-or-nothing: a reader sees no file or a
    whole one (a torn remote upload is still caught by the store's digest check on read)."""

    location: str  # what another process opens to reach the same store (an absolute path or a URL)
    local_dir: Path  # where machine-local state goes (the stat cache of data files)

    def read_versioned(self, path: str) -> Versioned | None: ...

    def create(self, path: str, data: bytes, durable: bool = True) -> bool:
        """Write only if `path` does not exist; False when it did (S3 If-None-Match: *, GCS ifGenerationMatch=0).
        `durable=False` lets a local write skip fsync: a power failure (never a killed process) may
        then lose it or leave it damaged, so it is only for entries every read checks against
        their digest and that are cheap to compute again (data chunks and their memos)."""

    def replace(self, path: str, data: bytes, token: str | None) -> bool:
        """Compare-and-swap: write only if the current version's token is `token` (None: only if absent)."""

    def delete(self, path: str, token: str | None = None) -> bool:
        """Remove `path` (only the version `token`, when given); False when it was not there or changed."""

    def quarantine(self, path: str, token: str | None) -> str | None:
        """Move a corrupt file aside (only the version `token` read); returns where, None if it was gone."""

    def size(self, path: str) -> int | None: ...

    def exists_many(self, paths: list[str]) -> set[str]:
        """Which of `paths` exist, in as few requests as the location allows."""

    def list(self, prefix: str) -> dict[str, Entry]:
        """Every file under `prefix` (recursively), by path."""

    def node_lock(self, key: str, on_wait: Callable[[], None] | None = None, stop: threading.Event | None = None) -> ContextManager[None]:
        """Exclusive per node across every process and machine sharing the store. Held by
        another build: `on_wait()` once, then wait until it is free or `stop` is set (Interrupted)."""

    def build_lock(self, on_wait: Callable[[], None] | None = None) -> ContextManager[None]:
        """Held by every build (and push/pull) while it writes; `on_wait` is called if it must wait for gc first."""

    def gc_lock(self, on_wait: Callable[[], None] | None = None) -> ContextManager[float | None]:
        """Held by gc; yields the time before which gc may remove unreferenced entries (None: any)."""

    def stale_staging(self) -> list[str]: ...

    def clean_staging(self) -> int: ...

    def remove_node_locks(self) -> None: ...


def _poll_flock(fd: int, mode: int, stop: threading.Event) -> None:
    """Take a flock another process holds as soon as it is free, giving up (Interrupted) once
    `stop` is set: a blocking flock would not hear Ctrl-C until the other build let go."""
    while True:
        if stop.wait(LOCK_POLL_S):
            raise Interrupted("stopped while waiting for another build")
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            continue


LOCK_POLL_S = 0.2


class LocalBucket:
    """A folder on this machine. Create-only by link(2), compare-and-swap under a flock, per-node
    and store locks by flock (they hold across processes of one machine, not across NFS clients)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.location = os.path.abspath(self.root)
        self.local_dir = self.root
        self._prefix = os.path.join(str(self.root), "")  # plain string joins on the hot read path

    def __str__(self) -> str:
        return str(self.root)

    # -- files ------------------------------------------------------------------------------
    def read_versioned(self, path: str) -> Versioned | None:
        try:
            with open(self._prefix + path, "rb") as f:
                modified = os.fstat(f.fileno()).st_mtime
                data = f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return Versioned(data, lambda: digest_bytes(data), modified, time.time())

    def create(self, path: str, data: bytes, durable: bool = True) -> bool:
        return create_atomic(self.root / path, data, self.tmp, fsync=durable)

    def replace(self, path: str, data: bytes, token: str | None) -> bool:
        if token is None:
            return self.create(path, data)
        with self._cas_lock():
            current = self.read_versioned(path)
            if current is None or current.token != token:
                return False
            write_atomic(self.root / path, data, self.tmp)
            return True

    def delete(self, path: str, token: str | None = None) -> bool:
        with self._cas_lock() if token is not None else contextlib.nullcontext():
            if token is not None:
                current = self.read_versioned(path)
                if current is None or current.token != token:
                    return False
            try:
                (self.root / path).unlink()
                return True
            except FileNotFoundError:
                return False

    def quarantine(self, path: str, token: str | None) -> str | None:
        src = self.root / path
        dest = self.root / "quarantine" / f"{src.parent.name}{src.name}.{int(time.time() * 1e6)}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self._cas_lock() if token is not None else contextlib.nullcontext():
            if token is not None:
                current = self.read_versioned(path)
                if current is None or current.token != token:
                    return None  # rewritten since it was read: not ours to move
            try:
                os.replace(src, dest)
            except FileNotFoundError:
                return None
        return str(dest)

    def size(self, path: str) -> int | None:
        try:
            return os.stat(self._prefix + path).st_size
        except (FileNotFoundError, NotADirectoryError):
            return None

    def exists_many(self, paths: list[str]) -> set[str]:
        exists, prefix = os.path.exists, self._prefix
        return {p for p in paths if exists(prefix + p)}

    def list(self, prefix: str) -> dict[str, Entry]:
        base = self.root / prefix
        if not base.is_dir():
            return {}
        found = {}
        for folder, _dirs, files in os.walk(base):
            for name in files:
                full = os.path.join(folder, name)
                try:
                    st = os.stat(full)
                except FileNotFoundError:
                    continue
                found[Path(full).relative_to(self.root).as_posix()] = Entry(st.st_size, st.st_mtime)
        return dict(sorted(found.items()))

    # -- locks ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def node_lock(self, key: str, on_wait=None, stop=None) -> Iterator[None]:
        with self._flock(f"{key}.lock", fcntl.LOCK_EX, on_wait, stop):
            yield

    @contextlib.contextmanager
    def build_lock(self, on_wait=None) -> Iterator[None]:
        """Shared by every build; `gc_lock` takes it exclusively, so gc waits for running builds
        (and a build for a running gc)."""
        with self._flock("store.lock", fcntl.LOCK_SH, on_wait):
            yield

    @contextlib.contextmanager
    def gc_lock(self, on_wait=None) -> Iterator[float | None]:
        with self._flock("store.lock", fcntl.LOCK_EX, on_wait):
            yield None  # no build runs while gc holds it: anything unreferenced may go

    def _cas_lock(self):
        return self._flock("cas.lock", fcntl.LOCK_EX)

    @contextlib.contextmanager
    def _flock(self, name: str, mode: int, on_wait=None, stop: threading.Event | None = None) -> Iterator[None]:
        path = self.root / "locks" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as f:
            try:
                fcntl.flock(f.fileno(), mode | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                if stop is None:
                    fcntl.flock(f.fileno(), mode)
                else:
                    _poll_flock(f.fileno(), mode, stop)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # -- housekeeping -------------------------------------------------------------------------
    def stale_staging(self) -> list[str]:
        """Staging files in tmp/ whose writer is gone (a killed build left them)."""
        if not self.tmp.exists():
            return []
        return [str(f) for f in self.tmp.glob(STAGING_PREFIX + "*") if not staging_owner_alive(f.name)]

    def clean_staging(self) -> int:
        removed = 0
        for f in self.stale_staging():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f)
                removed += 1
        return removed

    def remove_node_locks(self) -> None:
        """Per-node lock files (only while no build runs: gc holds the store lock exclusively)."""
        for f in (self.root / "locks").glob("*.lock"):
            if f.name not in ("store.lock", "cas.lock"):
                f.unlink(missing_ok=True)
