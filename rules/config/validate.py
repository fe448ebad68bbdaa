"""`evsys validate [--deep]`: every check that needs no GPU and no network.

Without `--deep`: the config itself (schema, kinds, params, arms), and that the data files,
benchmark paths and a model folder it names exist (no row read).
`--deep` makes the checks the build would make, with the build's words (the same functions
raise them): the model name resolves (config file:line:col), every row is a usable conversation
after the transforms, tokenized as the build would with the model's tokenizer when it is on this
machine (streamed: deep_rows.py, deep_tokens.py), the dataset is not empty, and every benchmark
path is what its kind reads (config file:line:col) with well-formed tasks.
"""

from __future__ import annotations

from pathlib import Path

from evsys_build.errors import ConfigError

from ..compile import model_need
from ..data.tokenizer_snapshot import load_machine_tokenizer
from ..models.resolve import cached_snapshot, hub_model, local_model_folder, resolve_model
from ..models.tiny import TINY_MODEL_DIRNAME, TINY_MODEL_NAME, models_home, qwen_tokenizer_dir
from ..evals.stops import check_stops
from ..nodes.eval import benchmark_tasks, check_bench_path, check_heldout, check_samples
from ..nodes.steps import EMPTY_DATASET, data_where, steps_for_epochs
from ..nodes.tokenize import token_shaping
from ..plugins import kinds
from .deep_rows import check_rows
from .deep_tokens import RowTokenizer
from .loading import Arm, LoadedConfig, check_output_writable, check_source, check_source_files, load_config, located


def validate(config_path: Path, deep: bool = False) -> list[str]:
    """Raises ConfigError on the first mistake; returns informative lines when all is well."""
    loaded = load_config(config_path)
    check_output_writable(loaded)
    lines = [f"arms: {', '.join(a.name for a in loaded.arms)}"]
    for arm in loaded.arms:  # the config, and that the files it names are there: as `plan` checks them
        for i, bench in enumerate(arm.config.metadata.benchmark):
            if bench.kind != "nll":
                check_samples(loaded, i, bench, arm)
        _files_named(loaded, arm)
    if not deep:
        return lines
    seen: set[str] = set()
    for arm in loaded.arms:
        model_lines, tokenizer_dir = _deep_model(loaded, arm)
        lines += model_lines
        lines += _deep_data(loaded, arm, seen, tokenizer_dir)
        lines += _deep_benchmarks(loaded, arm, seen)
    return lines


def _files_named(loaded: LoadedConfig, arm: Arm) -> None:
    """The data files and model folder the config names exist, and each benchmark path is what its
    kind reads (stats and a glob: no row is read), each refused with the build's words at its config line."""
    if getattr(arm.params["data"], "path", None):  # a source of files (an `hf` dataset may download: --deep reads it)
        source = kinds.sources.get(arm.config.data.source_kind)(**arm.params["data"].model_dump())
        check_source(loaded, source, arm)
        check_source_files(loaded, source, source.files(), arm)
    for i, bench in enumerate(arm.config.metadata.benchmark):
        check_bench_path(loaded, i, bench, arm)  # in the words the build uses
    with located(loaded, ("model", "name"), arm):
        folder = local_model_folder(arm.config.model.name)
    if any(bench.stop for bench in arm.config.metadata.benchmark):
        tokenizer = folder if folder is not None else _known_tokenizer_folder(arm)
        for i, bench in enumerate(arm.config.metadata.benchmark):
            check_stops(loaded, i, bench, arm, tokenizer)


def _known_tokenizer_folder(arm: Arm) -> Path | None:
    """The tokenizer folder of a hub or tiny model when it is on this machine already (no download)."""
    name = arm.config.model.name
    if name == TINY_MODEL_NAME:
        return _tiny_tokenizer_dir()
    try:
        return cached_snapshot(name, arm.config.model.revision, "tokenizer")
    except Exception:  # noqa: BLE001 - not cached, or no hub library: the build checks it
        return None


def _tiny_tokenizer_dir() -> Path:
    """The tiny model's folder once built (whose tokenizer snapshot builds share), else the files it is built with."""
    built = models_home() / TINY_MODEL_DIRNAME
    return built if (built / "model.safetensors").is_file() else qwen_tokenizer_dir()


def _deep_model(loaded: LoadedConfig, arm: Arm) -> tuple[list[str], Path | None]:
    """The model name resolves as the build resolves it; returns the folder of its tokenizer
    (the tiny model's is the one it is built with; the model itself is not built here). A
    model a service trains by name needs only its tokenizer here, which `evsys fetch` (or the
    build, online) downloads: offline and not cached yet, that is a note, not an error, so the
    hosted walkthrough validates with no network (its rows are then checked without tokenizing)."""
    model, need = arm.config.model, model_need(arm)
    if model.name == TINY_MODEL_NAME:
        with located(loaded, ("model", "name"), arm):
            return [], _tiny_tokenizer_dir()
    if need == "tokenizer" and hub_model(model.name) and cached_snapshot(model.name, model.revision, need) is None:
        note = f"model {model.name}: its tokenizer is not in the local Hugging Face cache yet (not checked, rows not tokenized); `evsys fetch {loaded.path}` downloads it"
        return [note], None
    with located(loaded, ("model", "name"), arm):
        return [], resolve_model(model.name, model.revision, need, str(loaded.path))


def _row_tokenizer(loaded: LoadedConfig, arm: Arm, tokenizer_dir: Path | None) -> RowTokenizer | None:
    """The build's tokenizing of this arm's rows: its model's tokenizer and its algorithm's shaping params."""
    if tokenizer_dir is None:
        return None
    with located(loaded, ("model", "name"), arm):
        tok = load_machine_tokenizer(str(tokenizer_dir))
    return RowTokenizer(tok, **token_shaping(arm.params["algorithm"]))


def _deep_data(loaded: LoadedConfig, arm: Arm, seen: set[str], tokenizer_dir: Path | None) -> list[str]:
    source = kinds.sources.get(arm.config.data.source_kind)(**arm.params["data"].model_dump())
    check_source(loaded, source, arm)
    source_files = source.files()
    check_source_files(loaded, source, source_files, arm)
    algo = arm.params["algorithm"]
    recipe = repr((arm.config.data.model_dump(), [t.model_dump() for t in arm.config.transforms], token_shaping(algo), str(tokenizer_dir)))
    if recipe in seen:
        return []
    seen.add(recipe)
    tokenizer = _row_tokenizer(loaded, arm, tokenizer_dir)
    checked = check_rows(arm, source, tokenizer)
    if checked.rows == 0:
        raise ConfigError(f"{data_where(loaded)}: {EMPTY_DATASET}")
    files = ", ".join(str(f) for f in source_files)
    label = "" if len(loaded.arms) == 1 else f"[{arm.name}] "
    lines = [f"{label}data: {files}: {checked.source_rows} rows, {checked.rows} after the transforms"]
    if tokenizer is not None:
        lines.append(f"{label}tokens: {tokenizer.summary()}")
    per_step = getattr(algo, "batch_size", 0) * getattr(algo, "gradient_accumulation_steps", 1)
    if per_step > checked.rows:
        lines.append(f"{label}batch: {per_step} per step but {checked.rows} rows: each step is one pass over them, each row once")
    if getattr(algo, "num_epochs", None):
        steps = steps_for_epochs(checked.rows, algo.num_epochs, algo.batch_size, getattr(algo, "gradient_accumulation_steps", 1))
        lines.append(f"{label}num_epochs {algo.num_epochs:g} over {checked.rows} rows: max_steps {steps}")
    return lines


def _deep_benchmarks(loaded: LoadedConfig, arm: Arm, seen: set[str]) -> list[str]:
    out = []
    for i, bench in enumerate(arm.config.metadata.benchmark):
        if bench.kind == "nll":
            rows = check_heldout(loaded, i, bench, arm)
            if bench.path not in seen:
                seen.add(bench.path)
                out.append(f"benchmark {bench.name} ({bench.split}, nll): {bench.path}: {rows} rows")
            continue
        tasks = benchmark_tasks(loaded, i, bench, arm)  # metric names: checked by the schema
        check_samples(loaded, i, bench, arm)
        if bench.path not in seen:
            seen.add(bench.path)
            out.append(f"benchmark {bench.name} ({bench.split}): {bench.path}: {len(tasks)} tasks")
    return out


