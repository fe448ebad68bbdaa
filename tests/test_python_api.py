"""The Python API: a path, a dict, an ExperimentConfig or a loaded config; base_dir; a failed node
is `status: failed` with its error; every artifact opens (result.open, `evsys show`)."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

import pytest
import yaml

from evsys_build.errors import ConfigError, UsageError
from evsys_sdk import Experiment, ExperimentConfig, ExperimentResult, StoredArtifact, load_config, run_experiment
from evsys_testkit import copy_project, evsys, ok

FAILING_PLUGIN = '''\
from evsys_sdk import register_transform


@register_transform("explode")
class Explode:
    row_local = True

    def __init__(self, **kw):
        pass

    def __call__(self, rows):
        raise RuntimeError("boom in a plugin")
'''


@pytest.fixture(scope="module")
def project(built_project, tmp_path_factory) -> Path:
    """The session's built project (its store already holds every node), copied once for this module."""
    return copy_project(built_project, tmp_path_factory.mktemp("api") / "project")


def _raw(project: Path) -> dict:
    return yaml.safe_load((project / "config.yaml").read_text())


def test_a_dict_and_a_config_object_build_like_the_file(project, monkeypatch):
    monkeypatch.chdir(project)
    lines: list[str] = []
    by_dict = Experiment(_raw(project), cache_dir="cache", echo=lines.append).run()
    assert by_dict.status == "completed" and by_dict.error is None
    assert not [line for line in lines if line.startswith("ran ")]  # same keys as the YAML's build: all cached
    by_object = run_experiment(ExperimentConfig(**_raw(project)), cache_dir="cache", echo=lambda _: None)
    by_loaded = Experiment(load_config("config.yaml"), cache_dir="cache", echo=lambda _: None).run()
    assert by_dict.artifacts["checkpoint-final"] == by_object.artifacts["checkpoint-final"] == by_loaded.artifacts["checkpoint-final"]
    assert by_dict.run_id and by_dict.run_id != by_object.run_id


def test_relative_paths_resolve_against_base_dir(project, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # somewhere else: data/train.jsonl is not here
    with pytest.raises(ConfigError, match=r"data.path: no such file 'data/train.jsonl'"):
        Experiment(_raw(project), cache_dir=project / "cache").run()
    result = Experiment(_raw(project), cache_dir=project / "cache", base_dir=project, echo=lambda _: None).run()
    assert result.status == "completed"
    assert Path(result.artifacts["run_dir"]) == project.resolve() / "out" / "first_run"
    assert (project / "out" / "first_run" / "metrics.jsonl").is_file()


def test_config_mistakes_raise_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^<python config>: data: missing required field \(add it\)$"):
        Experiment({"model": {"name": "evsys/tiny-qwen3"}})
    with pytest.raises(ConfigError, match=r"not 'int'"):
        Experiment(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"no such config file"):
        Experiment(tmp_path / "missing.yaml")


def test_a_failed_node_is_status_failed_with_its_error(project, tmp_path, monkeypatch):
    monkeypatch.chdir(project)
    (tmp_path / "explode.py").write_text(FAILING_PLUGIN)
    raw = _raw(project)
    raw["plugins"] = [str(tmp_path / "explode.py")]
    raw["transforms"].append({"kind": "explode"})
    result = Experiment(raw, cache_dir="cache", echo=lambda _: None).run()
    assert result.status == "failed"
    assert "RuntimeError: boom in a plugin" in result.error and "transform[2] explode" in result.error
    assert "Traceback" in result.traceback
    run = ok(evsys("runs", "show", result.run_id, "--cache-dir", "cache", cwd=project)).stdout
    assert "(failed)" in run


def test_every_artifact_opens(project, monkeypatch):
    monkeypatch.chdir(project)
    result = Experiment("config.yaml", cache_dir="cache", echo=lambda _: None).run()
    assert list(result.artifacts) == ["run_dir", "checkpoint-final", "state-final", "metrics"]
    assert result.open("run_dir").is_dir() and result.open("metrics").is_file()
    checkpoint = result.open("checkpoint-final")
    assert isinstance(checkpoint, StoredArtifact) and checkpoint.rule == "checkpoint"
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(checkpoint.files())
    assert b'"peft_type"' in checkpoint.read("adapter_config.json")
    state = result.open("state-final")
    assert {"trainable.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"} == set(state.files())
    written = state.write(project / "state-out")
    assert sorted(p.name for p in written) == sorted(state.files()) and all(p.stat().st_size for p in written)
    for name in ("checkpoint-final", "state-final"):  # the CLI opens the same references
        shown = ok(evsys("show", result.artifacts[name], "--cache-dir", "cache", cwd=project)).stdout
        assert "checkpoint@1" in shown
    assert "output   state: 4 files" in ok(evsys("show", result.artifacts["state-final"], "--cache-dir", "cache", cwd=project)).stdout
    with pytest.raises(UsageError, match="no artifact 'nope'"):
        result.open("nope")


def test_the_api_is_typed_for_an_ide():
    hints = typing.get_type_hints(Experiment.__init__)
    assert {"config", "cache_dir", "echo", "base_dir"} <= set(hints)
    assert typing.get_type_hints(Experiment.run)["return"] is ExperimentResult
    for fn in (Experiment, Experiment.run, ExperimentResult.open, load_config, StoredArtifact.export):
        assert inspect.getdoc(fn), fn


def test_arms_and_sweeps_resolve_paths_against_base_dir_whether_they_set_a_path_or_a_block(project, tmp_path, monkeypatch):
    """An arm may set `data.path`, or the whole `data` block, or one benchmark, or the benchmark
    list: each path it names resolves against base_dir, never the working directory."""
    raw = _raw(project)
    raw["metadata"] = {"benchmark": [{"name": "val", "path": "val"}]}
    raw["arms"] = [
        {"name": "dotted", "set": {"data.path": "data/other.jsonl"}},
        {"name": "block", "set": {"data": {"source_kind": "jsonl", "path": "data/other.jsonl"}}},
        {"name": "one_bench", "set": {"metadata.benchmark.0": {"name": "val", "path": "val2"}}},
        {"name": "benches", "set": {"metadata.benchmark": [{"name": "val", "path": "val2"}]}},
        {"name": "params", "set": {"data": {"source_kind": "jsonl", "params": {"path": "data/other.jsonl"}}}},  # the path as a param, not beside data.path
    ]
    monkeypatch.chdir(tmp_path)
    loaded = load_config(_write(tmp_path / "elsewhere.yaml", raw), base_dir=project)
    arms = {arm.name: arm.config for arm in loaded.arms}
    base = project.resolve()
    for name in ("dotted", "block"):
        assert Path(arms[name].data.path) == base / "data" / "other.jsonl"
    for name in ("one_bench", "benches"):
        assert Path(arms[name].metadata.benchmark[0].path) == base / "val2"
    assert Path(arms["params"].data.params["path"]) == base / "data" / "other.jsonl"


def _write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_callbacks_path_params_resolve_against_base_dir_in_the_config_and_in_arms(project, tmp_path, monkeypatch):
    """A tracker's folder (`log_dir`, `dir`) is a path like data's: base_dir resolves it, whether
    the config, an arm's dotted override or an arm's whole callbacks block sets it."""
    pytest.importorskip("tensorboard")
    raw = _raw(project)
    raw["callbacks"] = [{"kind": "local_logger"}, {"kind": "tensorboard", "params": {"log_dir": "tb"}}]
    raw["arms"] = [
        {"name": "base"},
        {"name": "dotted", "set": {"callbacks.1.params.log_dir": "tb_dotted"}},
        {"name": "block", "set": {"callbacks": [{"kind": "tensorboard", "params": {"log_dir": "tb_block"}}]}},
    ]
    monkeypatch.chdir(tmp_path)
    loaded = load_config(_write(tmp_path / "elsewhere.yaml", raw), base_dir=project)
    log_dirs = {arm.name: [c.params.get("log_dir") for c in arm.config.callbacks if c.kind == "tensorboard"] for arm in loaded.arms}
    base = project.resolve()
    assert log_dirs == {"base": [str(base / "tb")], "dotted": [str(base / "tb_dotted")], "block": [str(base / "tb_block")]}
