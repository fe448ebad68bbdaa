"""The content-addressed store: objects, node manifests, memos, refs and runs, on any bucket.

Layout (docs/architecture.md): objects/<2>/<rest>, nodes/<2>/<key>.json, memo/<2>/<key>.json,
refs/<experiment>/<arm>.json, runs/<experiment>/<run id>.json, tmp/ for staging, locks/ for
locks, quarantine/ for corrupt entries. Where the files live is the bucket's business
(bucket.py: a local folder; remote_bucket.py: S3, GCS); this module is the format and the
contract every location meets:

- objects are written create-only and every read checks the digest (a torn or tampered object is
  quarantined, never served);
- a manifest is written create-only and only after every object it names exists (Nix's order),
  so a crash in between leaves harmless orphans and the node reads as not built;
- refs and runs change by compare-and-swap, so racing builds lose no update.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from . import __version__
from .bucket import Bucket, Entry, LocalBucket
from .errors import CorruptObject, StoreError, UsageError
from .hashing import digest, digest_bytes
from .tree import first_existing


DEFAULT_DIRNAME = ".evsys-cache"
CAS_ATTEMPTS = 60  # compare-and-swap retries before a ref or run update is reported as a failure


def default_cache_dir(cli_value: str | None = None) -> Path:
    """`--cache-dir`, else `$EVSYS_CACHE`, else `.evsys-cache/` in the directory you run from."""
    return Path(cache_location(cli_value))


def cache_location(cli_value: str | None = None) -> str:
    """The store's location as given: `--cache-dir`, else `$EVSYS_CACHE`, else `.evsys-cache`
    (a folder, or a URL such as s3://bucket/prefix or gs://bucket/prefix)."""
    return str(cli_value or os.environ.get("EVSYS_CACHE") or DEFAULT_DIRNAME)


def open_store(location: str | Path, upstream: str | None = None) -> "Store":
    """The store at `location`: a local folder, or s3://… / gs://… (needs `pip install 'evsys[s3]'`
    or `'evsys[gcs]'`). `upstream`, a second location, is read through: a node missing here but
    complete there is copied here when a build asks for it."""
    return Store(open_bucket(location), upstream=Store(open_bucket(upstream)) if upstream else None)


def open_built_store(location: str) -> "Store":
    """The store at `location`, for commands that read what builds wrote (gc, verify, runs, show,
    export, diff, push): a local folder that does not exist is a mistyped path, not an empty store."""
    if not is_remote(location) and not Path(location.removeprefix("file://")).is_dir():
        raise UsageError(f"{location}: no store there (nothing was built into it); give --cache-dir (or $EVSYS_CACHE) where `evsys build` wrote")
    return open_store(location)


def open_bucket(location: str | Path) -> Bucket:
    text = str(location)
    if "://" in text and not text.startswith("file://"):
        from .remote_bucket import open_remote_bucket  # lazily: fsspec and its cloud clients load only for remote stores

        return open_remote_bucket(text)
    return LocalBucket(_local_folder(Path(text.removeprefix("file://"))))


def _local_folder(path: Path) -> Path:
    """`path`, checked to be a folder or one that can be made there (the first write makes it):
    a file in the way is one line."""
    part = first_existing(path)
    if not part.is_dir():
        raise UsageError(f"{path}: {part} is a file, not a folder; a store is a folder (check --cache-dir, $EVSYS_CACHE or --remote)")
    return path


def is_remote(location: str | Path | None) -> bool:
    text = str(location or "")
    return "://" in text and not text.startswith("file://")


class Store:
    """A content-addressed store on a bucket (a local folder by default: `Store(path)`)."""

    def __init__(self, where: Bucket | Path | str, upstream: "Store | None" = None):
        self.bucket: Bucket = LocalBucket(where) if isinstance(where, (str, Path)) else where
        self.upstream = upstream

    @property
    def location(self) -> str:
        """What another process (a Ray worker) opens to reach this store."""
        return self.bucket.location

    @property
    def local_dir(self) -> Path:
        """Where machine-local state goes (the stat cache): the folder itself for a local store."""
        return self.bucket.local_dir

    @property
    def root(self) -> Path:
        """The folder of a local store (a remote one has none)."""
        root = getattr(self.bucket, "root", None)
        if root is None:
            raise StoreError(f"the store {self.bucket} is remote; it has no local folder")
        return root

    def __str__(self) -> str:
        return str(self.bucket)

    # -- objects -------------------------------------------------------------------------------
    def put_bytes(self, data: bytes, durable: bool = True) -> str:
        """Store a blob (create-only); returns its xxh3_128 name. Storing twice is free.
        `durable=False`: a data chunk, checked on every read and cheap to compute again, may skip
        fsync (`Bucket.create`)."""
        name = digest_bytes(data)
        path = _object_path(name)
        # a remote bucket checks first only for large blobs (a request saved per small one)
        size = self.bucket.size(path) if len(data) >= getattr(self.bucket, "check_before_put", 0) else None
        if size == len(data):
            return name
        if size is not None:  # a truncated leftover under this name: move it aside, then write
            self._quarantine(path, None, "its size does not match its name")
        self.bucket.create(path, data, durable)  # False: a concurrent writer stored the same bytes first
        return name

    def get_bytes(self, name: str, quarantine: bool = True) -> bytes:
        """The object's bytes, checked against its name (xxh3 runs at GB/s, so on every read).
        A missing or mismatched object raises CorruptObject; a mismatched one is quarantined."""
        found = self.bucket.read_versioned(_object_path(name))
        if found is None:
            raise CorruptObject(f"object {name} is missing from {self}", name)
        if digest_bytes(found.data) != name:
            if quarantine:
                self._quarantine(_object_path(name), found.token, "its bytes do not match its name")
            raise CorruptObject(f"object {name} in {self} is corrupt (its bytes do not match its name)" + ("; quarantined" if quarantine else ""), name)
        return found.data

    def quarantine_object(self, name: str, why: str) -> None:
        """Move a bad object aside: every node that references it now reads as not built."""
        self._quarantine(_object_path(name), None, why)

    def missing_objects(self, names: Iterable[str]) -> list[str]:
        """The names among `names` that have no object (one batched existence check)."""
        names = list(dict.fromkeys(names))
        present = self.bucket.exists_many([_object_path(n) for n in names]) if names else set()
        return [n for n in names if _object_path(n) not in present]

    def has_object(self, name: str) -> bool:
        return not self.missing_objects([name])

    def object_size(self, name: str) -> int:
        return self.bucket.size(_object_path(name)) or 0

    def object_path(self, name: str) -> Path:
        """The file of an object in a local store (tests and tools poke at it)."""
        return self.root / _object_path(name)

    def iter_objects(self) -> Iterator[str]:
        yield from self.entries("objects")

    def delete_object(self, name: str) -> None:
        self.bucket.delete(_object_path(name))

    def entries(self, kind: str) -> dict[str, Entry]:
        """Names (object names, node keys, memo keys) of one kind with their size and write
        time, from one listing: what gc and verify walk."""
        if kind not in ("objects", "nodes", "memo"):
            raise ValueError(kind)
        out = {}
        for path, entry in self.bucket.list(kind + "/").items():
            parts = path.split("/")
            if len(parts) != 3:
                continue
            name = parts[1] + parts[2] if kind == "objects" else parts[2].removesuffix(".json")
            if _is_hex(name) and (kind == "objects" or parts[2].endswith(".json")):
                out[name] = entry
        return out

    # -- node manifests --------------------------------------------------------------------------
    def write_manifest(self, key: str, manifest: dict, stale: Callable[[dict], bool] | None = None) -> dict:
        """Store a node's manifest; returns the manifest the store holds afterwards.

        Only once every object it names exists (checked in one batch), and create-only: when
        another writer (a second build, a retried Ray task) stored this node first, its manifest
        is kept and returned, so everything below keys on one output. An existing manifest that
        lost objects, or that `stale` rejects (what it references on a service is gone), is
        replaced by compare-and-swap."""
        body = {k: v for k, v in manifest.items() if k != "checksum"}
        body["key"] = key
        body.setdefault("evsys_version", __version__)  # a copied manifest keeps the version that built it
        body["checksum"] = digest(body)
        missing = self.missing_objects(referenced_objects(body))
        if missing:
            raise CorruptObject(f"object {missing[0]} of node:{key[:12]} vanished before its manifest was written (gc or a repair removed it); rebuilding", missing[0])
        data = _dumps(body, compact=True)
        path = _manifest_path(key)
        for _ in range(CAS_ATTEMPTS):
            if self.bucket.create(path, data):
                return body
            current = self.bucket.read_versioned(path)
            if current is None:
                continue
            stored = _parse_manifest(key, current.data)
            if stored is None:  # corrupt: move it aside and write ours
                self._quarantine(path, current.token, "its checksum does not match its content")
                continue
            if not self.missing_objects(referenced_objects(stored)) and not (stale is not None and stale(stored)):
                return stored
            if self.bucket.replace(path, data, current.token):
                return body
        raise StoreError(f"could not write the manifest of node:{key[:12]} in {self}: it kept changing")

    def read_manifest(self, key: str, quarantine: bool = True, label: str = "") -> dict | None:
        """The manifest, or None when absent. One that does not parse or whose checksum does not
        match its content reads as a miss (the node reruns) and is quarantined (unless told not to:
        `verify` only reports)."""
        path = _manifest_path(key)
        found = self.bucket.read_versioned(path)
        if found is None:
            return None
        manifest = _parse_manifest(key, found.data)
        if manifest is None and quarantine:
            self._quarantine(path, found.token, "its checksum does not match its content", label and f"the manifest of {label} (node:{key[:12]})")
        return manifest

    def has_manifest(self, key: str) -> bool:
        return self.bucket.size(_manifest_path(key)) is not None

    def stored_manifests(self, keys: Iterable[str]) -> set[str]:
        """The keys among `keys` that have a manifest here (one batched existence check; the
        manifests are neither read nor checked)."""
        return self._stored({_manifest_path(k): k for k in keys})

    def complete_manifest(self, key: str, label: str = "") -> dict | None:
        """The manifest of `key` when it and every object it references are present, else None:
        a node is served from cache only when all of it is there. With an upstream store (read
        through), a node complete there is copied here first."""
        manifest = self.read_manifest(key, label=label)
        if manifest is not None and not self.missing_objects(referenced_objects(manifest)):
            return manifest
        if self.upstream is not None:
            from .sync import copy_node  # sync imports this module

            if copy_node(self.upstream, self, key):
                return self.read_manifest(key, label=label)
        return None

    def iter_manifests(self) -> Iterator[str]:
        yield from self.entries("nodes")

    def resolve_prefix(self, prefix: str) -> str:
        """A unique node key for `prefix` (with or without `node:`), else a UsageError."""
        prefix = prefix.removeprefix("node:").lower()
        if not _is_hex(prefix):
            raise UsageError(f"node:{prefix}: a node key is hexadecimal (0-9, a-f); `evsys plan CONFIG` lists node keys")
        if len(prefix) < 2:
            raise UsageError(f"node prefix {prefix!r} is too short; give at least 2 hex characters")
        listed = self.bucket.list(f"nodes/{prefix[:2]}/")
        matches = sorted(k for k in (p.rsplit("/", 1)[-1].removesuffix(".json") for p in listed) if k.startswith(prefix))
        if not matches:
            raise UsageError(f"no node matches {prefix!r} in {self}; `evsys plan CONFIG` lists node keys")
        if len(matches) > 1:
            shown = ", ".join(m[:12] for m in matches[:5])
            raise UsageError(f"node prefix {prefix!r} is ambiguous ({len(matches)} nodes: {shown}); give more characters")
        return matches[0]

    def delete_manifest(self, key: str) -> None:
        self.bucket.delete(_manifest_path(key))

    # -- memo: small json values under a key (per-chunk and per-task caches) ----------------------
    def memo_get(self, key: str, quarantine: bool = True) -> dict | None:
        """The memoised value, or None. A memo carries the digest of its value: one that does not
        match (or does not parse) reads as a miss and is quarantined (unless told not to)."""
        path = _memo_path(key)
        found = self.bucket.read_versioned(path)
        if found is None:
            return None
        try:
            stored = json.loads(found.data)
            value = stored["value"]
            if digest(value) != stored["digest"]:
                raise ValueError("digest mismatch")
            return value
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            if quarantine:
                self._quarantine(path, found.token, "its value does not match its digest")
            return None

    def memo_put(self, key: str, value: dict, durable: bool = True) -> None:
        """Create-only: a memo already there (written by a concurrent worker) is kept. Every read
        checks a memo against its digest; `durable=False` as for `put_bytes`."""
        self.bucket.create(_memo_path(key), _dumps({"value": value, "digest": digest(value)}, compact=True), durable)

    def stored_memos(self, keys: Iterable[str]) -> set[str]:
        """The keys among `keys` that have a memo here (one batched existence check; the memos
        are neither read nor checked)."""
        return self._stored({_memo_path(k): k for k in keys})

    def _stored(self, paths: dict[str, str]) -> set[str]:
        """The keys of `paths` (path -> key) whose file exists, in one batched check."""
        return {paths[p] for p in self.bucket.exists_many(list(paths))} if paths else set()

    def iter_memo_keys(self) -> Iterator[str]:
        yield from self.entries("memo")

    def delete_memo(self, key: str) -> None:
        self.bucket.delete(_memo_path(key))

    # -- refs: the newest run's node keys per experiment/arm ----------------------------------------
    def read_ref(self, experiment: str, arm: str) -> dict:
        """The arm's ref; {} when there is none, or when the file holds another experiment's whose
        name the store writes alike (`cut off`, `cut_off`): a plan never diffs against its build."""
        ref = self._read_json(_ref_path(experiment, arm)) or {}
        return ref if ref.get("experiment", experiment) == experiment else {}

    def write_ref(self, experiment: str, arm: str, ref: dict) -> dict:
        """Point the arm's ref at `ref` unless it already names a newer run (run ids sort by start
        time): two builds finishing together leave the newer one, whichever writes last. A ref of
        another experiment stored alike is replaced."""
        def newer(current: dict) -> dict:
            ours = current.get("experiment", ref.get("experiment")) == ref.get("experiment")
            return current if ours and current.get("run", "") > ref.get("run", "") else ref

        return self.update_json(_ref_path(experiment, arm), newer)

    def iter_refs(self) -> Iterator[tuple[str, str, dict]]:
        """(experiment, arm, ref): the names the ref records (its folder and file hold them made safe)."""
        for path in self.bucket.list("refs/"):
            parts = path.split("/")
            if len(parts) == 3 and parts[2].endswith(".json"):
                ref = self._read_json(path) or {}
                yield ref.get("experiment") or parts[1], ref.get("arm") or parts[2].removesuffix(".json"), ref

    # -- runs: every build's record (config, node keys, status, metrics) ------------------------------
    def write_run(self, run: dict) -> dict:
        """Record a run; a finished record is never overwritten by an unfinished one (a late push)."""
        keep_finished = lambda current: current if current.get("finished") and not run.get("finished") else run  # noqa: E731
        return self.update_json(_run_path(run["experiment"], run["id"]), keep_finished)

    def read_run(self, experiment: str, run_id: str) -> dict | None:
        return self._read_json(_run_path(experiment, run_id))

    def iter_runs(self, experiment: str | None = None) -> Iterator[dict]:
        """Runs, oldest first (run ids sort by time), of one experiment or of all."""
        prefix = f"runs/{_safe(experiment)}/" if experiment is not None else "runs/"
        for path in sorted(self.bucket.list(prefix)):
            parts = path.split("/")
            if len(parts) == 3 and parts[2].endswith(".json"):
                run = self._read_json(path)
                if run is not None and (experiment is None or run.get("experiment", experiment) == experiment):  # not another experiment stored alike
                    yield run

    def run_entries(self) -> dict[tuple[str, str], Entry]:
        """(experiment, run id) -> when its record was last written: gc never removes a run a
        build is still writing."""
        out = {}
        for path, entry in self.bucket.list("runs/").items():
            parts = path.split("/")
            if len(parts) == 3 and parts[2].endswith(".json"):
                out[(parts[1], parts[2].removesuffix(".json"))] = entry
        return out

    def delete_run(self, experiment: str, run_id: str) -> None:
        self.bucket.delete(_run_path(experiment, run_id))

    # -- compare-and-swap of small JSON documents -------------------------------------------------
    def update_json(self, path: str, change: Callable[[dict], dict]) -> dict:
        """Read-modify-write `path` by compare-and-swap (ETag, generation, or a local flock):
        `change(current or {})` is applied again whenever another writer got in between."""
        for attempt in range(CAS_ATTEMPTS):
            current = self.bucket.read_versioned(path)
            value = self._parse_json(path, current)
            if value is None and current is not None:
                continue  # it did not parse and was quarantined: start from nothing
            new = change(dict(value or {}))
            if current is not None and new == value:
                return new
            if self.bucket.replace(path, _dumps(new), current.token if current is not None else None):
                return new
            time.sleep(min(0.002 * 2**attempt, 0.25) * random.uniform(0.5, 1.5))
        raise StoreError(f"could not update {path} in {self}: {CAS_ATTEMPTS} other writers got in first; try again")

    def _read_json(self, path: str) -> dict | None:
        return self._parse_json(path, self.bucket.read_versioned(path))

    def _parse_json(self, path: str, found) -> dict | None:
        if found is None:
            return None
        try:
            value = json.loads(found.data)
            if isinstance(value, dict):
                return value
        except (ValueError, UnicodeDecodeError):
            pass
        self._quarantine(path, found.token, "it does not parse")
        return None

    # -- locks -----------------------------------------------------------------------------------
    def lock(self, key: str, on_wait=None, stop=None):
        """An exclusive per-node lock: two builds sharing a store (on one machine or, for a remote
        store, anywhere) never run one node at the same time. Held elsewhere: `on_wait()` once,
        and a `stop` set while waiting raises Interrupted."""
        return self.bucket.node_lock(key, on_wait, stop)

    def build_lock(self, on_wait=None):
        """Held by every build for its whole run: gc never removes what a running build is
        writing or about to reuse (a local store: gc waits; a remote one: see remote_bucket.py).
        `on_wait` is called once if the build has to wait for a running gc first."""
        return self.bucket.build_lock(on_wait)

    def gc_lock(self, on_wait=None):
        """Held by gc; yields the time before which unreferenced entries may go (None: any)."""
        return self.bucket.gc_lock(on_wait)

    # -- housekeeping ----------------------------------------------------------------------------
    def stale_staging(self) -> list[str]:
        """Staging files a killed build left (tmp/ of a local store)."""
        return self.bucket.stale_staging()

    def clean_staging(self) -> int:
        return self.bucket.clean_staging()

    def remove_node_locks(self) -> None:
        self.bucket.remove_node_locks()

    # -- corruption ------------------------------------------------------------------------------
    def _quarantine(self, path: str, token: str | None, why: str, what: str = "") -> None:
        dest = self.bucket.quarantine(path, token)
        if dest is not None:
            print(f"evsys: warning: {what or self._display(path)} is corrupt ({why}); moved to {dest}; a build makes it again", file=sys.stderr)

    def _display(self, path: str) -> str:
        root = getattr(self.bucket, "root", None)
        return str(root / path) if root is not None else f"{self.bucket.location}/{path}"


def _parse_manifest(key: str, data: bytes) -> dict | None:
    """A manifest whose checksum matches its content and whose key is `key`, else None."""
    try:
        manifest = json.loads(data)
        body = {k: v for k, v in manifest.items() if k != "checksum"}
        if manifest.get("checksum") == digest(body) and manifest.get("key") == key:
            return manifest
    except (ValueError, AttributeError, UnicodeDecodeError):
        pass
    return None


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


_HEX_NAME = re.compile(r"[0-9a-f]+")


def _is_hex(text: str) -> bool:
    return _HEX_NAME.fullmatch(text) is not None


def _object_path(name: str) -> str:
    if not _is_hex(name or ""):
        raise StoreError(f"{name!r} is not an object name")
    return f"objects/{name[:2]}/{name[2:]}"


def _manifest_path(key: str) -> str:
    if not _is_hex(key or ""):
        raise StoreError(f"{key!r} is not a node key")
    return f"nodes/{key[:2]}/{key}.json"


def _memo_path(key: str) -> str:
    if not _is_hex(key or ""):
        raise StoreError(f"{key!r} is not a memo key")
    return f"memo/{key[:2]}/{key}.json"


def _ref_path(experiment: str, arm: str) -> str:
    return f"refs/{_safe(experiment)}/{_safe(arm)}.json"


def _run_path(experiment: str, run_id: str) -> str:
    return f"runs/{_safe(experiment)}/{_safe(run_id)}.json"


def _dumps(value: dict, compact: bool = False) -> bytes:
    """JSON as stored: runs and refs indented for people; manifests and memo entries compact, which
    json encodes in C (with `indent` it falls back to Python: 15 ms for a 3,900-chunk manifest)."""
    if compact:
        return (json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
    return (json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "_"


safe_name = _safe  # how an experiment or arm name is written in the store (refs/, runs/): names that map alike share a folder or file
# (a config refuses such arms; records and refs hold the experiment's own name, and readers keep to their own)
