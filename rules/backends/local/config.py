"""Settings of the local backend (`backend.params` when `backend.kind: local`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class LocalBackendConfig(BaseModel, extra="forbid"):
    """Settings of the local backend. `device`, `dtype` and `attention` change the numbers a run produces."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    attention: Literal["auto", "varlen", "sdpa_loop"] = "auto"  # auto: varlen on CUDA in bf16, else sdpa_loop
    max_tokens_per_pass: int = Field(32768, ge=1)  # packed tokens per forward/backward micro-batch
    loss_chunk_tokens: int = Field(0, ge=0)  # loss positions per LM-head chunk; 0 = auto (CPU 1024, CUDA 4096)
    gradient_checkpointing: bool = False  # recompute decoder layers in backward (less memory, ~30% slower)
    sample_batch_size: int = Field(64, ge=1)  # prompts per generate() call
