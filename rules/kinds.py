"""The registries with every built-in kind registered. Import this, not the modules one by one."""

from __future__ import annotations

from . import data_sources, data_transforms, verifiers  # noqa: F401  (registers built-ins)
from .algorithms import sft  # noqa: F401
from .backends import local, tinker_backend  # noqa: F401
from . import callbacks as _callbacks  # noqa: F401
from .registry import algorithms, backends, callbacks, sources, transforms  # noqa: F401
