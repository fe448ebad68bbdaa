"""Settings of the local backend (`backend.params` when `backend.kind: local`)."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from evsys_build.watch import watch


class LocalBackendConfig(BaseModel, extra="forbid"):
    """Settings of the local backend. `device`, `dtype` and `attention` change the numbers a run produces."""

    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when a GPU and a CUDA torch are present
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    attention: Literal["auto", "varlen", "sdpa_loop"] = "auto"  # auto: varlen on CUDA in bf16, else sdpa_loop
    max_tokens_per_pass: int = Field(32768, ge=1)  # packed tokens per forward/backward micro-batch
    loss_chunk_tokens: int = Field(0, ge=0)  # loss positions per LM-head chunk; 0 = auto (CPU 1024, CUDA 4096)
    gradient_checkpointing: bool = False  # recompute decoder layers in backward (less memory, ~30% slower)
    compile: bool = False  # `torch.compile` each decoder layer for training; needs the varlen attention (CUDA, bf16). The first steps pay the compilation (about 25 s for a 0.6B model); on one H200 it then trained 2× faster than eager (benchmarks/RESULTS.md). In the train key: fused kernels round differently
    sample_batch_size: int = Field(64, ge=1)  # prompts per generate() call
    decode_cache: Literal["auto", "dynamic", "static"] = "auto"  # static: greedy evals decode in a loop over a static KV cache, its step compiled and replayed as one CUDA graph on CUDA; auto: static on CUDA, dynamic (generate) on CPU


def resolve_precision(config: LocalBackendConfig) -> LocalBackendConfig:
    """`auto` device, dtype and attention made explicit — without importing torch, so `plan` can
    put them in the train key: a checkpoint trained on CPU in fp32 and one trained on a GPU in
    bf16 never share a key, and training never resumes across precisions. The training client
    checks at run time that torch agrees (a GPU driver with a CPU-only torch is an error)."""
    device = config.device if config.device != "auto" else ("cuda" if cuda_present() else "cpu")
    dtype = config.dtype if config.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
    attention = config.attention
    if attention == "auto":
        attention = "varlen" if device == "cuda" and dtype != "float32" and torch_at_least(2, 10) else "sdpa_loop"
    decode_cache = config.decode_cache if config.decode_cache != "auto" else ("static" if device == "cuda" else "dynamic")
    return config.model_copy(update={"device": device, "dtype": dtype, "attention": attention, "decode_cache": decode_cache})


def cuda_present() -> bool:
    """An NVIDIA GPU that a CUDA build of torch could use, judged from files, not by importing torch
    (reported to the fast paths' watcher: a GPU that appears changes the device, dtype and keys)."""
    for path in NVIDIA_FILES:
        watch(path)
    return _cuda_present(os.environ.get("CUDA_VISIBLE_DEVICES"))


NVIDIA_FILES = ("/dev/nvidiactl", "/proc/driver/nvidia/gpus")


@functools.lru_cache(maxsize=4)
def _cuda_present(visible: str | None) -> bool:
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    if "+cpu" in _torch_version():
        return False
    control, gpus = (Path(p) for p in NVIDIA_FILES)
    return control.exists() or (gpus.is_dir() and any(gpus.iterdir()))


def torch_at_least(major: int, minor: int) -> bool:
    parts = re.findall(r"\d+", _torch_version())[:2]
    return len(parts) == 2 and (int(parts[0]), int(parts[1])) >= (major, minor)


@functools.lru_cache(maxsize=1)
def _torch_version() -> str:
    from ...plugins.installed import library_versions

    return library_versions("torch")["torch"] or ""
