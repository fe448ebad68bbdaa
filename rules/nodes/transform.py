"""The `transform` node (one per `transforms:` entry): rows -> rows, per chunk when `row_local`.

A row-local transform maps each content-defined chunk through a per-chunk memo, so a one-row
edit recomputes one or two chunks; other transforms see every row at once.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from evsys_build.chunk_workers import ChunkWorkers, store_address, worker_store
from evsys_build.chunks import iter_rows, map_chunks, read_row_chunk, rows_dataset, write_row_chunk, write_rows
from evsys_build.errors import ConfigError
from evsys_build.executor import RunContext
from evsys_build.graph import Node
from evsys_build.statcache import StatCache
from evsys_build.store import Store
from evsys_build.watch import listings_watched, unwatchable, watch

from ..config.keyed_params import keyed_dump, unvalidated_params, with_mapping_orders
from ..config.loading import Arm
from ..plugins import kinds
from ..plugins.code_identity import code_identity
from ..plugins.environment_reads import environment_param
from ..plugins.environment_watch import environment_checked
from .row_chunks import chunk_starts, row_location, stage_identity
from .views import RowDataset

def make_transform(arm: Arm, index: int):
    """The transform object of `transforms[index]` (what its node runs, and `validate --deep` too)."""
    kind = arm.config.transforms[index].kind
    cls = kinds.transforms.get(kind)
    with environment_checked(cls, f"the transform {kind}"):
        return cls(**_transform_kwargs(arm, index))


def _transform_kwargs(arm: Arm, index: int) -> dict:
    """The params of `transforms[index]`; seeded transforms default to the experiment seed."""
    spec = arm.config.transforms[index]
    cls = kinds.transforms.get(spec.kind)
    kw = dict(spec.params)
    if "seed" in getattr(getattr(cls, "Config", None), "model_fields", {}) and kw.get("seed") is None:
        kw["seed"] = arm.config.seed
    return kw


def transform_node(arm: Arm, index: int, rows: Node, statcache: StatCache) -> Node:
    """The node of `transforms[index]`, reading `rows` (the source's or the previous transform's)."""
    spec = arm.config.transforms[index]
    cls = kinds.transforms.get(spec.kind)
    kw = _transform_kwargs(arm, index)
    transform = make_transform(arm, index)
    tcfg = getattr(transform, "cfg", None)
    params = {**unvalidated_params(kw, tcfg), **keyed_dump(tcfg)} if isinstance(tcfg, BaseModel) else dict(kw)  # python mode: a date stays a date
    params = with_mapping_orders(params, tcfg if tcfg is not None else kw)
    return Node(
        rule="transform",
        name=f"transform[{index}] {spec.kind}",
        version=code_identity(run_transform),
        params={"kind": spec.kind, "params": params, "code": code_identity(cls), "row_local": bool(getattr(cls, "row_local", False)),
                **read_at_run_time(transform, statcache)},
        inputs=[("rows", rows)],
        run=run_transform,
        arm=arm.name,
        param_paths={"params": f"transforms[{index}].params", "kind": f"transforms[{index}].kind"},
        param_labels={"code": f"transform {spec.kind} code changed", "files": f"a file transform {spec.kind} reads changed",
                      "identity": f"what transform {spec.kind} reads changed (its identity())",
                      "environment": f"an environment variable transform {spec.kind} reads changed"},
        payload={"transform": transform},
    )


def read_at_run_time(transform, statcache: StatCache) -> dict:
    """What a transform reads besides its rows and params: the environment variables its modules
    name (environment_reads.py), and what it declares: `files()` (their bytes are keyed, never
    their paths, and a file edited during the build fails the node) and `identity()` (plain data:
    a table version, a variable whose name it computes; nothing a stat can follow, so a config
    with one always compiles)."""
    declared = environment_param(type(transform), f"the transform {type(transform).__name__}")
    files = getattr(transform, "files", None)
    if files is not None:
        what = f"the transform {type(transform).__name__}"
        with environment_checked(type(transform), what), listings_watched(f"{what}'s files()"):
            listed = files()
        for folder in sorted({str(Path(f).parent) for f in listed}):  # a file added beside one it lists
            watch(folder)
        declared["files"] = [statcache.file_digest(Path(f)) for f in listed]
    identity = getattr(transform, "identity", None)
    if identity is not None:
        unwatchable(f"the transform {type(transform).__name__}'s identity()")
        declared["identity"] = identity()
    return declared


def run_transform(ctx: RunContext) -> dict:
    transform = ctx.node.payload["transform"]
    what = f"the transform {ctx.node.params['kind']}"
    dataset = RowDataset.of(ctx.inputs["rows"])
    if getattr(transform, "row_local", False):
        starts = chunk_starts(dataset.chunks)

        def one_chunk(chunk: dict) -> dict:
            rows = read_row_chunk(ctx.store, chunk)
            try:
                with environment_checked(type(transform), what):  # before the chunk is memoised; rows a generator yields included
                    out_rows = _checked(transform(rows), ctx.node.name)
            except ConfigError as exc:
                raise _locate_row(transform, rows, starts[chunk["blob"]], ctx, exc) from None
            return write_row_chunk(ctx.store, out_rows)

        chunks, stats = map_chunks(ctx.store, dataset.chunks, stage_identity(ctx), one_chunk, ctx.progress, ctx.check_stop, _workers(ctx.store, transform, ctx.node.name))
        out = RowDataset.from_json(rows_dataset(chunks))
    else:
        rows = list(iter_rows(ctx.store, dataset.to_json()))
        with environment_checked(type(transform), what):
            out_rows = _checked(transform(rows), ctx.node.name)
        out = RowDataset.from_json(write_rows(ctx.store, out_rows))
        stats = {"chunks_ran": len(out.chunks), "chunks_cached": 0}
    return {"outputs": out.outputs(), "stats": dict(stats, rows_in=dataset.num_rows, rows_out=out.num_rows)}


def _workers(store: Store, transform, name: str) -> ChunkWorkers | None:
    """Worker processes for a built-in transform (a user's plugin may not import in a fresh
    interpreter, so it runs here); worth starting only for many chunks, each is cheap."""
    if not type(transform).__module__.startswith("evsys_rules."):
        return None
    address = store_address(store)
    return ChunkWorkers(task=transform_chunk_in_worker, args_of=lambda chunk: (address, transform, name, chunk), min_chunks=128)


def transform_chunk_in_worker(address: tuple, transform, name: str, chunk: dict) -> dict:
    """One chunk through a row-local transform, in a worker process (a failure is recomputed by the build, which names the row)."""
    store = worker_store(address)
    return write_row_chunk(store, _checked(transform(read_row_chunk(store, chunk)), name))


def _locate_row(transform, rows: list[dict], start: int, ctx: RunContext, exc: ConfigError) -> ConfigError:
    """A row-local transform failed on a chunk: name the failing row (its file:line when the rows
    before this transform map one for one to the source's)."""
    for i, row in enumerate(rows):
        try:
            transform([dict(row)])
        except ConfigError as row_exc:
            located = row_location(ctx.store, ctx.node.inputs[0][1], start + i)
            return ConfigError(f"{located}: {ctx.node.name}: {row_exc.message}")
    return exc


def _checked(rows, name: str) -> list[dict]:
    """The rows a transform returned, as a list; anything but dict rows is an error naming the node."""
    if rows is None:
        raise ConfigError(f"{name}: the transform returned None; it must return the rows (rows -> rows)")
    rows = list(rows)
    for row in rows:
        if not isinstance(row, dict):
            raise ConfigError(f"{name}: the transform returned a {type(row).__name__}, not a dict row")
    return rows
