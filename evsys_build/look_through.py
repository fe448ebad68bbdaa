"""A store that sees through to its upstream without copying: what `plan --remote` reads.

A build with `--remote` copies a node complete upstream into the local store when it needs it
(`Store.complete_manifest`). A plan must copy nothing, yet say what that build would do: here a
node stored here or complete upstream reads as stored, and reads of manifests, memos and objects
fall back to the upstream store. Nothing is ever written here on the upstream's behalf.
"""

from __future__ import annotations

from typing import Iterable

from .errors import CorruptObject
from .store import Store


class LookThroughStore(Store):
    """`store`'s bucket, reading through to `store.upstream` where a read finds nothing here."""

    def __init__(self, store: Store):
        super().__init__(store.bucket, upstream=store.upstream)
        self.remote_hits: set[str] = set()  # keys served by the upstream store (plan names them)

    def complete_manifest(self, key: str, label: str = "") -> dict | None:
        here = Store.complete_manifest(self._local(), key, label)
        if here is not None or self.upstream is None:
            return here
        there = self.upstream.complete_manifest(key, label)
        if there is not None:
            self.remote_hits.add(key)
        return there

    def read_manifest(self, key: str, quarantine: bool = True, label: str = "") -> dict | None:
        here = super().read_manifest(key, quarantine, label)
        return here if here is not None or self.upstream is None else self.upstream.read_manifest(key, quarantine=False)

    def has_manifest(self, key: str) -> bool:
        return super().has_manifest(key) or (self.upstream is not None and self.upstream.has_manifest(key))

    def stored_manifests(self, keys: Iterable[str]) -> set[str]:
        keys = list(keys)
        here = super().stored_manifests(keys)
        return here | (self.upstream.stored_manifests([k for k in keys if k not in here]) if self.upstream is not None else set())

    def stored_memos(self, keys: Iterable[str]) -> set[str]:
        keys = list(keys)
        here = super().stored_memos(keys)
        return here | (self.upstream.stored_memos([k for k in keys if k not in here]) if self.upstream is not None else set())

    def memo_get(self, key: str, quarantine: bool = True) -> dict | None:
        here = super().memo_get(key, quarantine)
        return here if here is not None or self.upstream is None else self.upstream.memo_get(key, quarantine=False)

    def missing_objects(self, names: Iterable[str]) -> list[str]:
        missing = super().missing_objects(names)
        return self.upstream.missing_objects(missing) if missing and self.upstream is not None else missing

    def get_bytes(self, name: str, quarantine: bool = True) -> bytes:
        try:
            return super().get_bytes(name, quarantine)
        except CorruptObject:
            if self.upstream is None:
                raise
            return self.upstream.get_bytes(name, quarantine=False)

    def _local(self) -> Store:
        """This store's own bucket, with no upstream (so nothing is copied)."""
        return Store(self.bucket)
