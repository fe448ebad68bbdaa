"""The content-addressed store on disk: objects, node manifests, refs, per-chunk memos.

Layout (DESIGN.md): objects/<2>/<rest>, nodes/<2>/<key>.json, refs/<experiment>/<arm>.json,
memo/<2>/<key>.json, tmp/ for staging, locks/ for per-node locks. Every write is atomic.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterator

from . import __version__
from .atomic import write_atomic
from .errors import StoreError, UsageError
from .hashing import digest_bytes

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
        if not path.exists():
            write_atomic(path, data, self.tmp)
        return name

    def get_bytes(self, name: str) -> bytes:
        path = self._object_path(name)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{self.root}: object {name} is missing; run `evsys verify` and rebuild") from None

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
        return self.root / "objects" / name[:2] / name[2:]

    # -- node manifests ------------------------------------------------------
    def write_manifest(self, key: str, manifest: dict) -> None:
        body = dict(manifest, key=key, evsys_version=__version__)
        write_atomic(self._manifest_path(key), _dumps(body), self.tmp)

    def read_manifest(self, key: str) -> dict | None:
        """The manifest, or None when absent. A corrupt one is quarantined and reads as a miss."""
        path = self._manifest_path(key)
        try:
            return json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._quarantine(path)
            return None

    def has_manifest(self, key: str) -> bool:
        return self._manifest_path(key).exists()

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
        return self.root / "nodes" / key[:2] / f"{key}.json"

    def delete_manifest(self, key: str) -> None:
        self._manifest_path(key).unlink(missing_ok=True)

    # -- memo: small json values under a key (per-chunk caches) -------------
    def memo_get(self, key: str) -> dict | None:
        path = self.root / "memo" / key[:2] / f"{key}.json"
        try:
            return json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._quarantine(path)
            return None

    def memo_put(self, key: str, value: dict) -> None:
        write_atomic(self.root / "memo" / key[:2] / f"{key}.json", _dumps(value), self.tmp)

    def iter_memos(self) -> Iterator[tuple[str, dict]]:
        base = self.root / "memo"
        if not base.exists():
            return
        for f in sorted(base.glob("*/*.json")):
            value = self.memo_get(f.stem)
            if value is not None:
                yield f.stem, value

    def delete_memo(self, key: str) -> None:
        (self.root / "memo" / key[:2] / f"{key}.json").unlink(missing_ok=True)

    # -- refs: the last build's node keys per experiment/arm -----------------
    def read_ref(self, experiment: str, arm: str) -> dict:
        path = self._ref_path(experiment, arm)
        try:
            return json.loads(path.read_bytes())
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError:
            self._quarantine(path)
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

    # -- corruption -----------------------------------------------------------
    def _quarantine(self, path: Path) -> None:
        dest = self.root / "quarantine" / f"{path.name}.{int(time.time() * 1e6)}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, dest)
            print(f"evsys: warning: corrupt store entry {path} moved to {dest}; treating it as a miss", file=sys.stderr)


def _dumps(value: dict) -> bytes:
    return (json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "_"
