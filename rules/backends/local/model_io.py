"""Model loading for the local backend: device and precision, the base model, LoRA via peft,
and weights as safetensors/json bytes. torch/transformers/peft are imported inside functions only
(lazily, so planning never loads them)."""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from evsys_build.errors import ConfigError

from .config import LocalBackendConfig

if TYPE_CHECKING:
    import torch

LORA_ALPHA = 32  # Tinker's LoRA alpha; scale = alpha / rank
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
WEIGHTS_META = "evsys_weights.json"


# ----------------------------------------------------------------------------- device & precision


def pick_device(config: LocalBackendConfig) -> "torch.device":
    import torch

    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "backend.params.device: cuda (given, or what `auto` resolved to because a GPU driver is present) "
            "but torch sees no CUDA device; set backend.params.device: cpu, or install a CUDA build of torch"
        )
    kind = config.device
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device("cuda", torch.cuda.current_device()) if kind == "cuda" else torch.device("cpu")


def pick_dtype(config: LocalBackendConfig, device: "torch.device") -> "torch.dtype":
    import torch

    if config.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[config.dtype]


def autocast(device: "torch.device", dtype: "torch.dtype"):
    import torch

    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ----------------------------------------------------------------------------- safetensors/json blobs


def tensors_to_bytes(tensors: dict) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata={"format": "pt"})


def bytes_to_tensors(blob: bytes) -> dict:
    from safetensors.torch import load

    return load(blob)


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


# ----------------------------------------------------------------------------- model loading


LOAD_LOCK = threading.Lock()
global_rng_lock = threading.Lock()  # held by code that must draw from torch's process-wide RNG (peft init, sampling)


def load_model(model_dir: Path, dtype, device):
    """from_pretrained under a lock: its empty-weights init patches torch globally, so two
    threads loading at once (an eval beside training) can get meta tensors."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar in build output
    with LOAD_LOCK:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, attn_implementation="sdpa")
        return model.to(device)


def lora_config(rank: int, targets: Sequence[str] = LORA_TARGETS, alpha: int = LORA_ALPHA):
    from peft import LoraConfig

    return LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"
    )


def with_lora(model, config):
    """peft-wrap `model`; adapters are kept in fp32 even over a bf16 base."""
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config, autocast_adapter_dtype=True)


def weights_meta(lora_rank: int) -> dict:
    if lora_rank == 0:
        return {"format": "full", "lora_rank": 0}
    return {"format": "lora", "lora_rank": lora_rank, "lora_alpha": LORA_ALPHA, "target_modules": list(LORA_TARGETS)}
