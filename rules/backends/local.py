"""The `local` backend: torch + transformers + peft on CPU or one CUDA GPU.

Speed path of `forward_backward`:
- padding-free packing: a micro-batch is one row of concatenated sequences, position_ids restart per
  sequence, and the registered `evsys_packed` attention never crosses a sequence boundary (CUDA:
  torch's varlen flash attention on `cu_seq_lens`; otherwise per-sequence SDPA, exact and mask-free);
- the LM head runs only at positions with nonzero weight, in chunks, through a fused linear +
  weighted-NLL autograd function that forms each chunk's gradient right away, so no logits outlive
  their chunk and none are recomputed (softmax in fp32);
- fused AdamW (one pass per tensor).
Precision: `dtype=bfloat16` computes in bf16 under autocast; trainable weights and AdamW state stay
fp32 (LoRA: frozen base in bf16, adapters fp32). torch is imported inside functions only.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional, Sequence

from pydantic import BaseModel, Field

from rules.backends.base import AdamParams, Datum
from rules.backends.local_kernels import (
    PACKED_ATTENTION,
    has_varlen_attention,
    register_packed_attention,
    linear_weighted_nll,
    pack_datums,
    split_by_token_budget,
)
from rules.backends.local_sampling import LocalSamplingClient, pad_id
from rules.registry import register_backend

if TYPE_CHECKING:
    import torch

LORA_ALPHA = 32  # Tinker's LoRA alpha; scale = alpha / rank
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
WEIGHTS_META = "evsys_weights.json"


class LocalBackendConfig(BaseModel, extra="forbid"):
    """Settings of the local backend. `device`, `dtype` and `attention` change the numbers a run produces."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    attention: Literal["auto", "varlen", "sdpa_loop"] = "auto"  # auto: varlen on CUDA in bf16, else sdpa_loop
    max_tokens_per_pass: int = Field(32768, ge=1)  # packed tokens per forward/backward micro-batch
    loss_chunk_tokens: int = Field(0, ge=0)  # loss positions per LM-head chunk; 0 = auto (CPU 1024, CUDA 4096)
    gradient_checkpointing: bool = False  # recompute decoder layers in backward (less memory, ~30% slower)
    sample_batch_size: int = Field(64, ge=1)  # prompts per generate() call


# ----------------------------------------------------------------------------- device & precision


def _pick_device(config: LocalBackendConfig) -> "torch.device":
    import torch

    if config.device == "cuda" and not torch.cuda.is_available():
        from evsys_build.errors import ConfigError

        raise ConfigError("backend.local.device: cuda requested but torch sees no CUDA device; use auto or cpu")
    kind = config.device
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device("cuda", torch.cuda.current_device()) if kind == "cuda" else torch.device("cpu")


def _pick_dtype(config: LocalBackendConfig, device: "torch.device") -> "torch.dtype":
    import torch

    if config.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[config.dtype]


def _autocast(device: "torch.device", dtype: "torch.dtype"):
    import torch

    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ----------------------------------------------------------------------------- safetensors/json blobs


def _tensors_to_bytes(tensors: dict) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata={"format": "pt"})


def _bytes_to_tensors(blob: bytes) -> dict:
    from safetensors.torch import load

    return load(blob)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


# ----------------------------------------------------------------------------- model loading


_LOAD_LOCK = threading.Lock()


def _load_model(model_dir: Path, dtype, device):
    """from_pretrained under a lock: its empty-weights init patches torch globally, so two
    threads loading at once (an eval beside training) can get meta tensors."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar in build output
    with _LOAD_LOCK:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, attn_implementation="sdpa")
        return model.to(device)


def _lora_config(rank: int, targets: Sequence[str] = LORA_TARGETS, alpha: int = LORA_ALPHA):
    from peft import LoraConfig

    return LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"
    )


def _with_lora(model, lora_config):
    """peft-wrap `model`; adapters are kept in fp32 even over a bf16 base."""
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, lora_config, autocast_adapter_dtype=True)


def _weights_meta(lora_rank: int) -> dict:
    if lora_rank == 0:
        return {"format": "full", "lora_rank": 0}
    return {"format": "lora", "lora_rank": lora_rank, "lora_alpha": LORA_ALPHA, "target_modules": list(LORA_TARGETS)}


# ----------------------------------------------------------------------------- training


class LocalTrainingClient:
    """forward_backward / optim_step on a local model; LoRA when lora_rank > 0, else all weights."""

    def __init__(self, model_dir: Path, lora_rank: int, seed: int, config: LocalBackendConfig):
        import torch

        if lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0, got {lora_rank}")
        self.model_dir = Path(model_dir)
        self.config = config
        self.lora_rank = lora_rank
        self.device = _pick_device(config)
        self.dtype = _pick_dtype(config, self.device)
        self.kernel = self._pick_kernel()
        register_packed_attention()
        rng_devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(seed)
            self.model = self._build_model()
            self._rng = self._capture_rng()
        self.model.train()
        self.named_trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        # fused AdamW: one pass over each tensor, ~5x faster than the per-tensor loop on CPU
        self.optimizer = torch.optim.AdamW([p for _, p in self.named_trainable], lr=0.0, fused=True)

    def _pick_kernel(self) -> str:
        import torch

        wanted = self.config.attention
        varlen_ok = self.device.type == "cuda" and self.dtype != torch.float32 and has_varlen_attention()
        if wanted == "auto":
            return "varlen" if varlen_ok else "sdpa_loop"
        if wanted == "varlen" and not varlen_ok:
            from evsys_build.errors import ConfigError

            raise ConfigError(
                "backend.local.attention: varlen needs CUDA, dtype bfloat16 and torch >= 2.10; use auto or sdpa_loop"
            )
        return wanted

    def _build_model(self):
        import torch

        frozen_dtype = self.dtype if self.lora_rank > 0 else torch.float32  # trainable weights stay fp32
        model = _load_model(self.model_dir, frozen_dtype, self.device)
        model.set_attn_implementation(PACKED_ATTENTION)
        if self.config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.lora_rank == 0:
            model.requires_grad_(True)
            return model
        model.requires_grad_(False)
        return _with_lora(model, _lora_config(self.lora_rank))

    # -- RNG: the client owns its RNG stream so runs and resumes are reproducible
    def _capture_rng(self) -> dict:
        import torch

        state = {"cpu": torch.random.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    @contextlib.contextmanager
    def _own_rng(self):
        import torch

        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.random.set_rng_state(self._rng["cpu"])
            if "cuda" in self._rng:
                torch.cuda.set_rng_state(self._rng["cuda"], self.device)
            yield
            self._rng = self._capture_rng()

    def _causal_lm(self):
        """The Qwen3ForCausalLM inside (peft wraps it)."""
        return self.model.get_base_model() if self.lora_rank > 0 else self.model

    @property
    def loss_chunk(self) -> int:
        return self.config.loss_chunk_tokens or (4096 if self.device.type == "cuda" else 1024)

    def forward_backward(self, datums: Sequence[Datum], loss: str = "cross_entropy") -> dict:
        """Accumulate gradients of sum(-logprob * weight) over the datums; return sums for metrics."""
        if loss != "cross_entropy":
            raise ValueError(f"local backend: unsupported loss {loss!r}; known: cross_entropy")
        if not datums:
            raise ValueError("forward_backward: no datums")
        totals = {"loss_sum": 0.0, "weight_sum": 0.0, "num_tokens": 0, "num_loss_tokens": 0, "num_sequences": 0}
        with self._own_rng():
            for group in split_by_token_budget(datums, self.config.max_tokens_per_pass):
                for key, value in self._forward_backward_packed(group).items():
                    totals[key] += value
        return totals

    def _forward_backward_packed(self, datums: Sequence[Datum]) -> dict:
        batch = pack_datums(datums, self.device)
        num_tokens = int(batch["input_ids"].shape[1])
        if batch["source"].numel() == 0:
            return {"num_tokens": num_tokens, "num_sequences": len(datums)}
        causal_lm = self._causal_lm()
        with _autocast(self.device, self.dtype):
            hidden = causal_lm.model(
                input_ids=batch["input_ids"],
                position_ids=batch["position_ids"],
                use_cache=False,
                cu_seq_lens_q=batch["cu_seq_lens"],
                cu_seq_lens_k=batch["cu_seq_lens"],
                max_length_q=batch["max_length"],
                max_length_k=batch["max_length"],
                evsys_bounds=batch["bounds"],
                evsys_kernel=self.kernel,
                evsys_dtype=self.dtype,
            ).last_hidden_state[0]
        picked = hidden.index_select(0, batch["source"])
        weighted, _ = linear_weighted_nll(
            picked, causal_lm.lm_head.weight, batch["target"], batch["weight"], self.loss_chunk, self.dtype
        )
        weighted.backward()
        return {
            "loss_sum": float(weighted.detach()),
            "weight_sum": float(batch["weight"].sum()),
            "num_tokens": num_tokens,
            "num_loss_tokens": int(batch["source"].numel()),
            "num_sequences": len(datums),
        }

    def optim_step(self, adam: AdamParams) -> dict:
        """One AdamW step with `adam`'s hyper-parameters, then zero the gradients."""
        import torch

        params = [p for _, p in self.named_trainable]
        for group in self.optimizer.param_groups:
            group.update(lr=adam.learning_rate, betas=(adam.beta1, adam.beta2), eps=adam.eps, weight_decay=adam.weight_decay)
        max_norm = adam.grad_clip if adam.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": float(grad_norm), "learning_rate": adam.learning_rate}

    # -- state
    def save_state(self) -> dict[str, bytes]:
        """trainable.safetensors, optimizer.safetensors, rng.safetensors and state.json."""
        import torch

        optim: dict[str, torch.Tensor] = {}
        for name, param in self.named_trainable:
            for key, value in self.optimizer.state.get(param, {}).items():
                optim[f"{key}/{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
        return {
            "trainable.safetensors": _tensors_to_bytes({n: p for n, p in self.named_trainable}),
            "optimizer.safetensors": _tensors_to_bytes(optim),
            "rng.safetensors": _tensors_to_bytes(self._rng),
            "state.json": _json_bytes({"lora_rank": self.lora_rank, "format": "evsys-local-state-v1"}),
        }

    def load_state(self, blobs: dict[str, bytes]) -> None:
        """Restore weights, AdamW state and RNG saved by `save_state` (same model and lora_rank)."""
        import torch

        meta = json.loads(blobs["state.json"])
        if meta.get("lora_rank") != self.lora_rank:
            raise ValueError(f"load_state: state has lora_rank {meta.get('lora_rank')}, client has {self.lora_rank}")
        weights = _bytes_to_tensors(blobs["trainable.safetensors"])
        names = [n for n, _ in self.named_trainable]
        if sorted(weights) != sorted(names):
            raise ValueError("load_state: trainable parameter names differ from this model's")
        with torch.no_grad():
            for name, param in self.named_trainable:
                param.copy_(weights[name])
        optim = _bytes_to_tensors(blobs["optimizer.safetensors"])
        state_dict = self.optimizer.state_dict()
        state_dict["state"] = {}
        for index, name in enumerate(names):
            entry = {key.split("/", 1)[0]: t for key, t in optim.items() if key.split("/", 1)[1] == name}
            if entry:
                state_dict["state"][index] = entry
        self.optimizer.load_state_dict(state_dict)
        self._rng = dict(_bytes_to_tensors(blobs["rng.safetensors"]))

    def weights_blobs(self) -> dict[str, bytes]:
        """LoRA: adapter_model.safetensors + adapter_config.json (peft format); full: model.safetensors +
        config.json. Both add evsys_weights.json, which `sampling_client_from_weights` reads."""
        meta = _weights_meta(self.lora_rank)
        if self.lora_rank > 0:
            from peft import get_peft_model_state_dict

            adapter = get_peft_model_state_dict(self.model)
            config = {k: v for k, v in meta.items() if k != "format"}
            peft_json = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": self.lora_rank, "lora_alpha": LORA_ALPHA,
                         "target_modules": list(LORA_TARGETS), "lora_dropout": 0.0, "bias": "none", **config}
            return {
                "adapter_model.safetensors": _tensors_to_bytes(adapter),
                "adapter_config.json": _json_bytes(peft_json),
                WEIGHTS_META: _json_bytes(meta),
            }
        state = {n: p for n, p in self.model.named_parameters()}  # tied lm_head appears once
        return {
            "model.safetensors": _tensors_to_bytes(state),
            "config.json": _json_bytes(json.loads(self.model.config.to_json_string(use_diff=False))),
            WEIGHTS_META: _json_bytes(meta),
        }

    def info(self) -> dict:
        total = sum(p.numel() for p in self.model.parameters())
        trainable = sum(p.numel() for _, p in self.named_trainable)
        return {
            "trainable_params": int(trainable),
            "total_params": int(total),
            "lora_rank": self.lora_rank,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "attention": self.kernel,
        }

    def sampling_client(self) -> LocalSamplingClient:
        """A sampler over a snapshot of the current weights (later training does not change it)."""
        if self.lora_rank > 0:
            snapshot = copy.deepcopy(self.model).merge_and_unload()
        else:
            snapshot = copy.deepcopy(self.model)
            snapshot.to(self.dtype)
        snapshot.set_attn_implementation("sdpa")
        snapshot.requires_grad_(False)
        return LocalSamplingClient(snapshot, self.device, pad_id(snapshot), self.config.sample_batch_size)


@register_backend("local")
class LocalBackend:
    """Backend factory: training clients and samplers on this machine."""

    Config = LocalBackendConfig
    version = "1"
    sampling_only_params = ("sample_batch_size",)  # not part of the train key

    def __init__(self, config: Optional[LocalBackendConfig | dict] = None):
        if config is None:
            config = LocalBackendConfig()
        elif isinstance(config, dict):
            config = LocalBackendConfig(**config)
        self.config = config

    def create_training_client(self, model_dir: Path, lora_rank: int, seed: int) -> LocalTrainingClient:
        return LocalTrainingClient(Path(model_dir), lora_rank, seed, self.config)

    def sampling_client_from_weights(self, model_dir: Path, blobs: dict[str, bytes]) -> LocalSamplingClient:
        """Load the base model, apply the saved adapter (merged) or full weights, and sample from it."""
        import torch

        meta = json.loads(blobs[WEIGHTS_META])
        device = _pick_device(self.config)
        dtype = _pick_dtype(self.config, device)
        model = _load_model(Path(model_dir), torch.float32, device)
        if meta["format"] == "lora":
            from peft import set_peft_model_state_dict

            peft_model = _with_lora(model, _lora_config(meta["lora_rank"], meta["target_modules"], meta["lora_alpha"]))
            result = set_peft_model_state_dict(peft_model, _bytes_to_tensors(blobs["adapter_model.safetensors"]))
            if getattr(result, "unexpected_keys", None):
                raise ValueError(f"adapter weights do not fit the model: unexpected {result.unexpected_keys[:5]}")
            model = peft_model.merge_and_unload()
        elif meta["format"] == "full":
            state = _bytes_to_tensors(blobs["model.safetensors"])
            missing, unexpected = model.load_state_dict(state, strict=False)
            missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_word_embeddings)]
            if missing or unexpected:
                raise ValueError(f"full weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        else:
            raise ValueError(f"unknown weights format {meta['format']!r} in {WEIGHTS_META}")
        model.to(dtype)
        model.requires_grad_(False)
        return LocalSamplingClient(model, device, pad_id(model), self.config.sample_batch_size)
