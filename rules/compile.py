"""Compile a loaded config into the DAG: source → transform* → tokenize → train (→ checkpoint@N)
→ eval per checkpoint × benchmark → report. This module only wires the node kinds of nodes/."""

from __future__ import annotations

from dataclasses import dataclass, field

from evsys_build.graph import Graph, Node
from evsys_build.statcache import StatCache
from evsys_build.store import Store

from .config.loading import Arm, LoadedConfig, config_spots, located
from .models.resolve import ResolvedModel, resolve
from .plugins import kinds
from .nodes.eval import eval_nodes
from .nodes.report import report_node
from .nodes.source import source_node
from .nodes.steps import data_where, resolve_epochs
from .nodes.tokenize import tokenize_node
from .nodes.train import attach_checkpoints, checkpoint_node, stored_checkpoint_steps, train_node
from .nodes.transform import transform_node
from .outputs.hub import ArmCallbacks, share_callbacks


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


def trains_by_name(arm: Arm) -> bool:
    """Whether the arm's backend trains its model by name on a service (tinker) that holds the weights."""
    return bool(getattr(kinds.backends.get(arm.config.backend.kind), "trains_by_name", False))


def model_need(arm: Arm) -> str:
    """What of the model must be here: its tokenizer only when the backend trains it by name on a
    service, else its weights too."""
    return "tokenizer" if trains_by_name(arm) else "model"


def compile_graph(loaded: LoadedConfig, statcache: StatCache, store: Store | None = None, hubs: dict[str, ArmCallbacks] | None = None) -> tuple[Graph, list[ArmNodes]]:
    """Every arm's nodes in one graph; arms share the nodes they have in common (same id).
    `store` lets an arm with `num_epochs` learn its dataset size from a built tokenize node;
    `hubs` are the arms' callbacks, fed by the runners."""
    graph = Graph()
    hubs = hubs or {}
    models: dict[tuple, ResolvedModel] = {}  # arms of a sweep share their model: resolve it once
    return graph, [_compile_arm(graph, loaded, arm, statcache, store, hubs.get(arm.name), models) for arm in loaded.arms]


def _compile_arm(graph: Graph, loaded: LoadedConfig, arm: Arm, statcache: StatCache, store: Store | None, hub: ArmCallbacks | None, models: dict) -> ArmNodes:
    def add(node: Node) -> Node:
        kept = graph.add(with_resources(node, arm))
        share_callbacks(kept, node)  # a shared node's runner feeds every arm's callbacks
        return kept

    rows = add(source_node(loaded, arm, statcache))
    for index in range(len(arm.config.transforms)):
        rows = add(transform_node(arm, index, rows, statcache))
    name, revision, by_name = arm.config.model.name, arm.config.model.revision, trains_by_name(arm)
    if (name, revision, by_name) not in models:
        with located(loaded, ("model", "name"), arm):
            models[(name, revision, by_name)] = resolve(name, revision, statcache, model_need(arm), by_name, str(loaded.path))
    model = models[(name, revision, by_name)]
    tokens = add(tokenize_node(arm, rows, model))
    resolved = resolve_epochs(arm, graph, tokens, store, data_where(loaded))
    if resolved is None:
        return ArmNodes(arm, rows, tokens, callbacks=hub)
    arm = resolved
    spots = config_spots(loaded, arm)  # where the train and eval nodes' backend settings are written
    train = add(train_node(arm, tokens, model, hub, data_where(loaded), spots))
    checkpoints = {s: graph.add(checkpoint_node(train, s, arm.name)) for s in stored_checkpoint_steps(arm)}
    attach_checkpoints(train, checkpoints)
    evals = [(bench, step, add(node)) for bench, step, node in eval_nodes(loaded, arm, checkpoints, model, statcache, hub, spots)]
    report = add(report_node(arm, train, evals))
    return ArmNodes(arm, rows, tokens, train, checkpoints, evals, report, hub)


def with_resources(node: Node, arm: Arm) -> Node:
    """The config's `resources.<rule>` over what the rule declares (a node shared by arms keeps
    the first arm's)."""
    override = arm.config.resources.get(node.rule)
    if override is not None:
        node.resources = {**node.resources, **override.model_dump(exclude_none=True)}
    return node
