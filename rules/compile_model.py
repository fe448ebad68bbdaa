"""Model-side nodes: tokenize, then (when the training rule is present) train, eval and report."""

from __future__ import annotations

from evsys_build.graph import Graph
from evsys_build.statcache import StatCache


def add_model_nodes(graph: Graph, loaded, nodes, statcache: StatCache) -> None:
    from .compile import tokenize_node
    from .tiny_model import resolve_model

    model_dir = resolve_model(nodes.arm.config.model.name)
    nodes.tokenize = tokenize_node(graph, nodes.arm, nodes.rows, model_dir, statcache)
