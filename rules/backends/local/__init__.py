"""The `local` backend: torch + transformers + peft on CPU or one CUDA GPU.

Speed path of `forward_backward` (training.py, kernels.py):
- padding-free packing: a micro-batch is one row of concatenated sequences, position_ids restart per
  sequence, and the registered `evsys_packed` attention never crosses a sequence boundary (CUDA:
  torch's varlen flash attention on `cu_seq_lens`; otherwise per-sequence SDPA, exact and mask-free);
- the LM head runs only at positions with nonzero weight, in chunks, through a fused linear +
  weighted-NLL autograd function that forms each chunk's gradient right away, so no logits outlive
  their chunk and none are recomputed (softmax in fp32);
- fused AdamW (one pass per tensor).
Precision: `dtype=bfloat16` computes in bf16 under autocast; trainable weights and AdamW state stay
fp32 (LoRA: frozen base in bf16, adapters fp32). Sampling is in sampling.py. torch is imported
inside functions only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from ...plugins.registry import register_backend
from ..base import Datum
from .config import LocalBackendConfig, resolve_precision
from .model_io import WEIGHTS_META, bytes_to_tensors, global_rng_lock, load_model, lora_config, pick_device, pick_dtype, with_lora
from .sampling import LocalSamplingClient, pad_id
from .scoring import score_datums
from .training import LocalTrainingClient

__all__ = ["LocalBackend", "LocalBackendConfig", "LocalTrainingClient", "LocalSamplingClient"]


@register_backend("local")
class LocalBackend:
    """Backend factory: training clients and samplers on this machine."""

    Config = LocalBackendConfig
    sampling_only_params = ("sample_batch_size", "decode_cache")  # not part of the train key (the eval key has them)
    training_only_params = ("max_tokens_per_pass", "loss_chunk_tokens", "gradient_checkpointing", "compile")  # not part of the eval key (the train key has them)
    libraries = ("torch", "transformers", "peft", "safetensors")  # their versions are in the train and eval keys

    @staticmethod
    def resolve(config: LocalBackendConfig) -> LocalBackendConfig:
        """The config with `auto` precision made explicit (what the train key and the run use)."""
        return resolve_precision(config)

    def __init__(self, config: Optional[LocalBackendConfig | dict] = None):
        if config is None:
            config = LocalBackendConfig()
        elif isinstance(config, dict):
            config = LocalBackendConfig(**config)
        self.config = config

    def node_resources(self) -> dict:
        """On a cluster, a node training or sampling on CUDA asks for one GPU."""
        return {"num_gpus": 1} if self.config.device == "cuda" else {}

    def create_training_client(self, model_dir: Path, lora_rank: int, seed: int) -> LocalTrainingClient:
        return LocalTrainingClient(Path(model_dir), lora_rank, seed, self.config)

    def sampling_client_from_weights(self, model_dir: Path, blobs: dict[str, bytes]) -> LocalSamplingClient:
        """Load the base model, apply the saved adapter (merged) or full weights, and sample from it."""
        model, device = self._model_from_weights(model_dir, blobs)
        return LocalSamplingClient(model, device, pad_id(model), self.config.sample_batch_size, resolve_precision(self.config).decode_cache)

    def score_from_weights(self, model_dir: Path, blobs: dict[str, bytes], datums: Sequence[Datum]) -> list[tuple[float, float]]:
        """Per datum, (sum of -logprob × weight, sum of weights) under the saved weights: what a
        held-out loss benchmark averages. Forward passes only, one sequence at a time."""
        model, device = self._model_from_weights(model_dir, blobs)
        return score_datums(model, device, datums)

    def _model_from_weights(self, model_dir: Path, blobs: dict[str, bytes]):
        """The base model with the saved adapter merged in (or the full weights loaded), frozen, in the configured dtype."""
        import torch

        meta = json.loads(blobs[WEIGHTS_META])
        device = pick_device(self.config)
        dtype = pick_dtype(self.config, device)
        # loading and peft's adapter init draw from torch's process-wide RNG (the drawn values are
        # overwritten): under the lock, on a forked state, so a seeded sampling in another thread
        # sees exactly its own stream
        with global_rng_lock, torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            model = load_model(Path(model_dir), torch.float32, device)
            if meta["format"] == "lora":
                peft_model = with_lora(model, lora_config(meta["lora_rank"], meta["target_modules"], meta["lora_alpha"]))
        if meta["format"] == "lora":
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(peft_model, bytes_to_tensors(blobs["adapter_model.safetensors"]))
            if getattr(result, "unexpected_keys", None):
                raise ValueError(f"adapter weights do not fit the model: unexpected {result.unexpected_keys[:5]}")
            model = peft_model.merge_and_unload()
        elif meta["format"] == "full":
            state = bytes_to_tensors(blobs["model.safetensors"])
            missing, unexpected = model.load_state_dict(state, strict=False)
            missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_word_embeddings)]
            if missing or unexpected:
                raise ValueError(f"full weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        else:
            raise ValueError(f"unknown weights format {meta['format']!r} in {WEIGHTS_META}")
        model.to(dtype)
        model.requires_grad_(False)
        return model, device
