"""Load a config: YAML with marks (or a dict, or an ExperimentConfig) → plugins → pydantic models
→ per-kind params → arms.

A config file's relative paths resolve against the directory you run from; with `base_dir`
(the Python API) they resolve against that folder instead (config/paths.py).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ValidationError

from evsys_build.errors import ConfigError, UnknownKindError
from evsys_build.tree import files_under, first_existing

from ..plugins import kinds
from ..plugins.discover import plugin_hint
from ..plugins.loader import load_plugins
from .arms import arm_marks, arm_raws, marks_index
from .errors import config_error, dotted, where
from .paths import rebase_paths
from .schema import ExperimentConfig
from .yaml_marks import Marks, load_yaml_with_marks


@dataclass
class Arm:
    name: str
    config: ExperimentConfig
    params: dict = field(default_factory=dict)  # validated per-kind Config objects, by dotted block
    overrides: dict = field(default_factory=dict)  # dotted path -> value this arm sets over the base config
    marks: Marks = field(default_factory=dict)  # where each of its values is written (an override: in arms:/sweep:)


PYTHON_CONFIG = "<python config>"  # the `path` of a config given as a dict or an ExperimentConfig


@dataclass
class LoadedConfig:
    """A validated config: the models, every arm, and where each key was written (for errors)."""

    path: Path  # the config file, or PYTHON_CONFIG for a dict / ExperimentConfig
    raw: dict
    marks: Marks
    config: ExperimentConfig
    arms: list[Arm]
    text: str = ""  # the config as read (a run records it)
    base_dir: Path | None = None  # what relative paths were resolved against (None: the working directory)

    @property
    def from_python(self) -> bool:
        return self.path.name == PYTHON_CONFIG

    @property
    def experiment_name(self) -> str:
        if self.config.experiment:
            return self.config.experiment.name
        return self.config.run_name or ("experiment" if self.from_python else self.path.stem)

    @property
    def run_name(self) -> str:
        return self.config.run_name or self.experiment_name

    @property
    def output_dir(self) -> Path:
        if self.config.output_dir:
            return Path(self.config.output_dir)
        if self.from_python:
            return (self.base_dir or Path(".")) / "outputs"
        return self.path.parent / "outputs"


def load_config(path: Path | str, base_dir: Path | str | None = None) -> LoadedConfig:
    """Parse and validate a config file completely; any mistake is one ConfigError line.
    With `base_dir`, the file's relative paths (data, benchmarks, plugins, output_dir, a local
    model folder) resolve against it rather than the working directory."""
    path = Path(path)
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    raw, marks, text = load_yaml_with_marks(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}:1:1: the config must be a mapping of blocks (data, model, algorithm, ...)")
    return loaded_from_raw(raw, path, marks, text, base_dir)


def loaded_from_raw(raw: dict, path: Path, marks: Marks, text: str, base_dir: Path | str | None = None) -> LoadedConfig:
    """Validate a raw config (from YAML or Python): plugins, models, arms, each kind's params."""
    base = Path(base_dir).resolve() if base_dir is not None else None
    if base is not None:
        raw = rebase_paths(raw, base)
    load_plugins(raw.get("plugins") or [], path, marks)
    if base is not None:
        raw = rebase_paths(raw, base)  # again: a plugin source may name more path params
    config = validate_model(ExperimentConfig, raw, path, marks, ())
    arms = []
    index = marks_index(marks)
    for name, arm_raw, overrides, at in arm_raws(raw, config, path, marks):
        own_marks = arm_marks(marks, overrides, at, index)
        arms.append(Arm(name, validate_model(ExperimentConfig, arm_raw, path, own_marks, ()), {}, overrides, own_marks))
    for arm in arms:
        arm.params = validate_kind_params(arm.config, path, arm.marks)
    loaded = LoadedConfig(path, raw, marks, config, arms, text, base)
    for arm in arms:
        check_benchmark_names(loaded, arm)
    check_output_dir(loaded)
    return loaded


def check_benchmark_names(loaded: LoadedConfig, arm: Arm) -> None:
    """Benchmark names are unique: they name the eval nodes, metrics and prediction files."""
    names = [b.name for b in arm.config.metadata.benchmark]
    for i, name in enumerate(names):
        if name in names[:i]:
            with located(loaded, ("metadata", "benchmark", i, "name"), arm):
                raise ConfigError(f"metadata.benchmark: two benchmarks are named {name!r} (names must be unique)")


def check_output_dir(loaded: LoadedConfig) -> None:
    """The run dir can be a folder: nothing on its way there is a file."""
    folder = loaded.output_dir / loaded.run_name
    part = first_existing(folder)
    if not part.is_dir():
        with located(loaded, ("output_dir",) if loaded.config.output_dir else ("run_name",)):
            raise ConfigError(f"output_dir: {part} is a file, so the run dir {folder} cannot be written there; choose another output_dir")


def check_output_writable(loaded: LoadedConfig) -> None:
    """This user can make the run dir: output_dir, or the nearest folder above it that exists,
    is writable (checked before a build trains, not when it writes the run dir at the end;
    `plan` and `show` do not ask it)."""
    base = first_existing(loaded.output_dir)
    if base.is_dir() and not os.access(base, os.W_OK | os.X_OK):
        with located(loaded, ("output_dir",) if loaded.config.output_dir else ("run_name",)):
            raise ConfigError(f"output_dir: this user (uid {os.getuid()}) cannot write {base}, where the run dir {loaded.output_dir / loaded.run_name} is made; choose another output_dir or let this user write there")


def check_source(loaded: LoadedConfig, source, arm: Arm | None = None) -> None:
    """The source's own file checks, with the error pointed at `data.path` in the config."""
    with located(loaded, ("data", "path"), arm):
        source.check()


def check_source_files(loaded: LoadedConfig, source, files: list, arm: Arm | None = None) -> None:
    """The files the source reads (`source.files()`, as the caller got them) take in no
    benchmark's file; the error points at `data.path` (at `data.params` for a source kind that
    names its files there)."""
    named = getattr(getattr(source, "cfg", None), "path", None)
    with located(loaded, ("data", "path") if named else ("data", "params"), arm):
        refuse_benchmark_files(named, files, arm.config if arm is not None else loaded.config)


def refuse_benchmark_files(named, files: list, config: ExperimentConfig) -> None:
    """A folder or glob given as data.path must not sweep up a benchmark's own file (a val/ or
    test/ folder beside the training rows): the model would be scored on rows it trained on. A
    file data.path names itself is taken as meant; a source kind that reads files of its own
    choosing (no data.path) is checked on every file it reads."""
    scored = {}
    for bench in config.metadata.benchmark:
        where = Path(bench.path)
        for file in ([where] if where.is_file() else files_under(where) if where.is_dir() else []):
            scored[file.resolve()] = bench.name
    if not scored:
        return
    meant = Path(named).resolve() if named else None
    for file in files:
        resolved = Path(file).resolve()
        bench = scored.get(resolved)
        if bench is None or resolved == meant:
            continue
        if named:
            raise ConfigError(f"data.path: {named!r} takes in {file}, which benchmark {bench} scores: the model would be evaluated on rows it "
                              "trained on; point data.path at the training rows only (or name that file itself if you mean it)")
        raise ConfigError(f"data: the source reads {file}, which benchmark {bench} scores: the model would be evaluated on rows it "
                          "trained on; give the source the training rows only")


@contextlib.contextmanager
def located(loaded: LoadedConfig, at: tuple, arm: Arm | None = None):
    """Prefix a ConfigError raised inside with the config's `file:line:col` of `at` (as `arm`
    has it: a value an arm sets is where the arm sets it), so a check made while validating and
    the same check made while compiling say exactly the same line."""
    try:
        yield
    except ConfigError as exc:
        raise ConfigError(f"{where(loaded.path, marks_of(loaded, arm), at)}: {exc.message}") from None


def marks_of(loaded: LoadedConfig, arm: Arm | None) -> Marks:
    """Where each value is written as `arm` has it (its overrides at the arm's lines), else the base config's."""
    return arm.marks if arm is not None and arm.marks else loaded.marks


def config_spots(loaded: LoadedConfig, arm: Arm) -> dict[str, str]:
    """`file:line:col` of every model, backend and algorithm setting as `arm` has it, by dotted
    path: a node that checks them only when it runs (a backend's device or service) says where."""
    marks = marks_of(loaded, arm)
    paths = [("model", "name"), ("model", "revision"), ("backend", "kind"), ("algorithm", "kind")]
    for block in ("backend", "algorithm"):
        params = arm.params.get(block)
        paths += [(block, "params", name) for name in (type(params).model_fields if isinstance(params, BaseModel) else ())]
    return {dotted(p): where(loaded.path, marks, p) for p in paths}


@contextlib.contextmanager
def located_by(spots: dict[str, str] | None):
    """Prefix a ConfigError raised inside that opens with one of `spots`' dotted paths
    (`backend.params.compile: ...`) with that setting's `file:line:col`."""
    try:
        yield
    except ConfigError as exc:
        named = exc.message.split(":", 1)[0]
        if not spots or named not in spots:
            raise
        raise ConfigError(f"{spots[named]}: {exc.message}") from None


def validate_model(model: type[BaseModel], data, path: Path, marks: Marks, prefix: tuple):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, model, path, marks, prefix) from None


def validate_kind_params(config: ExperimentConfig, path: Path, marks: Marks) -> dict:
    """Instantiate every `{kind, params}` block's own Config class; returns them by dotted block."""
    out = {}
    blocks = [(("data",), kinds.sources, config.data.source_kind, _source_params(config))]
    blocks += [(("transforms", i), kinds.transforms, t.kind, t.params) for i, t in enumerate(config.transforms)]
    blocks.append((("backend",), kinds.backends, config.backend.kind, config.backend.params))
    blocks.append((("algorithm",), kinds.algorithms, config.algorithm.kind, config.algorithm.params))
    blocks += [(("callbacks", i), kinds.callbacks, c.kind, c.params) for i, c in enumerate(config.callbacks)]
    for block, registry, kind, params in blocks:
        kind_path = block + (("source_kind",) if block == ("data",) else ("kind",))
        try:
            impl = registry.get(kind, where=f"{where(path, marks, kind_path)}: {dotted(kind_path)}")
        except UnknownKindError as exc:
            raise UnknownKindError(exc.message + plugin_hint(registry.kind, str(kind), path, "did you mean" in exc.message)) from None
        cfg_cls = getattr(impl, "Config", None)
        if cfg_cls is None:
            out[dotted(block)] = None
            continue
        prefix = block if block == ("data",) else block + ("params",)
        out[dotted(block)] = validate_model(cfg_cls, params, path, marks, prefix)
    return out


def _source_params(config: ExperimentConfig) -> dict:
    params = dict(config.data.params)
    if config.data.path is not None:
        params["path"] = config.data.path
    return params
