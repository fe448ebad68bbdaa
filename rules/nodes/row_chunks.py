"""What the row-local node kinds (transform, tokenize) share: the per-chunk memo identity and
where each chunk starts in the whole input (for error messages)."""

from __future__ import annotations

from evsys_build.executor import RunContext
from evsys_build.graph import Node
from evsys_build.store import Store


def stage_identity(ctx: RunContext) -> dict:
    """What a per-chunk memo is keyed by: the rule, its code identity and the node's params.

    The code identity matters: new tokenize (or transform) code must recompute every chunk, not
    serve the chunks the old code memoized.
    """
    return {"rule": ctx.node.rule, "version": ctx.node.version, "params": ctx.node.params}


def row_location(store: Store, rows_node: Node, index: int) -> str:
    """Where row `index` of `rows_node`'s output came from: `data/train.jsonl:6` when every
    transform between it and the source kept rows one for one and in order (row-local, as many
    rows out as in), else `row <index> of <node>`."""
    node, position = rows_node, index
    while node.rule == "transform":
        manifest = store.read_manifest(node.key, quarantine=False) if node.key else None
        stats = (manifest or {}).get("stats", {})
        if not node.params.get("row_local") or stats.get("rows_in") != stats.get("rows_out"):
            return f"row {index} of {rows_node.name}"
        node = node.inputs[0][1]
    source = (node.payload or {}).get("source")
    located = source.location(position) if node.rule == "source" and hasattr(source, "location") else None
    return located or f"row {index} of {rows_node.name}"


def chunk_starts(chunks: list[dict]) -> dict[str, int]:
    """Index of each chunk's first row in the dataset (by blob; identical chunks share the first)."""
    starts, total = {}, 0
    for chunk in chunks:
        starts.setdefault(chunk["blob"], total)
        total += chunk["rows"]
    return starts
