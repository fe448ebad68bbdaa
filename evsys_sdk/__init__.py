"""The public facade: what user code imports.

    from evsys_sdk import register_transform, Experiment, run_experiment, load_config, ExperimentConfig
"""

from typing import TYPE_CHECKING

from evsys_rules.plugins.registry import (
    register_algorithm,
    register_backend,
    register_callback,
    register_source,
    register_transform,
    register_verifier,
)


_LAZY = {  # these pull in more; load them only when asked for
    "Experiment": "evsys_rules.experiment",
    "ExperimentResult": "evsys_rules.experiment",
    "run_experiment": "evsys_rules.experiment",
    "StoredArtifact": "evsys_rules.outputs.artifacts",
    "load_config": "evsys_rules.config.loading",
    "LoadedConfig": "evsys_rules.config.loading",
    "ExperimentConfig": "evsys_rules.config.schema",
    "ConfigError": "evsys_build.errors",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)


if TYPE_CHECKING:  # for type checkers and IDEs: the lazy names above, typed
    from evsys_build.errors import ConfigError  # noqa: F401
    from evsys_rules.config.loading import LoadedConfig, load_config  # noqa: F401
    from evsys_rules.config.schema import ExperimentConfig  # noqa: F401
    from evsys_rules.experiment import Experiment, ExperimentResult, run_experiment  # noqa: F401
    from evsys_rules.outputs.artifacts import StoredArtifact  # noqa: F401


__all__ = [
    "ConfigError",
    "Experiment",
    "ExperimentConfig",
    "ExperimentResult",
    "LoadedConfig",
    "StoredArtifact",
    "load_config",
    "register_algorithm",
    "register_backend",
    "register_callback",
    "register_source",
    "register_transform",
    "register_verifier",
    "run_experiment",
]
