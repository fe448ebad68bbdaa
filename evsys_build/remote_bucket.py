"""A store on object storage (`--cache-dir s3://bucket/prefix` or `gs://bucket/prefix`), through fsspec.

The store's guarantees need conditional writes, which S3 and GCS have natively; s3fs and gcsfs give
the authenticated clients (credentials from the environment or the cloud SDK's usual chain, never
from evsys), object_api.py the few calls on them:

- create-only writes: S3 `If-None-Match: *`, GCS `ifGenerationMatch=0`;
- compare-and-swap of refs, runs and leases: S3 `If-Match: <ETag>`, GCS `ifGenerationMatch=<generation>`;
- batched existence: one listing per shard prefix (or concurrent HEADs for a few names);
- per-node locks: leases (lease.py), expired by the server's clock;
- gc against running builds: a build registers under builds/ with a heartbeat for as long as it
  runs; gc removes nothing written after the oldest live registration began (a shared flock
  cannot span machines).

Other fsspec protocols are refused: without conditional writes the contract cannot hold.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import uuid
from pathlib import Path
from typing import Iterator

from .bucket import Entry, Versioned
from .errors import StoreError, UsageError
from .lease import Lease
from .object_api import ObjectApi, gcs_api, s3_api

CHECK_BEFORE_PUT = 256 * 1024  # blobs at least this big are looked up before uploading them
STALE_UPLOADS = 24 * 3600.0  # an unfinished multipart upload this old is abandoned (gc aborts it)
CLOCK_SLACK = 2.0  # S3's LastModified has 1 s resolution


def open_remote_bucket(url: str) -> "RemoteBucket":
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("s3", "s3a"):
        return RemoteBucket(url, _client(url, s3_api, "s3"))
    if scheme in ("gs", "gcs"):
        return RemoteBucket(url, _client(url, gcs_api, "gcs"))
    raise UsageError(f"store {url}: evsys stores need conditional writes, which it uses on s3:// and gs:// (or a local folder); {scheme}:// is not supported")


def _client(url: str, make, extra: str) -> ObjectApi:
    try:
        return make(url)
    except ImportError as exc:
        raise UsageError(f"store {url} needs {exc.name or 'a client library'}: pip install 'evsys[{extra}]'") from None


class RemoteBucket:
    """A store under `url` on S3 or GCS; paths are keys below its prefix."""

    check_before_put = CHECK_BEFORE_PUT

    def __init__(self, url: str, api: ObjectApi):
        self.location = url.rstrip("/")
        self.api = api
        self.lease_ttl = float(os.environ.get("EVSYS_LEASE_TTL", "30"))
        cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        self.local_dir = cache_home / "evsys" / "remote" / re.sub(r"[^A-Za-z0-9._-]+", "_", self.location)

    def __str__(self) -> str:
        return self.location

    # -- files ------------------------------------------------------------------------------
    def read_versioned(self, path: str) -> Versioned | None:
        return self.api.get(self.api.key(path))

    def create(self, path: str, data: bytes, durable: bool = True) -> bool:  # a completed PUT is durable
        return self.api.put(self.api.key(path), data, if_absent=True) is not None

    def replace(self, path: str, data: bytes, token: str | None) -> bool:
        if token is None:
            return self.create(path, data)
        return self.api.put(self.api.key(path), data, if_match=token) is not None

    def delete(self, path: str, token: str | None = None) -> bool:
        return self.api.delete(self.api.key(path), if_match=token)

    def quarantine(self, path: str, token: str | None) -> str | None:
        """Copy the bad version to quarantine/, then delete it only if it is still that version."""
        current = self.api.get(self.api.key(path))
        if current is None or (token is not None and current.token != token):
            return None
        parent, _, name = path.rpartition("/")
        dest = f"quarantine/{parent.rsplit('/', 1)[-1]}{name}.{uuid.uuid4().hex[:12]}"
        self.api.put(self.api.key(dest), current.data)
        if not self.api.delete(self.api.key(path), if_match=current.token):
            return None
        return f"{self.location}/{dest}"

    def size(self, path: str) -> int | None:
        return self.api.head(self.api.key(path))

    def exists_many(self, paths: list[str]) -> set[str]:
        keys = {self.api.key(p): p for p in paths}
        return {keys[k] for k in self.api.exists_many(list(keys))}

    def list(self, prefix: str) -> dict[str, Entry]:
        base = self.api.key("")
        return {k[len(base):]: e for k, e in sorted(self.api.list(self.api.key(prefix)).items())}

    # -- locks ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def node_lock(self, key: str, on_wait=None, stop=None) -> Iterator[None]:
        lease = Lease(self.api, self.api.key(f"locks/{key}.lease"), self.lease_ttl)
        lease.acquire(on_wait, stop)
        try:
            yield
        finally:
            lease.release()

    @contextlib.contextmanager
    def build_lock(self, on_wait=None) -> Iterator[None]:
        """Register this build under builds/ (with its start, by the store's clock) and keep the
        registration fresh while it runs; gc spares everything written after the oldest live one
        began (so a build never waits for gc here: `on_wait` is never called)."""
        started = self.api.now()
        lease = Lease(self.api, self.api.key(f"builds/{uuid.uuid4().hex}.json"), self.lease_ttl,
                      extra={"started": started, "host": socket.gethostname(), "pid": os.getpid()})
        if not lease.try_acquire():
            raise StoreError(f"could not register this build in {self.location}/builds/")
        lease.start_heartbeat()
        try:
            yield
        finally:
            lease.release()

    @contextlib.contextmanager
    def gc_lock(self, on_wait=None) -> Iterator[float | None]:
        """gc never waits here; it yields the cutoff: the start of the oldest running build (or now)."""
        cutoff = self.api.now()
        prefix = self.api.key("builds/")
        for key in self.api.list(prefix):
            found = self.api.get(key)
            if found is None:
                continue
            try:
                meta = json.loads(found.data)
            except ValueError:
                meta = {}
            ttl = float(meta.get("ttl", self.lease_ttl))
            if found.age <= ttl + CLOCK_SLACK:
                cutoff = min(cutoff, float(meta.get("started", found.modified)))
            elif found.age > 10 * ttl:  # a build that died long ago
                self.api.delete(key, if_match=found.token)
        yield cutoff - CLOCK_SLACK

    # -- housekeeping -------------------------------------------------------------------------
    def stale_staging(self) -> list[str]:
        """Multipart uploads a killed writer never finished (invisible, but billed)."""
        return [f"{self.location}: unfinished upload of {key}" for key, _ in self.api.stale_uploads(self.api.key(""), STALE_UPLOADS)]

    def clean_staging(self) -> int:
        return self.api.abort_uploads(self.api.stale_uploads(self.api.key(""), STALE_UPLOADS))

    def remove_node_locks(self) -> None:
        """Leases whose holder stopped renewing them long ago."""
        for key in self.api.list(self.api.key("locks/")):
            found = self.api.get(key)
            if found is not None and found.age > 10 * self.lease_ttl:
                self.api.delete(key, if_match=found.token)
