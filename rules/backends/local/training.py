"""The local backend's training client: packed forward/backward, AdamW, exact save/restore."""

from __future__ import annotations

import contextlib
import copy
import json
import math
from pathlib import Path
from typing import Sequence

from evsys_build.errors import ConfigError, NodeFailed

from ..base import AdamParams, Datum
from .config import LocalBackendConfig, resolve_precision
from .kernels import PACKED_ATTENTION, has_varlen_attention, linear_weighted_nll, pack_datums, register_packed_attention, split_by_token_budget
from .model_io import (
    LORA_ALPHA,
    LORA_TARGETS,
    WEIGHTS_META,
    autocast,
    global_rng_lock,
    bytes_to_tensors,
    json_bytes,
    load_model,
    lora_config,
    pick_device,
    pick_dtype,
    tensors_to_bytes,
    weights_meta,
    with_lora,
)
from .sampling import LocalSamplingClient, pad_id


class LocalTrainingClient:
    """forward_backward / optim_step on a local model; LoRA when lora_rank > 0, else all weights."""

    def __init__(self, model_dir: Path, lora_rank: int, seed: int, config: LocalBackendConfig):
        import torch

        if lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0, got {lora_rank}")
        self.model_dir = Path(model_dir)
        self.config = config
        self.lora_rank = lora_rank
        self.device = pick_device(config)
        self.dtype = pick_dtype(config, self.device)
        self.kernel = self._pick_kernel()
        register_packed_attention()
        # Training draws only from its own generator: an eval sampling in another thread (which
        # uses torch's process-wide RNG) can never shift its stream, nor it the eval's.
        self.generator = torch.Generator().manual_seed(seed)
        with global_rng_lock, torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            self.model = self._build_model()  # peft's own init draws from the global RNG; redone below
        self._init_adapters()
        self.model.train()
        self.dropout = _has_dropout(self.model)  # then each pass draws its masks from a seed of the generator
        if self.dropout and self.kernel == "varlen":
            if config.attention != "auto":
                raise ConfigError("backend.params.attention: this model trains with dropout, which the varlen kernel lacks; use auto or sdpa_loop")
            self.kernel = "sdpa_loop"
        if config.compile:
            self._compile_layers()
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
            raise ConfigError(
                "backend.params.attention: varlen needs CUDA, dtype bfloat16 and torch >= 2.10; use auto or sdpa_loop"
            )
        return wanted

    def _build_model(self):
        import torch

        frozen_dtype = self.dtype if self.lora_rank > 0 else torch.float32  # trainable weights stay fp32
        model = load_model(self.model_dir, frozen_dtype, self.device)
        model.set_attn_implementation(PACKED_ATTENTION)
        if self.config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.lora_rank == 0:
            model.requires_grad_(True)
            return model
        model.requires_grad_(False)
        return with_lora(model, lora_config(self.lora_rank))

    def _compile_layers(self) -> None:
        """torch.compile each decoder layer (regional compilation: one layer's code compiles once for all
        of them), shapes dynamic since every packed batch has its own length. Only over the varlen
        kernel: the SDPA loop's per-sequence Python would recompile for every batch."""
        if self.kernel != "varlen":
            raise ConfigError("backend.params.compile: needs the varlen attention kernel (CUDA, dtype bfloat16, torch >= 2.10), which this machine lacks; "
                              "set compile: false")
        for layer in self._causal_lm().model.layers:
            layer.compile(dynamic=True)

    def _init_adapters(self) -> None:
        """LoRA init from the client's generator, as peft does it: A kaiming-uniform, B zeros."""
        import torch

        with torch.no_grad():
            for name, param in self.model.named_parameters():
                if ".lora_A." in name:
                    init = torch.empty(param.shape, dtype=torch.float32)
                    torch.nn.init.kaiming_uniform_(init, a=math.sqrt(5), generator=self.generator)
                    param.copy_(init)
                elif ".lora_B." in name:
                    param.zero_()

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
        for group in split_by_token_budget(datums, self.config.max_tokens_per_pass):
            with self._seeded_dropout():
                part = self._forward_backward_packed(group)
            for key, value in part.items():
                totals[key] += value
        return totals

    @contextlib.contextmanager
    def _seeded_dropout(self):
        """A model with dropout draws its masks from torch's process-wide RNG: for each pass, that
        RNG is forked and seeded from the client's generator (in the key through the seed, saved
        with the state), under the lock that seeded sampling in other threads holds too."""
        if not self.dropout:
            yield
            return
        import torch

        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        with global_rng_lock, torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            yield

    def _forward_backward_packed(self, datums: Sequence[Datum]) -> dict:
        batch = pack_datums(datums, self.device)
        num_tokens = int(batch["input_ids"].shape[1])
        if batch["source"].numel() == 0:
            return {"num_tokens": num_tokens, "num_sequences": len(datums)}
        causal_lm = self._causal_lm()
        with autocast(self.device, self.dtype):
            hidden = causal_lm.model(
                input_ids=batch["input_ids"],
                position_ids=batch["position_ids"],
                use_cache=False,
                cu_seq_lens_q=batch["cu_seq_lens"],
                cu_seq_lens_k=batch["cu_seq_lens"],
                max_length_q=batch["max_length"],
                max_length_k=batch["max_length"],
                evsys_bounds=batch["bounds"] if self.kernel != "varlen" else None,  # a list would recompile compiled layers
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

        for name, param in self.named_trainable:  # a loss that stayed finite can still leave inf weights (a bf16 overflow)
            if not bool(torch.isfinite(param).all()):
                raise NodeFailed(f"train: weight {name} holds NaN or inf: training diverged (lower learning_rate, set grad_clip, "
                                 "or look for extreme rows); checkpoints saved before this one are kept")
        optim: dict[str, torch.Tensor] = {}
        for name, param in self.named_trainable:
            for key, value in self.optimizer.state.get(param, {}).items():
                optim[f"{key}/{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
        return {
            "trainable.safetensors": tensors_to_bytes({n: p for n, p in self.named_trainable}),
            "optimizer.safetensors": tensors_to_bytes(optim),
            "rng.safetensors": tensors_to_bytes({"generator": self.generator.get_state()}),
            "state.json": json_bytes({"lora_rank": self.lora_rank, "format": "evsys-local-state-v1"}),
        }

    def continue_like(self, saved: dict) -> str | None:
        """Before resuming: run on as the saved training ran where that moves the numbers and is not
        keyed, so the resumed training gives the bytes an uninterrupted one gives. On a CPU that is
        torch's thread count (process-wide; it stays set for the rest of the process). Returns a
        line to log when it changed something."""
        import torch

        threads, now = saved.get("cpu_threads"), torch.get_num_threads()
        if self.device.type != "cpu" or not isinstance(threads, int) or threads < 1 or threads == now:
            return None
        torch.set_num_threads(threads)
        return f"resuming with {threads} CPU threads, as the checkpoint's steps ran (this process had {now}), so the result is an uninterrupted training's"

    def load_state(self, blobs: dict[str, bytes]) -> None:
        """Restore weights, AdamW state and RNG saved by `save_state` (same model and lora_rank)."""
        import torch

        meta = json.loads(blobs["state.json"])
        if meta.get("lora_rank") != self.lora_rank:
            raise ValueError(f"load_state: state has lora_rank {meta.get('lora_rank')}, client has {self.lora_rank}")
        weights = bytes_to_tensors(blobs["trainable.safetensors"])
        names = [n for n, _ in self.named_trainable]
        if sorted(weights) != sorted(names):
            raise ValueError("load_state: trainable parameter names differ from this model's")
        with torch.no_grad():
            for name, param in self.named_trainable:
                param.copy_(weights[name])
        optim = bytes_to_tensors(blobs["optimizer.safetensors"])
        state_dict = self.optimizer.state_dict()
        state_dict["state"] = {}
        for index, name in enumerate(names):
            entry = {key.split("/", 1)[0]: t for key, t in optim.items() if key.split("/", 1)[1] == name}
            if entry:
                state_dict["state"][index] = entry
        self.optimizer.load_state_dict(state_dict)
        self.generator.set_state(bytes_to_tensors(blobs["rng.safetensors"])["generator"])

    def weights_blobs(self) -> dict[str, bytes]:
        """LoRA: adapter_model.safetensors + adapter_config.json (peft format); full: model.safetensors +
        config.json. Both add evsys_weights.json, which `sampling_client_from_weights` reads."""
        meta = weights_meta(self.lora_rank)
        if self.lora_rank > 0:
            from peft import get_peft_model_state_dict

            adapter = get_peft_model_state_dict(self.model)
            config = {k: v for k, v in meta.items() if k != "format"}
            peft_json = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": self.lora_rank, "lora_alpha": LORA_ALPHA,
                         "target_modules": list(LORA_TARGETS), "lora_dropout": 0.0, "bias": "none", **config}
            return {
                "adapter_model.safetensors": tensors_to_bytes(adapter),
                "adapter_config.json": json_bytes(peft_json),
                WEIGHTS_META: json_bytes(meta),
            }
        state = {n: p for n, p in self.model.named_parameters()}  # tied lm_head appears once
        return {
            "model.safetensors": tensors_to_bytes(state),
            "config.json": json_bytes(json.loads(self.model.config.to_json_string(use_diff=False))),
            WEIGHTS_META: json_bytes(meta),
        }

    def info(self) -> dict:
        import torch

        total = sum(p.numel() for p in self.model.parameters())
        trainable = sum(p.numel() for _, p in self.named_trainable)
        return {
            "trainable_params": int(trainable),
            "total_params": int(total),
            "lora_rank": self.lora_rank,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "attention": self.kernel,
            **({"cpu_threads": torch.get_num_threads()} if self.device.type == "cpu" else {}),  # moves CPU float results; recorded, not keyed
        }

    def sampling_client(self) -> LocalSamplingClient:
        """A sampler over a snapshot of the current weights (later training does not change it)."""
        # compiled layers' entry points stay behind (torch's Module.__getstate__ drops them): the snapshot runs eagerly
        if self.lora_rank > 0:
            snapshot = copy.deepcopy(self.model).merge_and_unload()
        else:
            snapshot = copy.deepcopy(self.model)
            snapshot.to(self.dtype)
        snapshot.set_attn_implementation("sdpa")
        snapshot.requires_grad_(False)
        return LocalSamplingClient(snapshot, self.device, pad_id(snapshot), self.config.sample_batch_size, resolve_precision(self.config).decode_cache)


def _has_dropout(model) -> bool:
    """Whether training `model` draws dropout masks: a Dropout module with p > 0, or an attention
    dropout its config sets (transformers passes that to the attention function)."""
    import torch

    config = getattr(model, "config", None)
    if any(float(getattr(config, name, 0) or 0) > 0 for name in ("attention_dropout", "attn_pdrop")):
        return True
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
