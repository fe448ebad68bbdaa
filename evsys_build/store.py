"""The content-addressed store on disk: objects, node manifests, memos, refs and runs.

Layout (docs/architecture.md): objects/<2>/<rest>, nodes/<2>/<key>.json, memo/<2>/<key>.json,
refs/<experiment>/<arm>.json, runs/<experiment>/<run id>.json, tmp/ for staging, locks/ for
locks, quarantine/ for corrupt entries. Every write is atomic; every object read checks its digest.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

from . import __version__
from .atomic import STAGING_PREFIX, staging_owner_alive, write_atomic
from .errors import CorruptObject, StoreError, UsageError
from .hashing import digest, digest_bytes

HEX = re.compile(r"[0-9a-f]+")

DEFAULT_DIRNAME = ".evsys-cache"


def default_cache_dir(cli_value: str | None = None) -> Path:
    """`--cache-dir`, else `$EVSYS_CACHE`, else `.evsys-cache/` in the directory you run from."""
    return Path(cli_value or os.environ.get("EVSYS_CACHE") or DEFAULT_DIRNAME)


class Store:
    """A local content-addressed store. Small interface so other backends can slot in."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.tmp = self.root / "tmp"

    # -- objects -------------------------------------------------------------
    def put_bytes(self, data: bytes) -> str:
        """Store a blob; returns its xxh3_128 name. Storing twice is free."""
        name = digest_bytes(data)
        path = self._object_path(name)
        try:
            intact = path.stat().st_size == len(data)  # a truncated leftover is rewritten
        except FileNotFoundError:
            intact = False
        if not intact:
            write_atomic(path, data, self.tmp)
        return name

    def get_bytes(self, name: str) -> bytes:
        """The object's bytes, checked against its name (xxh3 runs at GB/s, so on every read).
        A missing or mismatched object raises CorruptObject; a mismatched one is quarantined."""
        path = self._object_path(name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CorruptObject(f"object {name} is missing from {self.root}", name) from None
        if digest_bytes(data) != name:
            self.quarantine_object(name, "its bytes do not match its name")
            raise CorruptObject(f"object {name} in {self.root} is corrupt (its bytes do not match its name); quarantined", name)
        return data

    def quarantine_object(self, name: str, why: str) -> None:
        """Move a bad object aside: every node that references it now reads as not built."""
        self._quarantine(self._object_path(name), why)

    def missing_objects(self, names: Iterable[str]) -> list[str]:
        """The names among `names` that have no object (one batched existence check)."""
        return [n for n in names if not self._object_path(n).exists()]

    def object_size(self, name: str) -> int:
        try:
            return self._object_path(name).stat().st_size
        except FileNotFoundError:
            return 0

    def has_object(self, name: str) -> bool:
        return self._object_path(name).exists()

    def object_path(self, name: str) -> Path:
        return self._object_path(name)

    def iter_objects(self) -> Iterator[str]:
        base = self.root / "objects"
        if not base.exists():
            return
        for sub in sorted(base.iterdir()):
            for f in sorted(sub.iterdir()):
                yield sub.name + f.name

    def _object_path(self, name: str) -> Path:
        if not HEX.fullmatch(name or ""):
            raise StoreError(f"{name!r} is not an object name")
        return self.root / "objects" / name[:2] / name[2:]

    # -- node manifests ------------------------------------------------------
    def write_manifest(self, key: str, manifest: dict) -> None:
        body = {k: v for k, v in manifest.items() if k != "checksum"}
        body.update(key=key, evsys_version=__version__)
        body["checksum"] = digest(body)
        write_atomic(self._manifest_path(key), _dumps(body), self.tmp)

    def read_manifest(self, key: str, quarantine: bool = True, label: str = "") -> dict | None:
        """The manifest, or None when absent. One that does not parse or whose checksum does not
        match its content reads as a miss (the node reruns) and is quarantined (unless told not to:
        `verify` only reports)."""
        path = self._manifest_path(key)
        try:
            manifest = json.loads(path.read_bytes())
            body = {k: v for k, v in manifest.items() if k != "checksum"}
            intact = manifest.get("checksum") == digest(body) and manifest.get("key") == key
        except FileNotFoundError:
            return None
        except (ValueError, AttributeError, UnicodeDecodeError):
            intact = False
        if not intact:
            if quarantine:
                self._quarantine(path, "its checksum does not match its content", label and f"the manifest of {label} (node:{key[:12]})")
            return None
        return manifest

    def has_manifest(self, key: str) -> bool:
        return self._manifest_path(key).exists()

    def complete_manifest(self, key: str, label: str = "") -> dict | None:
        """The manifest of `key` when it and every object it references are present, else None:
        a node is served from cache only when all of it is there."""
        manifest = self.read_manifest(key, label=label)
        if manifest is None or self.missing_objects(referenced_objects(manifest)):
            return None
        return manifest

    def iter_manifests(self) -> Iterator[str]:
        base = self.root / "nodes"
        if not base.exists():
            return
        for sub in sorted(base.iterdir()):
            for f in sorted(sub.glob("*.json")):
                yield f.stem

    def resolve_prefix(self, prefix: str) -> str:
        """A unique node key for `prefix` (with or without `node:`), else a UsageError."""
        prefix = prefix.removeprefix("node:").lower()
        if not HEX.fullmatch(prefix):
            raise UsageError(f"node:{prefix}: a node key is hexadecimal (0-9, a-f); `evsys plan CONFIG` lists node keys")
        if len(prefix) < 2:
            raise UsageError(f"node prefix {prefix!r} is too short; give at least 2 hex characters")
        sub = self.root / "nodes" / prefix[:2]
        matches = sorted(f.stem for f in sub.glob(prefix + "*.json")) if sub.exists() else []
        if not matches:
            raise UsageError(f"no node matches {prefix!r} in {self.root}; `evsys plan CONFIG` lists node keys")
        if len(matches) > 1:
            shown = ", ".join(m[:12] for m in matches[:5])
            raise UsageError(f"node prefix {prefix!r} is ambiguous ({len(matches)} nodes: {shown}); give more characters")
        return matches[0]

    def _manifest_path(self, key: str) -> Path:
        if not HEX.fullmatch(key or ""):
            raise StoreError(f"{key!r} is not a node key")
        return self.root / "nodes" / key[:2] / f"{key}.json"

    def delete_manifest(self, key: str) -> None:
        self._manifest_path(key).unlink(missing_ok=True)

    # -- memo: small json values under a key (per-chunk and per-task caches) ----
    def memo_get(self, key: str, quarantine: bool = True) -> dict | None:
        """The memoised value, or None. A memo carries the digest of its value: one that does not
        match (or does not parse) reads as a miss and is quarantined (unless told not to)."""
        path = self._memo_path(key)
        try:
            stored = json.loads(path.read_bytes())
            value = stored["value"]
            if digest(value) != stored["digest"]:
                raise ValueError("digest mismatch")
            return value
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            if quarantine:
                self._quarantine(path, "its value does not match its digest")
            return None

    def memo_put(self, key: str, value: dict) -> None:
        write_atomic(self._memo_path(key), _dumps({"value": value, "digest": digest(value)}), self.tmp)

    def _memo_path(self, key: str) -> Path:
        if not HEX.fullmatch(key or ""):
            raise StoreError(f"{key!r} is not a memo key")
        return self.root / "memo" / key[:2] / f"{key}.json"

    def iter_memo_keys(self) -> Iterator[str]:
        base = self.root / "memo"
        if base.exists():
            for f in sorted(base.glob("*/*.json")):
                yield f.stem

    def delete_memo(self, key: str) -> None:
        self._memo_path(key).unlink(missing_ok=True)

    # -- refs: the last build's node keys per experiment/arm -----------------
    def read_ref(self, experiment: str, arm: str) -> dict:
        path = self._ref_path(experiment, arm)
        try:
            return json.loads(path.read_bytes())
        except FileNotFoundError:
            return {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._quarantine(path, "it does not parse")
            return {}

    def write_ref(self, experiment: str, arm: str, ref: dict) -> None:
        write_atomic(self._ref_path(experiment, arm), _dumps(ref), self.tmp)

    def iter_refs(self) -> Iterator[tuple[str, str, dict]]:
        base = self.root / "refs"
        if not base.exists():
            return
        for f in sorted(base.glob("*/*.json")):
            yield f.parent.name, f.stem, self.read_ref(f.parent.name, f.stem)

    def _ref_path(self, experiment: str, arm: str) -> Path:
        return self.root / "refs" / _safe(experiment) / f"{_safe(arm)}.json"

    # -- runs: every build's record (config, node keys, status, metrics) -------
    def write_run(self, run: dict) -> None:
        write_atomic(self._run_path(run["experiment"], run["id"]), _dumps(run), self.tmp)

    def read_run(self, experiment: str, run_id: str) -> dict | None:
        path = self._run_path(experiment, run_id)
        try:
            return json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._quarantine(path, "it does not parse")
            return None

    def iter_runs(self, experiment: str | None = None) -> Iterator[dict]:
        """Runs, oldest first (run ids sort by time), of one experiment or of all."""
        base = self.root / "runs"
        dirs = [base / _safe(experiment)] if experiment is not None else sorted(base.glob("*")) if base.exists() else []
        for folder in dirs:
            for f in sorted(folder.glob("*.json")):
                run = self.read_run(folder.name, f.stem)
                if run is not None:
                    yield run

    def delete_run(self, experiment: str, run_id: str) -> None:
        self._run_path(experiment, run_id).unlink(missing_ok=True)

    def _run_path(self, experiment: str, run_id: str) -> Path:
        return self.root / "runs" / _safe(experiment) / f"{_safe(run_id)}.json"

    # -- locks ----------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """An exclusive per-node lock: two builds sharing a store never run one node twice."""
        path = self.root / "locks" / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    @contextlib.contextmanager
    def build_lock(self) -> Iterator[None]:
        """Held (shared) by every build for its whole run; `gc` takes it exclusively, so gc never
        removes what a running build is writing or about to reuse."""
        with self._store_lock(fcntl.LOCK_SH):
            yield

    @contextlib.contextmanager
    def gc_lock(self, on_wait=None) -> Iterator[None]:
        """Exclusive: waits until no build runs (calling `on_wait()` once if it has to wait)."""
        with self._store_lock(fcntl.LOCK_EX, on_wait):
            yield

    @contextlib.contextmanager
    def _store_lock(self, mode: int, on_wait=None) -> Iterator[None]:
        path = self.root / "locks" / "store.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as f:
            try:
                fcntl.flock(f.fileno(), mode | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                fcntl.flock(f.fileno(), mode)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # -- housekeeping ------------------------------------------------------------
    def stale_staging(self) -> list[Path]:
        """Staging files in tmp/ whose writer is gone (a killed build left them)."""
        return [f for f in self.tmp.glob(STAGING_PREFIX + "*") if not staging_owner_alive(f.name)] if self.tmp.exists() else []

    def remove_node_locks(self) -> None:
        """Per-node lock files (only while no build runs: gc holds the store lock exclusively)."""
        for f in (self.root / "locks").glob("*.lock"):
            if f.name != "store.lock":
                f.unlink(missing_ok=True)

    def clean_staging(self) -> int:
        """Remove the staging files that killed processes left in tmp/."""
        removed = 0
        for f in self.stale_staging():
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
                removed += 1
        return removed

    # -- corruption -----------------------------------------------------------
    def _quarantine(self, path: Path, why: str, what: str = "") -> None:
        dest = self.root / "quarantine" / f"{path.parent.name}{path.name}.{int(time.time() * 1e6)}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, dest)
            print(f"evsys: warning: {what or path} is corrupt ({why}); moved to {dest}, rebuilding it", file=sys.stderr)


def referenced_objects(value) -> set[str]:
    """Object names a manifest, memo or run names: values under `blob`, and inside `blobs` dicts."""
    found: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "blob" and isinstance(v, str):
                found.add(v)
            elif k == "blobs" and isinstance(v, dict):
                found.update(x for x in v.values() if isinstance(x, str))
            else:
                found |= referenced_objects(v)
    elif isinstance(value, list):
        for v in value:
            found |= referenced_objects(v)
    return found


def _dumps(value: dict) -> bytes:
    return (json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "_"
