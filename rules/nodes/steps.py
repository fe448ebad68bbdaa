"""`num_epochs`: a training length given in passes over the data, turned into `max_steps`.

The step count needs the number of training rows, known only once the data is tokenized, while
the graph needs it earlier (which checkpoints exist, which steps are evaluated). So an arm with
`num_epochs` compiles in two stages: until its tokenize node is stored, the graph ends at
tokenize (the project is `incomplete`; `plan` says so); `evsys build` builds the data, then
compiles the rest with

    max_steps = ceil(rows × num_epochs / (batch_size × gradient_accumulation_steps))

The resolved `max_steps` (not `num_epochs`) goes into the train key: a training is what it
computes, so `num_epochs: 2` over 200 rows in batches of 8 and `max_steps: 50` share one key,
and adding rows (a different tokenize output) changes the step count and so the key.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

from evsys_build.errors import ConfigError
from evsys_build.graph import Graph, Node
from evsys_build.planner import resolve_keys
from evsys_build.store import Store

from ..config.errors import where
from ..config.loading import Arm
from .views import TokenDataset

EMPTY_DATASET = "no training rows left after the transforms; check data.path and the transforms that drop rows (filter, sample, dedup)"


def steps_for_epochs(num_rows: int, num_epochs: float, batch_size: int, accumulation: int = 1) -> int:
    """Optimizer steps that cover `num_epochs` passes over `num_rows` rows (the last batch filled
    from the next epoch, as every batch is; a step's batch is at most the rows there are). Exact
    arithmetic on the decimal the config gives: in binary floats 100 rows × 1.1 epochs is
    110.00000000000001, one step too many at batch 10."""
    epochs = Fraction(str(num_epochs))  # str(): the shortest decimal that is this float, as written
    return max(1, math.ceil(num_rows * epochs / min(batch_size * accumulation, max(1, num_rows))))


def resolve_epochs(arm: Arm, graph: Graph, tokens: Node, store: Store | None, data_where: str) -> Arm | None:
    """The arm with `max_steps` resolved from `num_epochs` (unchanged without it); None while its
    tokenize node is not stored yet."""
    algo = arm.params.get("algorithm")
    epochs = getattr(algo, "num_epochs", None)
    if epochs is None:
        return arm
    manifest = resolve_keys(store, graph).get(tokens.id) if store is not None else None
    if manifest is None:
        return None
    rows = TokenDataset.of(manifest).num_rows
    if rows == 0:
        raise ConfigError(f"{data_where}: {EMPTY_DATASET}")
    steps = steps_for_epochs(rows, epochs, algo.batch_size, getattr(algo, "gradient_accumulation_steps", 1))
    resolved = algo.model_copy(update={"max_steps": steps, "num_epochs": None})
    return dataclasses.replace(arm, params={**arm.params, "algorithm": resolved})


def data_where(loaded) -> str:
    """`file:line:col` of what decides which rows train (the last transform, else the data block):
    where an empty dataset is reported, by `validate --deep` and by the build alike."""
    transforms = loaded.config.transforms
    at = ("transforms", len(transforms) - 1) if transforms else ("data",)
    return where(loaded.path, loaded.marks, at)
