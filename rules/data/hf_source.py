"""The `hf` source: a Hugging Face dataset by name, config, split and revision, through the
`datasets` library. With network it downloads (and prepares) first; offline (`HF_HUB_OFFLINE=1`
or `HF_DATASETS_OFFLINE=1`) it reads the local cache. Its key is the content of the prepared
Arrow files, so a new revision (or new data in a local dataset folder) reruns and the same one
is cached. Rows are read in batches, never the whole table at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Optional

from pydantic import BaseModel, Field

from evsys_build.atomic import write_atomic
from evsys_build.errors import ConfigError
from evsys_build.tree import files_under
from evsys_build.watch import unwatchable

from ..plugins.registry import register_source
from .sources import jsonable


@register_source("hf")
class HFSource:
    """Rows of one split of a Hugging Face dataset (a hub id, or a local dataset folder)."""

    libraries = ("datasets", "pyarrow")  # they decode the files: their versions are in the source's key

    class Config(BaseModel, extra="forbid"):
        name: str  # hub id such as "HuggingFaceH4/no_robots", or a local folder of data files
        config: Optional[str] = None  # the dataset's configuration ("subset")
        split: str = "train"  # which split to read
        revision: Optional[str] = None  # a branch, tag or commit; None = the default branch
        batch_size: int = Field(1000, ge=1)  # rows held in memory at a time

    def __init__(self, **kw):
        self.cfg = self.Config(**kw)
        self._loaded = None

    def files(self) -> list[Path]:
        """The prepared Arrow files of the split: their bytes are the key."""
        return sorted(Path(f["filename"]) for f in self._dataset().cache_files)

    def check(self) -> None:
        self._dataset()

    def read(self) -> Iterator[dict]:
        dataset = self._dataset()
        row = 0
        for batch in dataset.iter(batch_size=self.cfg.batch_size):
            columns = list(batch)
            for values in zip(*(batch[c] for c in columns)):
                row += 1
                yield {c: jsonable(v, f"{self.cfg.name} [{self.cfg.split}] row {row}: {c}") for c, v in zip(columns, values)}

    def location(self, index: int) -> str:
        return f"{self.cfg.name} [{self.cfg.split}] row {index + 1}"

    def _dataset(self):
        unwatchable("a Hugging Face dataset (its cache is not followed by file stats)")
        if self._loaded is None:  # once per source object: a build opens the config afresh
            self._loaded = _load_fresh(self.cfg.name, self.cfg.config, self.cfg.split, self.cfg.revision)
        return self._loaded


PREPARED_FROM = "evsys-prepared-from.json"  # beside a local dataset's Arrow files: the stats of the files they came from


def _load_fresh(name: str, config: str | None, split: str, revision: str | None):
    """The dataset, its Arrow files prepared from the local data files as they are now. `datasets`
    reuses Arrow files while a local file keeps its path and mtime, so an edit that keeps the mtime
    (`cp -p`, `rsync -t`, a checkout) would be read stale; evsys records the files' full stats
    (ctime and inode too, which no edit keeps) beside the Arrow files, and re-prepares on a change."""
    dataset = _load(name, config, split, revision)
    stats = _local_stats(name)
    if stats is None or not dataset.cache_files:
        return dataset  # a hub dataset: its revision is in the Arrow files' path
    marker = Path(dataset.cache_files[0]["filename"]).parent / PREPARED_FROM
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        recorded = None
    if recorded != stats:
        dataset = _load(name, config, split, revision, download_mode="force_redownload")
        marker = Path(dataset.cache_files[0]["filename"]).parent / PREPARED_FROM
        write_atomic(marker, json.dumps(stats, sort_keys=True).encode(), marker.parent)
    return dataset


def _local_stats(name: str) -> dict | None:
    """{relative path: [size, mtime_ns, ctime_ns, inode]} of a local dataset's files (hidden ones
    left out); None when `name` is not a local path."""
    root = Path(name).expanduser()
    if not root.exists():
        return None
    files = [root] if root.is_file() else files_under(root, skip_hidden=True)
    out = {}
    for f in files:
        st = f.stat()
        out[str(f.relative_to(root)) if f != root else f.name] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    return out


def _load(name: str, config: str | None, split: str, revision: str | None, download_mode: str | None = None):
    try:
        import datasets  # lazily: heavy, and only `hf` sources need it
    except ImportError:
        raise ConfigError("data.source_kind: hf needs the datasets library: pip install 'evsys[data]'") from None
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(name, config, split=split, revision=revision, download_mode=download_mode)
    except ValueError as exc:
        if "split" in str(exc).lower():
            raise ConfigError(f"data.params.split: {split!r}: {exc}") from None
        raise ConfigError(f"data.params.name: {name!r}: {exc}") from None
    except (FileNotFoundError, ConnectionError, OSError) as exc:
        raise ConfigError(
            f"data.params.name: {name!r} (config {config!r}, revision {revision!r}) is not in the local Hugging Face "
            f"cache and cannot be downloaded ({type(exc).__name__}); run once with network, or check the name"
        ) from None
