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
from rules.registry import register_backend

if TYPE_CHECKING:
    import torch

PACKED_ATTENTION = "evsys_packed"
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


# ----------------------------------------------------------------------------- packed attention


def packed_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function over one packed row: (1, H, T, D) in, (1, T, H, D) out.

    Reads `cu_seq_lens_q` (int32 tensor of sequence starts + total) and `evsys_bounds` (the same as a
    Python list); each token attends causally within its own sequence only.
    """
    import torch
    import torch.nn.functional as F

    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    bounds = kwargs.get("evsys_bounds")
    if cu_seq_lens is None or bounds is None:
        raise RuntimeError("evsys_packed attention needs cu_seq_lens_q and evsys_bounds (use LocalTrainingClient)")
    if query.shape[0] != 1:
        raise RuntimeError(f"evsys_packed attention expects one packed row, got batch {query.shape[0]}")
    if kwargs.get("evsys_kernel") == "varlen":
        from torch.nn.attention.varlen import varlen_attn

        max_len = kwargs["max_length_q"]
        dtype = kwargs.get("evsys_dtype") or value.dtype  # flash kernels need bf16/fp16; q/k leave RMSNorm in fp32
        q, k, v = (t[0].transpose(0, 1).to(dtype).contiguous() for t in (query, key, value))
        out = varlen_attn(
            q, k, v, cu_seq_lens, cu_seq_lens, max_len, max_len,
            scale=scaling, window_size=(-1, 0), enable_gqa=query.shape[1] != key.shape[1],
        )
        return out.unsqueeze(0), None
    gqa = query.shape[1] != key.shape[1]
    pieces = [
        F.scaled_dot_product_attention(
            query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True, scale=scaling, enable_gqa=gqa
        )
        for s, e in zip(bounds[:-1], bounds[1:])
    ]
    out = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)
    return out.transpose(1, 2), None


def _has_varlen_attention() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch.nn.attention.varlen") is not None


def _register_packed_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_attention_forward)


# ----------------------------------------------------------------------------- fused LM head + weighted NLL


def _fused_loss_function():
    import torch

    class LinearWeightedNLL(torch.autograd.Function):
        """loss = sum_i w[i] * (logsumexp(h[i] @ W.T) - (h[i] @ W.T)[t[i]]), chunked over positions.

        Gradients are computed in forward, chunk by chunk (softmax - onehot), so no logits outlive a
        chunk and no recompute is needed; backward only scales them by the incoming scalar gradient.
        Also returns the per-position NLL (not differentiable) for metrics.
        """

        @staticmethod
        def forward(ctx, hidden, weight, targets, loss_weights, chunk: int, compute_dtype):
            need_h, need_w = hidden.requires_grad, weight.requires_grad
            w = weight.to(compute_dtype)
            h = hidden.to(compute_dtype)
            nll = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = None  # fp32, created by the first chunk
            for s in range(0, h.shape[0], chunk):
                hc, tc = h[s : s + chunk], targets[s : s + chunk]
                logits = (hc @ w.T).float()
                picked = logits.gather(1, tc[:, None])[:, 0]
                peak = logits.amax(dim=-1, keepdim=True)
                probs = logits.sub_(peak).exp_()  # in place: logits are not needed any more
                total = probs.sum(dim=-1, keepdim=True)
                nll[s : s + chunk] = (peak + total.log())[:, 0] - picked
                if need_h or need_w:
                    probs.div_(total)
                    probs[torch.arange(hc.shape[0], device=hc.device), tc] -= 1.0
                    g = probs.mul_(loss_weights[s : s + chunk, None]).to(compute_dtype)
                    if need_h:
                        grad_h[s : s + chunk] = (g @ w).to(hidden.dtype)
                    if need_w:
                        part = (g.T @ hc).float()
                        grad_w = part if grad_w is None else grad_w.add_(part)
            ctx.save_for_backward(
                grad_h if need_h else None, grad_w.to(weight.dtype) if need_w else None
            )
            ctx.mark_non_differentiable(nll)
            return (nll * loss_weights).sum(), nll

        @staticmethod
        def backward(ctx, grad_loss, _grad_nll):
            grad_h, grad_w = ctx.saved_tensors
            grad_h = grad_h * grad_loss if grad_h is not None else None
            grad_w = grad_w * grad_loss if grad_w is not None else None
            return grad_h, grad_w, None, None, None, None

    return LinearWeightedNLL


_FUSED_LOSS = None


def linear_weighted_nll(hidden, weight, targets, loss_weights, chunk: int, compute_dtype=None):
    """(sum of loss_weights * NLL, per-position NLL) for logits `hidden @ weight.T`, never holding all logits."""
    global _FUSED_LOSS
    if _FUSED_LOSS is None:
        _FUSED_LOSS = _fused_loss_function()
    return _FUSED_LOSS.apply(hidden, weight, targets, loss_weights, chunk, compute_dtype or hidden.dtype)


# ----------------------------------------------------------------------------- packing


def pack_datums(datums: Sequence[Datum], device) -> dict:
    """One packed row: input_ids/position_ids (1, T), bounds, and the loss gather plan.

    `source` indexes the hidden state that predicts `target` (global index - 1) with weight `weight`.
    """
    import numpy as np
    import torch

    lengths = [d.num_tokens for d in datums]
    bounds = [0, *np.cumsum(lengths).tolist()]
    ids = np.concatenate([d.input_ids for d in datums])
    positions = np.concatenate([np.arange(n) for n in lengths])
    sources, targets, weights = [], [], []
    for d, start in zip(datums, bounds[:-1]):
        t = np.nonzero(d.weights[1:])[0] + 1  # predicted positions with nonzero weight
        sources.append(start + t - 1)
        targets.append(d.input_ids[t])
        weights.append(d.weights[t])
    as_tensor = lambda a, dt: torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dt)  # noqa: E731
    return {
        "input_ids": as_tensor(ids, torch.long)[None],
        "position_ids": as_tensor(positions, torch.long)[None],
        "bounds": bounds,
        "cu_seq_lens": torch.tensor(bounds, dtype=torch.int32, device=device),
        "max_length": max(lengths),
        "source": as_tensor(np.concatenate(sources), torch.long),
        "target": as_tensor(np.concatenate(targets), torch.long),
        "weight": as_tensor(np.concatenate(weights), torch.float32),
    }


def split_by_token_budget(datums: Sequence[Datum], budget: int) -> list[list[Datum]]:
    """Consecutive groups whose total length stays within `budget` (a longer datum gets its own group)."""
    groups: list[list[Datum]] = [[]]
    used = 0
    for d in datums:
        if groups[-1] and used + d.num_tokens > budget:
            groups.append([])
            used = 0
        groups[-1].append(d)
        used += d.num_tokens
    return [g for g in groups if g]


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


# ----------------------------------------------------------------------------- sampling


class LocalSamplingClient:
    """Batched generation (HF generate, KV cache, left padding) over a frozen model."""

    def __init__(self, model, device, pad_token_id: int, batch_size: int = 64):
        self.model = model.eval()
        # only the caller's stop_token_ids may end a completion, not the model's default eos
        self.model.generation_config.eos_token_id = None
        self.device = device
        self.pad_token_id = pad_token_id
        self.batch_size = batch_size

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
        """Per prompt, `n` completions of generated ids, cut before the first stop token."""
        import torch

        if max_tokens < 1 or n < 1 or temperature < 0:
            raise ValueError(f"sample: need max_tokens >= 1, n >= 1, temperature >= 0 (got {max_tokens}, {n}, {temperature})")
        if temperature == 0 and n > 1:
            n_runs = 1  # greedy: every copy would be identical
        else:
            n_runs = n
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[list[list[int]]] = [[] for _ in prompts]
        stops = set(int(t) for t in stop_token_ids)
        per_call = max(1, self.batch_size // n_runs)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, len(order), per_call):
                idx = order[start : start + per_call]
                outputs = self._generate([prompts[i] for i in idx], max_tokens, temperature, list(stops), n_runs)
                for j, i in enumerate(idx):
                    for seq in outputs[j * n_runs : (j + 1) * n_runs]:
                        results[i].append(_cut_at_stop(seq, stops))
        if n_runs != n:
            results = [r * n for r in results]
        return results

    def _generate(self, prompts, max_tokens, temperature, stops, n_runs) -> list[list[int]]:
        import torch

        width = max(len(p) for p in prompts)
        if width == 0:
            raise ValueError("sample: empty prompt")
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[row, width - len(p) :] = 1
        kwargs = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 else {"do_sample": False}
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                max_new_tokens=max_tokens,
                num_return_sequences=n_runs,
                eos_token_id=stops or None,
                pad_token_id=self.pad_token_id,
                use_cache=True,
                **kwargs,
            )
        return out[:, width:].tolist()


def _cut_at_stop(seq: list[int], stops: set[int]) -> list[int]:
    for k, tok in enumerate(seq):
        if tok in stops:
            return seq[:k]
    return seq


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
        _register_packed_attention()
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
        varlen_ok = self.device.type == "cuda" and self.dtype != torch.float32 and _has_varlen_attention()
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
        return LocalSamplingClient(snapshot, self.device, _pad_id(snapshot), self.config.sample_batch_size)


def _pad_id(model) -> int:
    generation = getattr(model, "generation_config", None)
    for candidate in (getattr(generation, "pad_token_id", None), model.config.pad_token_id, model.config.eos_token_id):
        if isinstance(candidate, list):
            candidate = candidate[0] if candidate else None
        if candidate is not None:
            return int(candidate)
    return 0


@register_backend("local")
class LocalBackend:
    """Backend factory: training clients and samplers on this machine."""

    Config = LocalBackendConfig
    version = "1"

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
        return LocalSamplingClient(model, device, _pad_id(model), self.config.sample_batch_size)
