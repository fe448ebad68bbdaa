"""The registries with every built-in kind registered. Import this, not the modules one by one.

The kinds most configs use are imported here; the others are `provide`d: their module (and the
libraries it reaches: the Tinker SDK's client, `datasets`, tensorboard or wandb) is imported only
when a config names the kind, so `plan` and a cached build of a local config never load them.
"""

from __future__ import annotations

from ..algorithms import sft  # noqa: F401  (registers the built-in algorithm)
from ..backends import local  # noqa: F401  (registers the local backend)
from ..data import sources as _sources, transforms as _transforms  # noqa: F401  (registers built-in file sources and transforms)
from ..evals import verifiers as _verifiers  # noqa: F401  (registers built-in verifiers)
from ..outputs import callbacks as _callbacks  # noqa: F401  (registers the local logger)
from .registry import algorithms, backends, callbacks, sources, transforms, verifiers  # noqa: F401

_PACKAGE = __package__.rsplit(".", 1)[0]  # evsys_rules

backends.provide("tinker", f"{_PACKAGE}.backends.tinker", "TinkerBackend")
sources.provide("hf", f"{_PACKAGE}.data.hf_source", "HFSource")
callbacks.provide("tensorboard", f"{_PACKAGE}.outputs.trackers", "TensorBoardLogger")
callbacks.provide("wandb", f"{_PACKAGE}.outputs.trackers", "WandbLogger")
