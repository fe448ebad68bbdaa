"""The built-in `sft` algorithm: its params and its registration. The loop itself is sft_loop.py."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, Field

from ..plugins.registry import register_algorithm

WALL_CLOCK_METRICS = ("tokens_per_s", "step_time_s")  # differ between runs that compute the same bytes

Supervise = Literal["all_assistant", "last_assistant", "all"]


class SFTConfig(BaseModel, extra="forbid"):
    """Knobs of supervised fine-tuning. Defaults follow Tinker's AdamW."""

    learning_rate: float = Field(1.0e-4, gt=0)
    max_steps: int = Field(100, ge=1)  # optimizer steps
    batch_size: int = Field(8, ge=1)  # conversations per step
    lora_rank: int = Field(8, ge=0)  # 0 = train all weights
    supervise: Supervise = "all_assistant"  # which turns carry loss
    max_length: int = Field(2048, ge=8)  # tokens; longer conversations are truncated
    truncation: Literal["right", "left"] = "right"  # which end to cut
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    save_every: int = Field(0, ge=0)  # 0 = only what evals need + final
    grad_clip: Optional[float] = Field(None, gt=0)  # None = off (Tinker's default)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1.0e-12
    weight_decay: float = 0.0


@register_algorithm("sft")
class SFT:
    """Supervised fine-tuning with Tinker's cross-entropy (sum of -logprob * weight)."""

    Config = SFTConfig
    needs_tokenized_chat = True
