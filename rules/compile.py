"""Compile a loaded config into the DAG: source → transform* → tokenize → train (→ checkpoint@N)
→ eval per checkpoint × benchmark → report. This module only wires the node kinds of nodes/."""

from __future__ import annotations

from dataclasses import dataclass, field

from evsys_build.graph import Graph, Node
from evsys_build.statcache import StatCache

from .config.loading import Arm, LoadedConfig
from .models.resolve import resolve_model
from .plugins import kinds
from .nodes.eval import eval_nodes
from .nodes.report import report_node
from .nodes.source import source_node
from .nodes.tokenize import tokenize_node
from .nodes.train import attach_checkpoints, checkpoint_node, stored_checkpoint_steps, train_node
from .nodes.transform import transform_node


@dataclass
class ArmNodes:
    """The nodes of one arm that later stages and the run dir need."""

    arm: Arm
    rows: Node
    tokenize: Node
    train: Node
    checkpoints: dict[int, Node] = field(default_factory=dict)
    evals: list[tuple] = field(default_factory=list)  # (benchmark, step, node)
    report: Node | None = None


def model_need(arm: Arm) -> str:
    """What of the model must be here: its tokenizer only when the backend trains it by name on a
    service (tinker), else its weights too."""
    return "tokenizer" if getattr(kinds.backends.get(arm.config.backend.kind), "trains_by_name", False) else "model"


def compile_graph(loaded: LoadedConfig, statcache: StatCache) -> tuple[Graph, list[ArmNodes]]:
    """Every arm's nodes in one graph; arms share the nodes they have in common (same key)."""
    graph = Graph()
    return graph, [_compile_arm(graph, loaded, arm, statcache) for arm in loaded.arms]


def _compile_arm(graph: Graph, loaded: LoadedConfig, arm: Arm, statcache: StatCache) -> ArmNodes:
    rows = graph.add(source_node(loaded, arm, statcache))
    for index in range(len(arm.config.transforms)):
        rows = graph.add(transform_node(arm, index, rows))
    model_dir = resolve_model(arm.config.model.name, arm.config.model.revision, model_need(arm), str(loaded.path))
    tokens = graph.add(tokenize_node(arm, rows, model_dir, statcache))
    train = graph.add(train_node(arm, tokens, model_dir, statcache))
    checkpoints = {s: graph.add(checkpoint_node(train, s)) for s in stored_checkpoint_steps(arm)}
    attach_checkpoints(train, checkpoints)
    evals = [(bench, step, graph.add(node)) for bench, step, node in eval_nodes(arm, checkpoints, model_dir, statcache)]
    report = graph.add(report_node(arm, train, evals))
    return ArmNodes(arm, rows, tokens, train, checkpoints, evals, report)
