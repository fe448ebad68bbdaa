"""The `train` node: run the algorithm on a backend, publishing checkpoint nodes as it goes.

Checkpoint keys depend only on (train key, step), so a killed build resumes from the newest
stored checkpoint, and a checkpoint that a new eval schedule needs is filled in by resuming
from the nearest earlier one.
"""

from __future__ import annotations

import json

from evsys_build.errors import ConfigError
from evsys_build.executor import RunContext
from evsys_build.store import Store

from .callbacks import make_callbacks
from .compile_model import checkpoint_node


def run_train(ctx: RunContext) -> dict:
    from .heavy import preload_ml

    preload_ml()
    from .algorithms.sft_loop import train_sft
    from .backends.base import Datum
    from .token_chunks import iter_token_rows

    payload = ctx.node.payload
    arm, algo = payload["arm"], payload["algorithm"]
    backend = payload["backend"]
    if hasattr(backend, "check_ready"):
        backend.check_ready()
    checkpoints = payload["checkpoints"]
    final_step = algo.max_steps
    missing = [s for s, n in sorted(checkpoints.items()) if not ctx.store.has_manifest(n.key)]
    if not missing:  # every checkpoint stored (the build died just before this manifest): nothing to train
        return _train_result(ctx.store, checkpoints[final_step])
    resume_step = newest_stored_step(ctx.store, ctx.node, below=missing[0])
    resume = load_checkpoint(ctx.store, checkpoint_node(ctx.node, resume_step).key) if resume_step else None
    if resume_step:
        ctx.log(f"resuming {ctx.node.name} from checkpoint@{resume_step}")
    data = [Datum(ids, w) for ids, w in iter_token_rows(ctx.store, ctx.inputs["tokens"]["outputs"]["dataset"])]
    if not data:
        raise ConfigError(f"{ctx.node.name}: no training rows left after the transforms")
    client = backend.create_training_client(payload["model_dir"], algo.lora_rank, arm.config.seed)
    callbacks = make_callbacks(arm.config, ctx.log)

    def on_step(step: int, metrics: dict) -> None:
        ctx.progress(step, missing[-1], f"loss {metrics['train_mean_nll']:.4f}")
        for cb in callbacks:
            cb.on_train_step(arm.name, step, metrics)

    def on_checkpoint(step: int, blobs: dict[str, bytes], meta: dict) -> None:
        node = checkpoints.get(step) or checkpoint_node(ctx.node, step)
        if ctx.store.has_manifest(node.key):
            return
        ctx.publish(node, checkpoint_body(ctx.store, blobs, meta, arm.config.model.name))

    train_sft(
        client,
        data,
        algo,
        seed=arm.config.seed,
        save_steps=set(checkpoints),
        resume=resume,
        on_step=on_step,
        on_checkpoint=on_checkpoint,
        stop_at=missing[-1],
    )
    return _train_result(ctx.store, checkpoints[final_step])


def newest_stored_step(store: Store, train, below: int) -> int:
    """The newest step < `below` with a stored checkpoint of this train node (0 = none)."""
    for step in range(below - 1, 0, -1):
        if store.has_manifest(checkpoint_node(train, step).key):
            return step
    return 0


def checkpoint_body(store: Store, blobs: dict[str, bytes], meta: dict, model_name: str) -> dict:
    """A checkpoint manifest body: weights and state as safetensors blobs, meta as JSON."""
    from .algorithms.sft_loop import STATE_PREFIX, WEIGHTS_PREFIX

    stored = {name: store.put_bytes(data) for name, data in blobs.items()}
    step_metrics = meta["metrics_so_far"][-1] if meta.get("metrics_so_far") else {}
    return {
        "outputs": {
            "weights": {"blobs": {k[len(WEIGHTS_PREFIX):]: v for k, v in stored.items() if k.startswith(WEIGHTS_PREFIX)}},
            "state": {"blobs": {k[len(STATE_PREFIX):]: v for k, v in stored.items() if k.startswith(STATE_PREFIX)}},
            "meta": {"blob": store.put_bytes(json.dumps(meta, sort_keys=True).encode())},
        },
        "metrics": {k: v for k, v in step_metrics.items() if k != "step"},
        "stats": {
            "step": meta["step"],
            "base_model": model_name,
            "lora_rank": meta.get("lora_rank"),
            "trainable_params": meta.get("info", {}).get("trainable_params"),
            "size_bytes": sum(len(b) for b in blobs.values()),
        },
    }


def load_checkpoint(store: Store, key: str) -> dict:
    """{"blobs", "meta"} of a stored checkpoint, in the names train_sft expects."""
    from .algorithms.sft_loop import STATE_PREFIX, WEIGHTS_PREFIX

    manifest = store.read_manifest(key)
    outputs = manifest["outputs"]
    blobs = {STATE_PREFIX + k: store.get_bytes(v) for k, v in outputs["state"]["blobs"].items()}
    blobs.update({WEIGHTS_PREFIX + k: store.get_bytes(v) for k, v in outputs["weights"]["blobs"].items()})
    return {"blobs": blobs, "meta": json.loads(store.get_bytes(outputs["meta"]["blob"]))}


def _train_result(store: Store, final_checkpoint) -> dict:
    manifest = store.read_manifest(final_checkpoint.key)
    meta = json.loads(store.get_bytes(manifest["outputs"]["meta"]["blob"]))
    history = meta["metrics_so_far"]
    return {
        "outputs": {
            "history": {"blob": store.put_bytes(json.dumps(history, sort_keys=True).encode())},
            "checkpoint-final": final_checkpoint.key,
            "state-final": manifest["outputs"]["state"],
        },
        "metrics": {
            "first_train_mean_nll": history[0]["train_mean_nll"] if history else None,
            "final_train_mean_nll": history[-1]["train_mean_nll"] if history else None,
            "steps": len(history),
        },
        "stats": {"info": meta.get("info", {})},
    }
