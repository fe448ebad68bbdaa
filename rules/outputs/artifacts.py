"""A stored artifact as the Python API hands it out: `node:<key>` (a node) or `node:<key>#<output>`
(one of its outputs, e.g. a checkpoint's `#state`). The same references `evsys show` opens."""

from __future__ import annotations

import os
from pathlib import Path

from evsys_build.atomic import write_atomic
from evsys_build.errors import UsageError
from evsys_build.show import show_node
from evsys_build.store import Store, referenced_objects


class StoredArtifact:
    """A node (or one output of it) in the store: its manifest, its files, a way to write them out.

        art = result.open("checkpoint-final")
        art.files()                 # {"adapter_model.safetensors": <object id>, ...}
        art.read("adapter_config.json")
        art.export("my-adapter")    # a PEFT adapter folder; merge=True: a full model folder
        print(art.show())           # what `evsys show` prints
    """

    def __init__(self, store: Store, ref: str):
        self.store = store
        self.ref = ref
        key, _, self.part = ref.removeprefix("node:").partition("#")
        self.key = store.resolve_prefix(key)
        self.manifest: dict = store.read_manifest(self.key) or {}
        if self.part and self.part not in self.manifest.get("outputs", {}):
            raise UsageError(f"{ref}: node {self.manifest.get('name')} has no output {self.part!r}")

    @property
    def name(self) -> str:
        return self.manifest.get("name", "")

    @property
    def rule(self) -> str:
        return self.manifest.get("rule", "")

    def files(self) -> dict[str, str]:
        """File name → object id: the output's files (a checkpoint without `#part`: its weights)."""
        outputs = self.manifest.get("outputs", {})
        part = self.part or ("weights" if self.rule == "checkpoint" else "")
        value = outputs.get(part) if part else outputs
        if isinstance(value, dict) and isinstance(value.get("blobs"), dict):
            return dict(value["blobs"])
        return {name: name for name in sorted(referenced_objects(value))}

    def read(self, name: str) -> bytes:
        """The bytes of one file (its digest checked)."""
        files = self.files()
        if name not in files:
            raise UsageError(f"{self.ref}: no file {name!r}; it has: {', '.join(files)}")
        return self.store.get_bytes(files[name])

    def write(self, folder: str | os.PathLike) -> list[Path]:
        """Write the files into `folder` (created); returns their paths."""
        folder = Path(folder)
        written = []
        for name, obj in sorted(self.files().items()):
            write_atomic(folder / name, self.store.get_bytes(obj))
            written.append(folder / name)
        return written

    def export(self, folder: str | os.PathLike, merge: bool = False, base_model: str | None = None, dtype: str = "auto") -> list[Path]:
        """A checkpoint (or a training's final one) as a PEFT adapter folder, or with `merge` a
        Hugging Face model folder: what `evsys export` writes."""
        from .export import export_node  # lazily: exporting loads torch

        return export_node(self.store, self.key, Path(folder), merge=merge, base_model=base_model, dtype=dtype)

    def show(self, rows: int = 3) -> str:
        """What `evsys show <ref>` prints."""
        return show_node(self.store, self.ref, rows=rows)

    def __repr__(self) -> str:
        return f"StoredArtifact({self.ref!r}, {self.name or self.rule})"
