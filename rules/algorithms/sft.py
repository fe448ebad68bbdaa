"""The built-in `sft` algorithm: its params and its registration. The loop itself is sft_loop.py."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from ..config.schema import Strict
from ..plugins.registry import register_algorithm

WALL_CLOCK_METRICS = ("tokens_per_s", "step_time_s")  # differ between runs that compute the same bytes

Supervise = Literal["all_assistant", "last_assistant", "all"]


class SFTConfig(Strict):
    """Knobs of supervised fine-tuning. Defaults follow Tinker's AdamW."""

    learning_rate: float = Field(1.0e-4, gt=0)  # peak learning rate
    max_steps: int = Field(100, ge=1)  # optimizer steps
    num_epochs: Optional[float] = Field(None, gt=0)  # instead of max_steps: passes over the data (steps = ceil(rows × epochs / min(batch_size × gradient_accumulation_steps, rows)))
    batch_size: int = Field(8, ge=1)  # conversations per micro-batch (per step without accumulation); a step's batch is never larger than the data: with fewer rows, each step is one pass over them
    gradient_accumulation_steps: int = Field(1, ge=1)  # micro-batches per optimizer step: the step sees batch_size × this conversations
    lora_rank: int = Field(8, ge=0)  # 0 = train all weights; otherwise LoRA adapters (alpha 32) on the attention and MLP projections, not the embedding or unembedding, on every backend
    supervise: Supervise = "all_assistant"  # which turns carry loss; an assistant message with `weight: 0` (OpenAI's fine-tuning format) is never trained, and `last_assistant` trains the last turn not marked so (`all` refuses such rows)
    max_length: int = Field(2048, ge=8)  # tokens; longer conversations are truncated
    truncation: Literal["right", "left"] = "right"  # which end to cut
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"  # decay after warmup, towards 0 at max_steps
    warmup_steps: int = Field(0, ge=0)  # steps of linear warmup from 0
    save_every: int = Field(0, ge=0)  # 0 = only what evals need + final
    grad_clip: Optional[float] = Field(None, gt=0)  # None = off (Tinker's default)
    beta1: float = 0.9  # AdamW
    beta2: float = 0.95  # AdamW
    eps: float = 1.0e-12  # AdamW
    weight_decay: float = 0.0  # AdamW (decoupled)

    @model_validator(mode="after")
    def _one_length(self):
        if self.num_epochs is not None and "max_steps" in self.model_fields_set:
            raise ValueError("give max_steps or num_epochs, not both")
        return self

    @property
    def effective_batch_size(self) -> int:
        """Conversations per optimizer step."""
        return self.batch_size * self.gradient_accumulation_steps


@register_algorithm("sft")
class SFT:
    """Supervised fine-tuning with Tinker's cross-entropy (sum of -logprob * weight)."""

    Config = SFTConfig
    needs_tokenized_chat = True
    libraries = ("numpy",)  # each epoch's order is numpy's Generator.permutation, which numpy may change between releases

    @staticmethod
    def train(client, data, cfg, **kw) -> list[dict]:
        """The algorithm protocol's one method (see docs/plugins.md): train and return every step's metrics."""
        from .sft_loop import train_sft  # lazily: numpy loads only when training runs

        return train_sft(client, data, cfg, **kw)
