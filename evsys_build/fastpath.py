"""The no-op fast path: a build of a config that nothing about has changed, without compiling it.

A fully cached `evsys build` (nothing ran) leaves a snapshot: the stat identity of every file
and folder its compile read (watch.py), the environment and interpreter, every node key, the
lines it printed, its run record and the run-dir files it wrote. The next build of the same
config, from the same directory, into the same store, checks all of that — and that every node
is still whole in the store and the run dir on disk still holds exactly those bytes — and then
records its run and prints the same lines without importing the frontend. Any difference, and
the build takes the normal path (set EVSYS_NO_FASTPATH=1 to always take it).

`evsys plan` has one too: a plan of a local store leaves the lines it printed with the same
stamps of what its compile read, and the stat identities of everything it read from the store
(read_journal.py): which manifests, objects and refs were there, and what they held. The next
identical plan prints those lines when every stamp still holds, without importing the frontend.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Callable

import xxhash

from . import __version__
from .atomic import write_atomic
from .hashing import digest
from .read_journal import JournalBucket, first_changed
from .store import Store
from .watch import Watcher

ENV_PREFIXES = ("EVSYS_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TINKER_", "CUDA_", "NVIDIA_", "PYTHON", "WANDB_", "RAY_", "AWS_", "GOOGLE_")
ENV_NAMES = ("HOME", "XDG_CACHE_HOME", "PATH")
OWN_SWITCHES = ("EVSYS_NO_FASTPATH", "EVSYS_FASTPATH_DEBUG")
SNAPSHOT_VERSION = 2  # 2: environment values as digests
PLAN_SNAPSHOT_VERSION = 2  # 2: the store's reads among the watched paths


def snapshot_path(store: Store, config: Path, arm: str | None) -> Path:
    key = digest({"config": os.path.abspath(config), "arm": arm, "cwd": os.getcwd(), "store": os.path.abspath(store.root)})
    return store.local_dir / "fastpath" / f"{key}.json"


_STARTED_PATH = list(sys.path)  # as the process started: before a plugin's folder is added (rules/plugins/loader.py)


def environment() -> dict:
    """What of the process's environment a compile may read. Values are kept as digests: the
    names include credentials (TINKER_API_KEY, HF_TOKEN, AWS_SECRET_ACCESS_KEY), and a snapshot
    only needs to tell whether a value changed, never what it was."""
    env = {k: _value_digest(v) for k, v in os.environ.items() if (k.startswith(ENV_PREFIXES) or k in ENV_NAMES) and k not in OWN_SWITCHES}
    started = {"path": _STARTED_PATH, "flags": repr(sys.flags)}  # `python -m` (the run dir first), `-I`, `-S`: other modules import
    return {"env": env, "python": sys.version, "executable": sys.executable, "started": started, "evsys": __version__, "cwd": os.getcwd()}


def _value_digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()


def save(store: Store, config: Path, arm: str | None, watcher: Watcher, node_keys: list[str], lines: list[str], run: dict) -> None:
    """Leave a snapshot of a fully cached build (when everything it read can be trusted)."""
    if os.environ.get("EVSYS_NO_FASTPATH"):
        return
    watcher.add_python_modules()
    if not watcher.trustworthy():
        why_not(f"no snapshot: {watcher.broken or 'a file it read changed in the last 2 s'}")
        return
    snapshot = {
        "version": SNAPSHOT_VERSION,
        **environment(),
        "paths": watcher.paths,
        "nodes": node_keys,
        "lines": lines,
        "run": {k: v for k, v in run.items() if k not in ("id", "started", "finished", "host", "pid")},
    }
    write_atomic(snapshot_path(store, config, arm), json.dumps(snapshot).encode(), store.local_dir / "tmp")


def try_fast_build(store: Store, config: Path, arm: str | None, echo: Callable[[str], None]) -> bool:
    """Build from the snapshot if everything it recorded still holds; False: take the normal path."""
    if os.environ.get("EVSYS_NO_FASTPATH"):
        return False
    snapshot = _current_snapshot(snapshot_path(store, config, arm), SNAPSHOT_VERSION)
    if snapshot is None:
        return False
    import socket  # lazily (and runs.py): a plan from its snapshot needs neither

    from .runs import finish_record, new_run_id, now

    with store.build_lock():
        if not all(store.complete_manifest(key) is not None for key in snapshot["nodes"]):
            return why_not("a node is not whole in the store")
        if not all(_dir_intact(d) for d in snapshot["run"].get("run_dirs", [])):
            return why_not("a run dir differs from what the build wrote")
        run = dict(snapshot["run"], id=new_run_id(), started=now(), host=socket.gethostname(), pid=os.getpid(), fast_path=True)
        for line in snapshot["lines"]:
            echo(line)
        finish_record(store, run, "completed")
    return True


def plan_snapshot_path(store: Store, config: Path, arm: str | None, view: str) -> Path:
    key = digest({"plan": view, "config": os.path.abspath(config), "arm": arm, "cwd": os.getcwd(), "store": os.path.abspath(store.root)})
    return store.local_dir / "fastpath" / f"plan-{key}.json"


def save_plan(store: Store, config: Path, arm: str | None, view: str, watcher: Watcher, journal: JournalBucket, lines: list[str]) -> None:
    """Leave a snapshot of a plan: its lines, and what its compile and planner read (`watcher`,
    which `journal` reported the store's reads to)."""
    if os.environ.get("EVSYS_NO_FASTPATH"):
        return
    watcher.add_python_modules()
    if journal.wrote or not watcher.trustworthy():
        why_not(f"no plan snapshot: {'it wrote to the store' if journal.wrote else watcher.broken or 'a file it read changed in the last 2 s'}")
        return
    snapshot = {"version": PLAN_SNAPSHOT_VERSION, **environment(), "paths": watcher.paths, "lines": lines}
    write_atomic(plan_snapshot_path(store, config, arm, view), json.dumps(snapshot).encode(), store.local_dir / "tmp")


def try_fast_plan(store: Store, config: Path, arm: str | None, view: str, echo: Callable[[str], None]) -> bool:
    """Print the plan from its snapshot if nothing it read (config, files, code, environment, the
    store's manifests, objects and refs) has changed; False: plan the normal way."""
    if os.environ.get("EVSYS_NO_FASTPATH"):
        return False
    snapshot = _current_snapshot(plan_snapshot_path(store, config, arm, view), PLAN_SNAPSHOT_VERSION)
    if snapshot is None:
        return False
    for line in snapshot["lines"]:
        echo(line)
    return True


def _current_snapshot(path: Path, version: int) -> dict | None:
    """The snapshot at `path` when the environment, interpreter and every file its compile read are
    as they were; else None (and why, under EVSYS_FASTPATH_DEBUG)."""
    try:
        snapshot = json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return why_not("no snapshot") or None
    if snapshot.get("version") != version or any(snapshot.get(k) != v for k, v in environment().items()):
        return why_not("the environment or interpreter differ") or None
    changed = first_changed(snapshot["paths"])
    if changed is not None:
        return why_not(f"{changed} changed") or None
    return snapshot


def why_not(why: str) -> bool:
    """Say why the fast path was not taken (EVSYS_FASTPATH_DEBUG=1); always False."""
    if os.environ.get("EVSYS_FASTPATH_DEBUG"):
        print(f"evsys: fast path not taken: {why}", file=sys.stderr)
    return False


def _dir_intact(plan: dict) -> bool:
    """Whether a run dir (or file) on disk still holds exactly the bytes the snapshot's build wrote."""
    root = Path(plan["dir"])
    for rel, blob in plan["files"].items():
        try:
            if xxhash.xxh3_128_hexdigest((root / rel).read_bytes()) != blob:
                return False
        except OSError:
            return False
    predictions = root / "predictions"
    present = {f"predictions/{f.name}" for f in predictions.glob("*.jsonl")} if predictions.is_dir() else set()
    return present <= set(plan["files"])
