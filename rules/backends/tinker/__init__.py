"""The `tinker` backend: training and sampling on Tinker, or any server that speaks its API
(TuFT, SkyRL tx), through the `tinker` SDK.

`backend.params.base_url` picks the service (default: the SDK's, i.e. TINKER_BASE_URL or hosted
Tinker); the key comes from TINKER_API_KEY (or `tinker auth login`'s stored key) and is never
written anywhere. The service trains the base model by name, so the train key holds the name,
the backend kind and the service.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from pydantic import BaseModel

from evsys_build.errors import ConfigError

from ...plugins.registry import register_backend
from .training import SAMPLER_FILE, TinkerTrainingClient


class TinkerBackendConfig(BaseModel, extra="forbid"):
    base_url: Optional[str] = None  # None = the SDK's default: TINKER_BASE_URL, else hosted Tinker
    download_weights: bool = True  # store the adapter's files locally where the service exports them


@register_backend("tinker")
class TinkerBackend:
    """Hosted (or self-hosted) training and sampling through the Tinker SDK."""

    Config = TinkerBackendConfig
    trains_by_name = True  # the service holds the weights: keys use the base model's name
    libraries = ("tinker",)
    sampling_only_params = ("download_weights",)  # what is stored locally, not what is trained

    @staticmethod
    def resolve(config: TinkerBackendConfig) -> TinkerBackendConfig:
        """The service made explicit (TINKER_BASE_URL when base_url is unset), so checkpoints of
        different services never share a key; hosted Tinker stays None."""
        url = config.base_url or os.environ.get("TINKER_BASE_URL") or None
        return config.model_copy(update={"base_url": url.rstrip("/") if url else None})

    def __init__(self, config: TinkerBackendConfig | dict | None = None):
        self.cfg = config if isinstance(config, TinkerBackendConfig) else self.Config(**(config or {}))

    def check_ready(self, base_model: Optional[str] = None, lora_rank: Optional[int] = None, max_length: Optional[int] = None) -> None:
        """Fail before any work: no key, no SDK, a key the service rejects, a base model it does
        not offer (or not for training and sampling, or not at `max_length` tokens), or a full
        fine-tune (Tinker trains LoRA adapters)."""
        if lora_rank == 0:
            raise ConfigError("algorithm.params.lora_rank: 0 (full fine-tune) is not available on backend tinker, which trains LoRA adapters; set lora_rank >= 1")
        from .credentials import api_key
        from .service import check_base_model, import_tinker

        import_tinker()
        api_key()  # TINKER_API_KEY, else the key `tinker auth login` stored (read through the SDK)
        if base_model is not None:
            check_base_model(base_model, self.cfg.base_url, max_length)

    def create_training_client(self, model_dir, lora_rank: int, seed: int, base_model: Optional[str] = None) -> TinkerTrainingClient:
        """A training client for `base_model` (the config's model.name); the service creates the
        model on first use, or from a saved state when the loop resumes."""
        if base_model is None:
            raise ConfigError("backend tinker: create_training_client needs the base model's name")
        return TinkerTrainingClient(base_model, lora_rank, seed, self.cfg.base_url, self.cfg.download_weights)

    def sampling_client_from_weights(self, model_dir: Path, blobs: dict[str, bytes]):
        """A sampler for a checkpoint's sampler weights on the service (its tinker:// path)."""
        from .sampling import TinkerSamplingClient
        from .service import call, service_client

        if SAMPLER_FILE not in blobs:
            raise ConfigError("backend tinker: this checkpoint was not trained on Tinker (no sampler path); evaluate it with its own backend")
        path = json.loads(blobs[SAMPLER_FILE])["path"]
        sc = service_client(self.cfg.base_url)
        sampler = call(lambda: sc.create_sampling_client(model_path=path).result(), f"creating a sampler for {path}", self.cfg.base_url)
        return TinkerSamplingClient(sampler, self.cfg.base_url)

    def score_from_weights(self, model_dir: Path, blobs: dict[str, bytes], datums) -> list[tuple[float, float]]:
        """Per datum, (sum of -logprob × weight, sum of weights) under a checkpoint's sampler
        weights on the service: what a held-out loss benchmark averages."""
        return self.sampling_client_from_weights(model_dir, blobs).score(datums)

    @staticmethod
    def missing_remote(paths: list[str], service: dict) -> Optional[dict[str, str]]:
        """{path: why} for the paths the service no longer has; None when it cannot be asked."""
        from .remote import missing_paths

        return missing_paths(paths, service.get("base_url"))

    def service(self) -> dict:
        """Where this backend's remote references live (recorded beside them in manifests)."""
        return {"backend": "tinker", "base_url": self.cfg.base_url}
