"""The registries with every built-in kind registered. Import this, not the modules one by one."""

from __future__ import annotations

from ..algorithms import sft  # noqa: F401  (registers the built-in algorithm)
from ..backends import local, tinker  # noqa: F401  (registers the built-in backends)
from ..data import hf_source as _hf_source, sources as _sources, transforms as _transforms  # noqa: F401  (registers built-in sources and transforms)
from ..evals import verifiers as _verifiers  # noqa: F401  (registers built-in verifiers)
from ..outputs import callbacks as _callbacks, trackers as _trackers  # noqa: F401  (registers built-in callbacks)
from .registry import algorithms, backends, callbacks, sources, transforms, verifiers  # noqa: F401
