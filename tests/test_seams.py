"""The typed seams: the rules' frontend against the engine's Protocols, and backends checked at registration."""

from __future__ import annotations

import inspect

import pytest

from evsys_build.errors import PluginError
from evsys_build.project import Frontend, Project, frontend


def _params(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


def _check_against(obj, protocol) -> None:
    assert isinstance(obj, protocol)
    for name, member in vars(protocol).items():
        if inspect.isfunction(member) and not name.startswith("_"):
            assert _params(getattr(obj, name)) == _params(member), name


def test_the_rules_frontend_implements_the_engine_protocol():
    module = frontend()
    assert module.__name__ == "evsys_rules.frontend"
    _check_against(module, Frontend)


def test_an_opened_project_implements_the_project_protocol(built_project, monkeypatch):
    from evsys_build.store import Store

    monkeypatch.chdir(built_project)
    project = frontend().open_project(built_project / "config.yaml", Store(built_project / "cache"))
    _check_against(project, Project)
    assert project.arm_names == ["default"] and project.experiment == "evsys_test"


def test_a_backend_missing_a_method_is_refused_when_it_registers():
    from evsys_rules.plugins.registry import Registry
    from evsys_rules.backends.base import Backend

    registry = Registry("backend", protocol=Backend)

    class HalfBackend:
        def create_training_client(self, model_dir, lora_rank, seed): ...

    with pytest.raises(PluginError, match=r"does not implement the Backend protocol: no method sampling_client_from_weights\(model_dir, blobs\)"):
        registry.register("half")(HalfBackend)

    class WrongSignature(HalfBackend):
        def sampling_client_from_weights(self, weights): ...

    with pytest.raises(PluginError, match=r"sampling_client_from_weights\(\) does not take model_dir, blobs"):
        registry.register("wrong")(WrongSignature)
    assert "half" not in registry and "wrong" not in registry


def test_every_built_in_backend_passes_the_check():
    from evsys_rules.plugins import kinds

    assert {"local", "tinker"} <= set(kinds.backends.names())
