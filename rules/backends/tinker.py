"""The hosted `tinker` backend: registered here so configs validate offline.

Training on it needs the `tinker` SDK and TINKER_API_KEY (read from the environment, never
written anywhere). The hosted service is not reachable from this project's machines.
"""

from __future__ import annotations

import os
from typing import Optional

from pydantic import BaseModel

from evsys_build.errors import ConfigError

from ..plugins.registry import register_backend


class TinkerBackendConfig(BaseModel, extra="forbid"):
    base_url: Optional[str] = None  # None = the SDK's default service


@register_backend("tinker")
class TinkerBackend:
    """Hosted training and sampling through the Tinker SDK (ServiceClient)."""

    Config = TinkerBackendConfig

    def __init__(self, config: TinkerBackendConfig | dict | None = None):
        self.cfg = config if isinstance(config, TinkerBackendConfig) else self.Config(**(config or {}))

    def check_ready(self) -> None:
        """Fail before any work when the key or the SDK is missing."""
        if not os.environ.get("TINKER_API_KEY"):
            raise ConfigError("backend.kind: tinker needs TINKER_API_KEY in the environment (export TINKER_API_KEY=...), or use backend: {kind: local}")
        try:
            import tinker  # noqa: F401
        except ImportError:
            raise ConfigError("backend.kind: tinker needs the SDK: pip install 'evsys[tinker]'") from None

    def create_training_client(self, model_dir, lora_rank: int, seed: int):
        self.check_ready()
        raise ConfigError("backend.kind: tinker: training through the Tinker SDK is not available in this version; use backend: {kind: local}")

    def sampling_client_from_weights(self, model_dir, blobs: dict):
        self.check_ready()
        raise ConfigError("backend.kind: tinker: sampling through the Tinker SDK is not available in this version; use backend: {kind: local}")
