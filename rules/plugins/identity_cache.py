"""Identities computed by earlier processes, kept on disk beside the store (`identity-cache.json`).

An identity stands while every source file it was made of has the same stat identity (a file
changed in the last two seconds is never trusted, as git treats racy-clean files), every module
the walk read still comes from the same file, every module an import named but that was missing
is still missing, and every registry it read holds the same user plugins. Saves parsing the rules' modules on every `plan` and no-op build.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import sys
import time
import types
from pathlib import Path

from evsys_build.atomic import write_atomic
from evsys_build.watch import RACY_NS, watch

from .code_units import stat_stamp
from .registry import Registry

EVSYS_PACKAGES = ("evsys_rules", "evsys_build", "evsys_sdk")


class IdentityCache:
    """Identities computed by earlier processes, each valid while every source file it was made
    of (every module whose source or namespace the walk read) has the same stat identity (a file
    changed in the last two seconds is never trusted, as git treats racy-clean files). Saves
    parsing the rules' modules on every `plan` and no-op build."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict | None = None
        self.dirty = False

    def get(self, key: str) -> str | None:
        entry = self._load().get(key)
        if not entry or entry.get("python") != sys.version or "modules" not in entry:
            return None
        if any(module_file(name) != file for name, file in entry["modules"].items()):
            return None  # a module the walk read now comes from another file (PYTHONPATH, another checkout)
        if any(user_plugins(_registry(kind)) != plugins for kind, plugins in entry.get("registered", {}).items()):
            return None  # a registry it reads holds other plugins now
        for file, stamp in entry["files"].items():
            if _stamp(file) != stamp:
                return None
            watch(file)
        watch_absent(name for name, file in entry["modules"].items() if file is None)
        return entry["identity"]

    def files(self, key: str) -> list[str]:
        """The source files the identity `key` was made of (after a `get` that found it)."""
        return list(self._load()[key]["files"])

    def put(self, key: str, identity: str, files: list[str], modules: dict[str, str | None], registered: dict | None = None) -> None:
        for file in files:
            watch(file)
        watch_absent(name for name, file in modules.items() if file is None)
        stamps = {f: _stamp(f) for f in files}
        if any(s is None or time.time_ns() - s[1] < RACY_NS for s in stamps.values()):
            return
        self._load()[key] = {"identity": identity, "files": stamps, "modules": modules, "python": sys.version, "registered": registered or {}}
        self.dirty = True

    def save(self) -> None:
        if self.dirty and self.entries is not None:
            write_atomic(self.path, json.dumps(self.entries).encode(), self.path.parent / "tmp")
            self.dirty = False

    def _load(self) -> dict:
        if self.entries is None:
            try:
                self.entries = json.loads(self.path.read_bytes())
            except (FileNotFoundError, ValueError):
                self.entries = {}
        return self.entries


def user_plugins(registry: Registry | None) -> list[str]:
    """The user plugins a registry holds, as `name=file::qualname`."""
    if registry is None:
        return []
    out = []
    for name, item in sorted(registry._items.items()):
        if not in_evsys(item):
            module = sys.modules.get(getattr(item, "__module__", "") or "")
            out.append(f"{name}={getattr(module, '__file__', None)}::{getattr(item, '__qualname__', '')}")
    return out


def _registry(kind: str) -> Registry | None:
    from . import registry

    return next((r for r in vars(registry).values() if isinstance(r, Registry) and r.kind == kind), None)


def module_file(name: str) -> str | None:
    """The file module `name` is (or, not imported yet, would be) loaded from; never imports it."""
    module = sys.modules.get(name)
    if module is not None:
        return getattr(module, "__file__", None)
    try:
        spec = importlib.util.find_spec(name)  # imports its parent packages only
    except Exception:  # noqa: BLE001 - a parent that fails to import (ImportError, or its own error): nothing loads from there
        return None
    return spec.origin if spec is not None and spec.has_location else None


def watch_absent(names) -> None:
    """Report, for the fast path, every place a missing module would be found from (its parent
    package's folders, or every folder on sys.path, the working directory included): a module of
    yours that appears there changes what a `try: import mine` plugin runs."""
    for name in names:
        parent, _, last = name.rpartition(".")
        folders = list(getattr(sys.modules.get(parent), "__path__", None) or []) if parent else [f or os.getcwd() for f in sys.path]
        for folder in folders:
            if isinstance(folder, str) and os.path.isdir(folder):
                for suffix in ("", ".py", ".pyc", *importlib.machinery.EXTENSION_SUFFIXES):
                    watch(os.path.join(folder, last + suffix))


def _stamp(file: str) -> list | None:
    stamp = stat_stamp(file)
    return list(stamp) if stamp is not None else None  # a list: as the cache's JSON gives it back


def in_evsys(obj) -> bool:
    name = obj if isinstance(obj, str) else obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", "")
    return (name or "").split(".", 1)[0] in EVSYS_PACKAGES
