"""What the row-local node kinds (transform, tokenize) share: the per-chunk memo identity and
where each chunk starts in the whole input (for error messages)."""

from __future__ import annotations

from evsys_build.chunks import memoised_results, read_row_chunk
from evsys_build.executor import RunContext
from evsys_build.graph import Node
from evsys_build.store import Store

from .views import RowDataset


def stage_identity(ctx: RunContext) -> dict:
    """What a per-chunk memo is keyed by: the rule, its code identity and the node's params.

    The code identity matters: new tokenize (or transform) code must recompute every chunk, not
    serve the chunks the old code memoized.
    """
    return node_stage_identity(ctx.node)


def node_stage_identity(node: Node) -> dict:
    return {"rule": node.rule, "version": node.version, "params": node.params}


def row_location(store: Store, rows_node: Node, index: int) -> str:
    """Where row `index` of `rows_node`'s output came from: `data/train.jsonl:6` when every
    transform between it and the source is row-local (one that keeps rows one for one maps by
    position; one that drops or splits rows, such as filter, is traced through its chunk memos),
    else `row <index> of <node>`."""
    node, position = rows_node, index
    while node.rule == "transform" and position is not None:
        if not node.params.get("row_local"):
            return f"row {index} of {rows_node.name}"
        manifest = store.read_manifest(node.key, quarantine=False) if node.key else None
        stats = (manifest or {}).get("stats", {})
        if stats.get("rows_in") != stats.get("rows_out"):
            position = input_row(store, node, position)
        node = node.inputs[0][1]
    source = (node.payload or {}).get("source")
    located = source.location(position) if position is not None and node.rule == "source" and hasattr(source, "location") else None
    return located or f"row {index} of {rows_node.name}"


def input_row(store: Store, node: Node, index: int) -> int | None:
    """The input row that row `index` of row-local transform `node`'s output came from: the chunk
    from the per-chunk memos (how many rows each input chunk gave), then the row by running the
    transform on that chunk's rows one at a time. None when it cannot be told (a memo collected)."""
    upstream = node.inputs[0][1]
    manifest = store.read_manifest(upstream.key, quarantine=False) if upstream.key else None
    transform = (node.payload or {}).get("transform")
    if manifest is None or transform is None:
        return None
    chunks = RowDataset.of(manifest).chunks
    out_start = in_start = 0
    for chunk, made in zip(chunks, memoised_results(store, node_stage_identity(node), chunks)):
        if made is None:
            return None
        if index < out_start + made["rows"]:
            return _row_within(transform, read_row_chunk(store, chunk), index - out_start, in_start)
        out_start += made["rows"]
        in_start += chunk["rows"]
    return None


def _row_within(transform, rows: list[dict], left: int, start: int) -> int | None:
    """Index (from `start`) of the row among `rows` whose output holds output row `left`."""
    try:
        for i, row in enumerate(rows):
            made = len(list(transform([dict(row)]) or []))
            if left < made:
                return start + i
            left -= made
    except Exception:  # noqa: BLE001 - only naming a row: the build's own error stands
        return None
    return None


def chunk_starts(chunks: list[dict]) -> dict[str, int]:
    """Index of each chunk's first row in the dataset (by blob; identical chunks share the first)."""
    starts, total = {}, 0
    for chunk in chunks:
        starts.setdefault(chunk["blob"], total)
        total += chunk["rows"]
    return starts
