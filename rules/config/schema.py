"""The experiment config: pydantic models for every block, unknown keys rejected.

Each kind's `params` are validated afterwards by that kind's own Config class
(see config/loading.py: validate_kind_params), so errors name the exact dotted path and file:line.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BaseModel, Field


def _one_path_component(value: str) -> str:
    """Names that become folders or files (run_name, experiment, arms, benchmarks) never escape."""
    bad = (
        not value
        or value in (".", "..")
        or any(c in value for c in "/\\\0")
        or any(ord(c) < 32 for c in value)
        or value != value.strip()
        or len(value) > 100
    )
    if bad:
        raise ValueError("must be one plain name: no '/', '\\', '..', control characters or surrounding spaces, at most 100 characters")
    return value


SafeName = Annotated[str, AfterValidator(_one_path_component)]


class Strict(BaseModel, extra="forbid"):
    pass


class ExperimentInfo(Strict):
    name: SafeName
    hypothesis: str = ""


class DataConfig(Strict):
    source_kind: str = "jsonl"
    path: Optional[str] = None  # relative to the directory you run from, or absolute
    params: dict[str, Any] = Field(default_factory=dict)


class KindSpec(Strict):
    """A `{kind, params}` block: transforms, callbacks."""

    kind: str
    params: dict[str, Any] = Field(default_factory=dict)


class ModelConfig(Strict):
    name: str  # Hugging Face id, local directory, or evsys/tiny-qwen3
    revision: Optional[str] = None


class BackendConfig(Strict):
    kind: str = "local"
    params: dict[str, Any] = Field(default_factory=dict)


class AlgorithmConfig(Strict):
    kind: str = "sft"
    params: dict[str, Any] = Field(default_factory=dict)


class BenchmarkConfig(Strict):
    name: SafeName
    path: str  # a directory holding tasks.jsonl
    run_every: Optional[int] = Field(None, ge=1)  # steps; None = once, after training
    metrics: list[str] = Field(default_factory=lambda: ["pass@1"])  # pass@1, pass@k
    split: str = "val"  # a label that namespaces the metrics
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0)
    num_samples: int = Field(1, ge=1)  # completions per task (for pass@k)
    stop: list[str] = Field(default_factory=list)  # extra stop strings beyond end-of-turn
    system_prompt: Optional[str] = None  # None = the one the transforms gave training rows


class MetadataConfig(Strict):
    benchmark: list[BenchmarkConfig] = Field(default_factory=list)


class NodeResources(Strict):
    """What each node of one rule asks of a Ray cluster (`evsys build --executor ray`). Where a
    node runs never changes what it computes, so none of this is in a key."""

    num_cpus: Optional[float] = Field(None, ge=0)
    num_gpus: Optional[float] = Field(None, ge=0)
    resources: Optional[dict[str, float]] = None  # custom cluster resources, e.g. {a100: 1}
    max_retries: Optional[int] = Field(None, ge=-1)  # reruns after a lost worker or node; -1: no limit


ResourceRule = Literal["source", "transform", "tokenize", "train", "eval", "report"]


class ArmConfig(Strict):
    name: SafeName
    set: dict[str, Any] = Field(default_factory=dict)  # dotted path -> value


class ExperimentConfig(Strict):
    experiment: Optional[ExperimentInfo] = None
    run_name: Optional[SafeName] = None  # default: experiment.name, else the config file's stem
    output_dir: Optional[str] = None  # default: outputs/ beside the config file
    seed: int = 0
    plugins: list[str] = Field(default_factory=list)  # modules or .py paths
    data: DataConfig
    transforms: list[KindSpec] = Field(default_factory=list)
    model: ModelConfig
    backend: BackendConfig = Field(default_factory=BackendConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    metadata: MetadataConfig = Field(default_factory=MetadataConfig)
    callbacks: list[KindSpec] = Field(default_factory=list)
    resources: dict[ResourceRule, NodeResources] = Field(default_factory=dict)  # per rule, on a cluster
    arms: list[ArmConfig] = Field(default_factory=list)
    sweep: dict[str, list[Any]] = Field(default_factory=dict)  # dotted path -> values (a grid)


SupervisedSplit = Literal["train", "val", "test"]
