"""The experiment config: pydantic models for every block, unknown keys rejected.

Each kind's `params` are validated afterwards by that kind's own Config class
(see config/loading.py: validate_kind_params), so errors name the exact dotted path and file:line.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, Field, field_validator, model_validator

from .numbers import refuse_booleans_for_numbers


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


class Strict(BaseModel, extra="forbid", allow_inf_nan=False):
    """Unknown keys are errors; so are .inf, .nan and true/false where a number is asked for."""

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_numbers(cls, value, info):
        return refuse_booleans_for_numbers(cls, value, info)


class ExperimentInfo(Strict):
    """What the experiment is: its name groups runs in the store; the hypothesis heads experiment.md."""

    name: SafeName  # the experiment's name: runs, refs and `evsys runs EXPERIMENT` group by it
    hypothesis: str = ""  # what the arms test; written at the top of experiment.md


class DataConfig(Strict):
    """Where the training rows come from: a source kind and its params."""

    source_kind: str = "jsonl"  # a source kind (below, or a plugin's)
    path: Optional[str] = None  # relative to the directory you run from, or absolute
    params: dict[str, Any] = Field(default_factory=dict)  # the source kind's params (see its section below)

    @field_validator("params")
    @classmethod
    def _path_given_once(cls, params: dict, info):
        """data.path would win over data.params.path without a word: the rows read would not be the ones named."""
        if info.data.get("path") is not None and "path" in params:
            raise ValueError(f"path given twice, as data.path {info.data['path']!r} and data.params.path {params['path']!r}; keep one")
        return params


class KindSpec(Strict):
    """A `{kind, params}` block: transforms, callbacks."""

    kind: str  # a transform or callback kind (below, or a plugin's)
    params: dict[str, Any] = Field(default_factory=dict)  # that kind's params


class ModelConfig(Strict):
    """The base model: its weights and config go into the train key, its tokenizer files into tokenize's."""

    name: str  # Hugging Face id, local directory, or evsys/tiny-qwen3
    revision: Optional[str] = None  # a hub revision (branch, tag or commit) of a hub id


class BackendConfig(Strict):
    """Where training and sampling run."""

    kind: str = "local"  # local (this machine) or tinker (hosted), or a plugin's
    params: dict[str, Any] = Field(default_factory=dict)  # the backend kind's params


class AlgorithmConfig(Strict):
    """How the model is trained."""

    kind: str = "sft"  # sft, or a plugin's
    params: dict[str, Any] = Field(default_factory=dict)  # the algorithm kind's params


class BenchmarkConfig(Strict):
    """A benchmark scored at checkpoints: tasks sampled and verified, or held-out loss on chat rows."""

    name: SafeName  # names the eval nodes (`eval <name>@<step>`), the metrics and predictions/<name>.jsonl
    kind: Literal["tasks", "nll"] = "tasks"  # tasks: sample and verify; nll: held-out loss (mean NLL per loss token) on chat rows
    path: str  # tasks: a directory holding tasks.jsonl; nll: a JSONL file of chat rows ({"messages": [...]})
    run_every: Optional[int] = Field(None, ge=1)  # steps; None = once, after training
    metrics: list[str] = Field(default_factory=lambda: ["pass@1"])  # tasks: pass@1, pass@k; nll: nll (set for you)
    split: str = "val"  # a label that namespaces the metrics
    max_tokens: int = Field(256, ge=1)  # tokens generated per completion
    temperature: float = Field(0.0, ge=0)  # 0 = greedy
    num_samples: int = Field(1, ge=1)  # completions per task (for pass@k)
    stop: list[str] = Field(default_factory=list)  # extra stop strings beyond end-of-turn; a special token alone (<|im_start|>) ends generation at that token
    system_prompt: Optional[str] = None  # None = jsonl_to_chat's system_prompt; "" = an empty system turn, as a transform's "" trains
    chat_template_kwargs: dict[str, Union[str, int, float, bool, None]] = Field(default_factory=dict)  # tasks: arguments for the chat template as it renders each prompt, e.g. {enable_thinking: true} lets a Qwen3 model think first (default: enable_thinking false, the empty think block training renders before a reply without reasoning)
    supervise: Optional[Literal["all_assistant", "last_assistant", "all"]] = None  # nll: the turns scored; None = algorithm.params.supervise (set it to compare arms that train on different turns)
    max_length: Optional[int] = Field(None, ge=8)  # nll: tokens kept per row; None = algorithm.params.max_length

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, metrics: list[str]) -> list[str]:
        for metric in metrics:
            if metric != "nll" and not (re.fullmatch(r"pass@[1-9][0-9]*", metric)):
                raise ValueError(f"unknown metric {metric!r} (use pass@1 or pass@k)")
        return metrics

    @model_validator(mode="after")
    def _metrics_of_kind(self):
        if self.kind == "nll":
            if "metrics" in self.model_fields_set and self.metrics != ["nll"]:
                raise ValueError("a kind: nll benchmark scores only nll (remove metrics, or write [nll])")
            if self.chat_template_kwargs:
                raise ValueError("chat_template_kwargs: a kind: nll benchmark renders rows as training does (it samples no prompt); remove it")
            self.metrics = ["nll"]
            return self
        if "nll" in self.metrics:
            raise ValueError("nll is the metric of kind: nll benchmarks (held-out loss); a tasks benchmark scores pass@k")
        shaping = sorted({"supervise", "max_length"} & {k for k in self.model_fields_set if getattr(self, k) is not None})
        if shaping:
            raise ValueError(f"{', '.join(shaping)}: only a kind: nll benchmark has it (the tokens its loss is scored on)")
        return self  # k <= num_samples is checked per arm (nodes/eval.py check_samples, when compiling): an arm may set either


class MetadataConfig(Strict):
    """What the checkpoints are scored on."""

    benchmark: list[BenchmarkConfig] = Field(default_factory=list)  # the benchmarks (below)


class NodeResources(Strict):
    """What each node of one rule asks of a Ray cluster (`evsys build --executor ray`). Where a
    node runs never changes what it computes, so none of this is in a key."""

    num_cpus: Optional[float] = Field(None, ge=0)
    num_gpus: Optional[float] = Field(None, ge=0)
    resources: Optional[dict[str, float]] = None  # custom cluster resources, e.g. {a100: 1}
    max_retries: Optional[int] = Field(None, ge=-1)  # reruns after a lost worker or node; -1: no limit


ResourceRule = Literal["source", "transform", "tokenize", "train", "eval", "report"]


class ArmConfig(Strict):
    """One arm: the base config with some values set (docs/sweeps.md)."""

    name: SafeName  # the arm's name: its run dir folder and the label of its nodes
    set: dict[str, Any] = Field(default_factory=dict)  # dotted path -> value


class ExperimentConfig(Strict):
    """A whole experiment config (what a YAML file holds; `ExperimentConfig(...)` builds one in Python)."""

    experiment: Optional[ExperimentInfo] = None  # name and hypothesis
    run_name: Optional[SafeName] = None  # default: experiment.name, else the config file's stem
    output_dir: Optional[str] = None  # default: outputs/ beside the config file
    seed: int = Field(0, ge=0, lt=2**63)  # training's RNG (data order, LoRA init) and seeded transforms' default
    plugins: list[str] = Field(default_factory=list)  # modules or .py paths
    data: DataConfig  # the training rows' source
    transforms: list[KindSpec] = Field(default_factory=list)  # rows -> rows steps, in order
    model: ModelConfig  # the base model
    backend: BackendConfig = Field(default_factory=BackendConfig)  # where it trains and samples
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)  # how it trains
    metadata: MetadataConfig = Field(default_factory=MetadataConfig)  # benchmarks
    callbacks: list[KindSpec] = Field(default_factory=list)  # observers: loggers, trackers (never in a key)
    resources: dict[ResourceRule, NodeResources] = Field(default_factory=dict)  # per rule, on a cluster (docs/scale-out.md)
    arms: list[ArmConfig] = Field(default_factory=list)  # named variants of this config (docs/sweeps.md)
    sweep: dict[str, list[Any]] = Field(default_factory=dict)  # dotted path -> values (a grid)


SupervisedSplit = Literal["train", "val", "test"]
