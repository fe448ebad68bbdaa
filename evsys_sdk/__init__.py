"""The public facade: what the walkthrough imports.

    from evsys_sdk import register_transform, Experiment, run_experiment
"""

from evsys_rules.plugins.registry import (
    register_algorithm,
    register_backend,
    register_callback,
    register_source,
    register_transform,
    register_verifier,
)


def __getattr__(name):  # Experiment pulls in more; load it only when asked for
    if name in ("Experiment", "run_experiment", "ExperimentResult"):
        from evsys_rules import experiment

        return getattr(experiment, name)
    raise AttributeError(name)


__all__ = [
    "Experiment",
    "ExperimentResult",
    "register_algorithm",
    "register_backend",
    "register_callback",
    "register_source",
    "register_transform",
    "register_verifier",
    "run_experiment",
]
