"""Compile a loaded config into the DAG: source → transform* → tokenize → train (→ checkpoint@N)
→ eval per checkpoint × benchmark → report. This module only wires the node kinds of nodes/."""

from __future__ import annotations

from dataclasses import dataclass, field

from evsys_build.graph import Graph, Node
from evsys_build.statcache import StatCache
from evsys_build.store import Store

from .config.loading import Arm, LoadedConfig, located
from .models.resolve import resolve_model
from .nodes.eval import eval_nodes
from .nodes.report import report_node
from .nodes.source import source_node
from .nodes.steps import data_where, resolve_epochs
from .nodes.tokenize import tokenize_node
from .nodes.train import attach_checkpoints, checkpoint_node, stored_checkpoint_steps, train_node
from .nodes.transform import transform_node
from .outputs.hub import ArmCallbacks


@dataclass
class ArmNodes:
    """The nodes of one arm that later stages and the run dir need. `train` is None while the
    arm's step count waits for its data (`num_epochs` before tokenize is built)."""

    arm: Arm
    rows: Node
    tokenize: Node
    train: Node | None = None
    checkpoints: dict[int, Node] = field(default_factory=dict)
    evals: list[tuple] = field(default_factory=list)  # (benchmark, step, node)
    report: Node | None = None
    callbacks: ArmCallbacks | None = None


def compile_graph(loaded: LoadedConfig, statcache: StatCache, store: Store | None = None, hubs: dict[str, ArmCallbacks] | None = None) -> tuple[Graph, list[ArmNodes]]:
    """Every arm's nodes in one graph; arms share the nodes they have in common (same key).
    `store` lets an arm with `num_epochs` learn its dataset size from a built tokenize node;
    `hubs` are the arms' callbacks, fed by the runners."""
    graph = Graph()
    hubs = hubs or {}
    return graph, [_compile_arm(graph, loaded, arm, statcache, store, hubs.get(arm.name)) for arm in loaded.arms]


def _compile_arm(graph: Graph, loaded: LoadedConfig, arm: Arm, statcache: StatCache, store: Store | None, hub: ArmCallbacks | None) -> ArmNodes:
    rows = graph.add(source_node(loaded, arm, statcache))
    for index in range(len(arm.config.transforms)):
        rows = graph.add(transform_node(arm, index, rows))
    with located(loaded, ("model", "name")):
        model_dir = resolve_model(arm.config.model.name, arm.config.model.revision)
    tokens = graph.add(tokenize_node(arm, rows, model_dir, statcache))
    resolved = resolve_epochs(arm, graph, tokens, store, data_where(loaded))
    if resolved is None:
        return ArmNodes(arm, rows, tokens, callbacks=hub)
    arm = resolved
    train = graph.add(train_node(arm, tokens, model_dir, statcache, hub, data_where(loaded)))
    checkpoints = {s: graph.add(checkpoint_node(train, s)) for s in stored_checkpoint_steps(arm)}
    attach_checkpoints(train, checkpoints)
    evals = [(bench, step, graph.add(node)) for bench, step, node in eval_nodes(loaded, arm, checkpoints, model_dir, statcache, hub)]
    report = graph.add(report_node(arm, train, evals))
    return ArmNodes(arm, rows, tokens, train, checkpoints, evals, report, hub)

