"""The fake Tinker server's compute: evsys's local backend on local model folders.

Training is LocalTrainingClient (CPU, fp32), so a build through the Tinker SDK computes exactly
what the local backend computes on the same datums; sampling is LocalSamplingClient, batched
over the requests that wait together.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

from evsys_rules.backends.base import AdamParams, Datum
from evsys_rules.backends.local import LocalBackend, LocalBackendConfig, LocalTrainingClient

CONFIG = LocalBackendConfig(device="cpu", dtype="float32", attention="sdpa_loop")


def pack(blobs: dict[str, bytes]) -> bytes:
    return json.dumps({k: base64.b64encode(v).decode() for k, v in sorted(blobs.items())}).encode()


def unpack(data: bytes) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in json.loads(data).items()}


class LocalCompute:
    def __init__(self, model_dirs: dict[str, Path]):
        self.model_dirs = model_dirs  # base model name -> folder
        self._samplers: dict[int, tuple[bytes, object]] = {}

    def create(self, base_model: str, lora_rank: int, seed):
        return LocalTrainingClient(self.model_dirs[base_model], lora_rank, 0 if seed is None else seed, CONFIG)

    def forward_backward(self, handle, datums, *, loss_fn, forward_only):
        if forward_only:
            raise ValueError("this fake computes forward_backward only")
        local = []
        for model_input, targets, weights in datums:
            if len(targets) != len(model_input) or list(model_input[1:]) != list(targets[:-1]):
                raise ValueError("target_tokens must be model_input shifted by one")
            local.append(Datum(np.array(list(model_input) + [targets[-1]], dtype=np.int64),
                               np.array([0.0] + list(weights if weights is not None else [1.0] * len(targets)), dtype=np.float32)))
        out = handle.forward_backward(local, loss_fn)
        return {"loss": out["loss_sum"]}

    def optim_step(self, handle, adam: dict):
        out = handle.optim_step(AdamParams(
            learning_rate=adam["learning_rate"], beta1=adam.get("beta1", 0.9), beta2=adam.get("beta2", 0.95),
            eps=adam.get("eps", 1e-12), weight_decay=adam.get("weight_decay", 0.0),
            grad_clip=adam.get("grad_clip_norm") or None))
        return {"grad_norm:mean": out["grad_norm"]}

    def save_state(self, handle) -> bytes:
        return pack(handle.save_state())

    def load_state(self, handle, blob: bytes, *, optimizer: bool) -> None:
        handle.load_state(unpack(blob))

    def sampler_weights(self, handle) -> bytes:
        return pack(handle.weights_blobs())

    def export_files(self, handle) -> dict[str, bytes]:
        return handle.weights_blobs()

    def _sampler(self, weights: bytes, base_model: str):
        hit = self._samplers.get(id(weights))
        if hit is None or hit[0] is not weights:
            sampler = LocalBackend(CONFIG).sampling_client_from_weights(self.model_dirs[base_model], unpack(weights))
            if len(self._samplers) >= 4:  # evaluations of a few checkpoints run side by side
                self._samplers.pop(next(iter(self._samplers)))
            hit = self._samplers[id(weights)] = (weights, sampler)
        return hit[1]

    def sample_batch(self, weights, prompts, max_tokens, temperature, stop, num_samples, seeds, *, base_model):
        if weights is None:
            raise ValueError("this fake samples trained checkpoints only")
        sampler = self._sampler(weights, base_model)
        stops = [s for s in (stop or []) if isinstance(s, int)]
        if temperature == 0 or len(set(seeds)) == 1:
            return sampler.sample(prompts, max_tokens=max_tokens, temperature=temperature, stop_token_ids=stops, n=num_samples, seed=seeds[0] or 0)
        return [sampler.sample([p], max_tokens=max_tokens, temperature=temperature, stop_token_ids=stops, n=num_samples, seed=s or 0)[0]
                for p, s in zip(prompts, seeds)]

    def sample(self, weights, prompt_ids, max_tokens, temperature, stop, num_samples, seed, *, base_model):
        return self.sample_batch(weights, [prompt_ids], max_tokens, temperature, stop, num_samples, [seed], base_model=base_model)[0]

    def prompt_logprobs(self, weights, prompt_ids, *, base_model) -> list[float | None]:
        """log p(ids[t] | ids[:t]) for each prompt token, None for the first (as the service
        answers `compute_logprobs`), by the same scoring the local backend's held-out loss uses."""
        from evsys_rules.backends.local.scoring import token_logprobs

        sampler = self._sampler(weights, base_model)
        return [None, *token_logprobs(sampler.model, sampler.device, prompt_ids)]
