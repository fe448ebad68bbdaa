"""The `source` node: a data file (or files) read into a row dataset of content-defined chunks.

Its key holds the bytes of the files (through the stat cache), never their path.
"""

from __future__ import annotations

from evsys_build.chunks import write_rows
from evsys_build.executor import RunContext
from evsys_build.graph import Node
from evsys_build.statcache import StatCache

from ..config.loading import Arm, LoadedConfig, check_source
from ..plugins import kinds
from ..plugins.code_identity import code_identity
from .views import RowDataset

def source_node(loaded: LoadedConfig, arm: Arm, statcache: StatCache) -> Node:
    """The arm's source node; its params hold the source kind, its params (not the path) and the files' digests."""
    cfg = arm.config
    source_cls = kinds.sources.get(cfg.data.source_kind)
    source = source_cls(**arm.params["data"].model_dump())
    check_source(loaded, source)
    source_params = arm.params["data"].model_dump(exclude_defaults=True)
    source_params.pop("path", None)
    return Node(
        rule="source",
        name="source",
        version=f"{code_identity(run_source)}/{code_identity(source_cls)}",
        params={"kind": cfg.data.source_kind, "params": source_params, "content": [statcache.file_digest(f) for f in source.files()]},
        run=run_source,
        arm=arm.name,
        param_paths={"params": "data.params", "kind": "data.source_kind"},
        param_labels={"content": "data file content changed"},
        payload={"source": source},
    )


def run_source(ctx: RunContext) -> dict:
    source = ctx.node.payload["source"]
    dataset = RowDataset.from_json(write_rows(ctx.store, source.read()))
    return {"outputs": dataset.outputs(), "stats": {"rows": dataset.num_rows, "chunks": len(dataset.chunks)}}
