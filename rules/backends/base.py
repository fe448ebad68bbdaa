"""The backend protocol, shaped like Tinker's, so one training algorithm runs on every backend.

A `Backend` makes a `TrainingClient` (forward_backward + optim_step on a model, LoRA or full) and
`SamplingClient`s (generation from saved weights). Loss is Tinker's cross_entropy:
`sum over t of -logprob(tokens[t] | tokens[:t]) * weights[t]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

LossName = str  # only "cross_entropy" for now


@dataclass(frozen=True)
class Datum:
    """One full-length sequence and its per-token loss weights.

    `weights[t]` weighs predicting `input_ids[t]` from `input_ids[:t]`; `weights[0]` is ignored.
    """

    input_ids: np.ndarray  # int, shape (T,)
    weights: np.ndarray  # float32, shape (T,)

    def __post_init__(self) -> None:
        import numpy as np  # lazily: plan and cached builds never load numpy

        ids = np.asarray(self.input_ids)
        w = np.asarray(self.weights, dtype=np.float32)
        if ids.ndim != 1 or w.shape != ids.shape:
            raise ValueError(f"Datum: input_ids {ids.shape} and weights {w.shape} must be 1-D and equal length")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"Datum: input_ids must be integers, got {ids.dtype}")
        object.__setattr__(self, "input_ids", ids.astype(np.int64, copy=False))
        object.__setattr__(self, "weights", w)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def loss_weight(self) -> float:
        """Total weight on predicted tokens (weights[1:])."""
        return float(self.weights[1:].sum(dtype="float64"))


@dataclass(frozen=True)
class SavedCheckpoint:
    """What an algorithm saves at a checkpoint: the client's state (for resume), its weights (for
    samplers), and JSON meta (step, data position, metrics so far). Also what it resumes from."""

    state: dict[str, bytes]
    weights: dict[str, bytes]
    meta: dict
    remote: dict = field(default_factory=dict)  # role -> reference on a service (tinker:// paths), {} for local


class StepFailed(Exception):
    """A training step failed on a remote service in a way that recreating the training client
    from the last saved state may fix (a lost worker, a server error after the SDK's retries).
    The SFT loop recovers from it once; anything else is raised as it is."""


@dataclass(frozen=True)
class AdamParams:
    """AdamW hyper-parameters for one optimizer step (Tinker's defaults)."""

    learning_rate: float
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0
    grad_clip: Optional[float] = None  # max global grad norm; None = off


@runtime_checkable
class SamplingClient(Protocol):
    def sample(
        self,
        prompts: list[list[int]],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        stop_token_ids: Sequence[int] = (),
        n: int = 1,
        seed: int = 0,
    ) -> list[list[list[int]]]:
        """Per prompt, `n` completions as generated token ids (the stop token excluded)."""
        ...


@runtime_checkable
class TrainingClient(Protocol):
    def forward_backward(self, datums: Sequence[Datum], loss: LossName = "cross_entropy") -> dict:
        """Accumulate gradients of sum(-logprob * weight). Returns at least
        loss_sum, weight_sum, num_tokens, num_loss_tokens."""
        ...

    def optim_step(self, adam: AdamParams) -> dict:
        """Apply the accumulated gradients with AdamW, then zero them. Returns e.g. grad_norm."""
        ...

    def save_state(self) -> dict[str, bytes]:
        """Everything needed to resume bit-exactly (weights, optimizer, RNG), as safetensors/json bytes."""
        ...

    def load_state(self, blobs: dict[str, bytes]) -> None:
        """Restore what `save_state` returned."""
        ...

    def weights_blobs(self) -> dict[str, bytes]:
        """What a sampler needs: adapter or full weights (safetensors) plus a small json config."""
        ...

    def info(self) -> dict:
        """trainable_params, total_params, lora_rank, device, dtype."""
        ...

    def sampling_client(self) -> SamplingClient:
        """A sampler over the current weights."""
        ...


@runtime_checkable
class PipelinedTrainingClient(TrainingClient, Protocol):
    """A TrainingClient on a service: calls are submitted in order and return futures (`.result()`),
    so the loop submits step N+1 before it waits for step N and the service never idles on it.
    The training model is created lazily: `load_state` creates it *from* a saved state (resume),
    the first step creates a fresh one."""

    def forward_backward_async(self, datums: Sequence[Datum], loss: LossName = "cross_entropy"): ...

    def optim_step_async(self, adam: AdamParams): ...

    def save_checkpoint_async(self, name: str):
        """Submit saving the state (resume) and the sampler weights after the last submitted step;
        `.result()` is (state blobs, weights blobs, remote references)."""
        ...

    def recover(self, state: Optional[dict[str, bytes]]) -> None:
        """Drop the current training model and continue from `state` (None: from scratch)."""
        ...


@runtime_checkable
class Backend(Protocol):
    def create_training_client(self, model_dir: Path, lora_rank: int, seed: int) -> TrainingClient: ...

    def sampling_client_from_weights(self, model_dir: Path, blobs: dict[str, bytes]) -> SamplingClient: ...
