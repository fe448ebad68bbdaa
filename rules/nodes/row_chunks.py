"""What the row-local node kinds (transform, tokenize) share: the per-chunk memo identity and
where each chunk starts in the whole input (for error messages)."""

from __future__ import annotations

from evsys_build.executor import RunContext


def stage_identity(ctx: RunContext) -> dict:
    """What a per-chunk memo is keyed by: the rule, its version and the node's params.

    The version matters: bumping TOKENIZE_VERSION (or TRANSFORM_VERSION) must recompute every
    chunk, not serve the chunks the old code memoized.
    """
    return {"rule": ctx.node.rule, "version": ctx.node.version, "params": ctx.node.params}


def chunk_starts(chunks: list[dict]) -> dict[str, int]:
    """Index of each chunk's first row in the dataset (by blob; identical chunks share the first)."""
    starts, total = {}, 0
    for chunk in chunks:
        starts.setdefault(chunk["blob"], total)
        total += chunk["rows"]
    return starts
