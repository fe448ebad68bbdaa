"""The `source` node: data files read into a row dataset of content-defined chunks.

Its key holds the bytes of the files (through the stat cache), never their path. JSON lines are
chunked on their raw bytes (whitespace-insensitive boundaries) and each raw chunk is parsed only
when its bytes are new (a per-chunk memo), so a one-row edit in a million-row file parses one
chunk; other formats stream their rows into content-defined chunks.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from evsys_build.chunks import write_rows
from evsys_build.errors import ConfigError
from evsys_build.executor import RunContext
from evsys_build.graph import Node
from evsys_build.statcache import StatCache
from evsys_build.watch import listings_watched, unwatchable, watch, watch_tree

from ..config.keyed_params import keyed_dump, with_mapping_orders
from ..config.loading import Arm, LoadedConfig, check_source, check_source_files
from ..plugins import kinds
from ..plugins.code_identity import code_identity
from ..plugins.environment_reads import environment_param
from ..plugins.environment_watch import environment_checked
from ..plugins.installed import library_versions
from .jsonl_scan import jsonl_chunks
from .views import RowDataset


def source_node(loaded: LoadedConfig, arm: Arm, statcache: StatCache) -> Node:
    """The arm's source node; its params hold the source kind, its params (not the path) and the files' digests."""
    cfg = arm.config
    source_cls = kinds.sources.get(cfg.data.source_kind)
    what = f"the source {cfg.data.source_kind}"
    with environment_checked(source_cls, what):
        source = source_cls(**arm.params["data"].model_dump())
    check_source(loaded, source, arm)
    plugin = source_cls.__module__.split(".")[0] != __package__.split(".")[0]  # built-in sources watch their globs' folders themselves
    with environment_checked(source_cls, what), listings_watched(f"the source {cfg.data.source_kind}'s files()") if plugin else contextlib.nullcontext():
        files = source.files()
    check_source_files(loaded, source, files, arm)
    source_params = keyed_dump(arm.params["data"])
    source_params.pop("path", None)
    source_params = with_mapping_orders(source_params, arm.params["data"])
    identity = getattr(source, "identity", None)
    if plugin:
        _watch_plugin_source(source, files, getattr(arm.params["data"], "path", None), identity is not None)
    return Node(
        rule="source",
        name="source",
        version=f"{code_identity(run_source)}/{code_identity(source_cls)}",
        params={
            "kind": cfg.data.source_kind,
            "params": source_params,
            "content": [statcache.file_digest(f) for f in files],
            "suffixes": [Path(f).suffix for f in files],  # a source may parse by suffix (`json`: .json whole, .jsonl by line)
            **({"identity": identity()} if identity is not None else {}),
            **({"libraries": library_versions(*source_cls.libraries)} if getattr(source_cls, "libraries", ()) else {}),
            **environment_param(source_cls, f"the source {source_cls.__name__}"),
        },
        run=run_source,
        arm=arm.name,
        param_paths={"params": "data.params", "kind": "data.source_kind"},
        param_labels={"content": "data file content changed", "suffixes": "data files added, removed, or renamed to another suffix", "identity": "dataset revision changed", "libraries": "the source's library versions changed",
                      "environment": "an environment variable the source reads changed"},
        payload={"source": source},
    )


def _watch_plugin_source(source, files: list, path, has_identity: bool) -> None:
    """What a plugin source's file list may come from, for the fast paths, besides the folders its
    `files()` listed (`listings_watched`): the folders its files are in and its `path` param (a
    shard added beside one, or in an empty folder, changes the list). What its `identity()`
    reads no stat can follow."""
    for folder in sorted({str(Path(f).parent) for f in files}):
        watch(folder)
    if isinstance(path, str) and path:
        watch_tree(path)  # a folder and its subfolders, or the file
    if has_identity:
        unwatchable(f"the plugin source {type(source).__name__}'s identity()")


def run_source(ctx: RunContext) -> dict:
    source = ctx.node.payload["source"]
    what = f"the source {ctx.node.params['kind']}"
    if hasattr(source, "jsonl_files"):
        with environment_checked(type(source), what):
            files = source.jsonl_files()
        chunks, stats = jsonl_chunks(ctx, files)
        dataset = RowDataset(chunks)
    else:
        with environment_checked(type(source), what):  # the rows are read as they are written: nothing is kept if it fails
            dataset = RowDataset.from_json(write_rows(ctx.store, _rows(source.read(), ctx)))
        stats = {}
    if not dataset.num_rows:
        raise ConfigError(f"data.path: the source {ctx.node.params['kind']} read no rows; check the path and the files")
    return {"outputs": dataset.outputs(), "stats": {"rows": dataset.num_rows, "chunks": len(dataset.chunks), **stats}}


def _rows(rows, ctx: RunContext) -> Iterator[dict]:
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ConfigError(f"source: row {i}: the source yielded a {type(row).__name__}, not a dict")
        if i % 4096 == 0:
            ctx.check_stop()
        yield row
