"""`evsys show` previews for train, checkpoint and eval nodes."""

from __future__ import annotations

import json

from evsys_build.store import Store

from ..nodes.views import Checkpoint, EvalResult, ReportFiles, TrainResult


def model_preview(store: Store, manifest: dict, rows: int) -> tuple[str, list]:
    rule = manifest["rule"]
    if rule == "checkpoint":
        checkpoint = Checkpoint.of(manifest)
        s = manifest.get("stats", {})
        metrics = manifest.get("metrics", {})
        lines = [
            f"checkpoint step {s.get('step')} of base model {s.get('base_model')}",
            f"lora_rank {s.get('lora_rank')} ({'full fine-tune' if s.get('lora_rank') == 0 else 'LoRA adapter'}), "
            f"trainable params {s.get('trainable_params'):,}" if isinstance(s.get("trainable_params"), int) else f"lora_rank {s.get('lora_rank')}",
            f"size {s.get('size_bytes', 0) / 1e6:.2f} MB: weights {sorted(checkpoint.weights)}, state {sorted(checkpoint.state)}",
            "metrics at this step: " + ", ".join(f"{k}={_f(v)}" for k, v in sorted(metrics.items())),
        ]
        remote = (manifest.get("attachments") or {}).get("remote")
        if remote:  # trained on a service: where its state and sampler weights live there
            service = remote.get("service", {})
            where = service.get("base_url") or f"hosted {service.get('backend', '')}".strip()
            lines += [f"on {where}: {role} {path}" for role, path in sorted(remote.get("refs", {}).items())]
        return "\n".join(lines), [metrics]
    if rule == "train":
        result = TrainResult.of(manifest)
        history = result.history(store)
        lines = [f"trained {len(history)} steps; final checkpoint node:{result.checkpoint_final}"]
        for m in history[:rows] + (["..."] if len(history) > 2 * rows else []) + history[max(rows, len(history) - rows):]:
            lines.append("  ..." if m == "..." else f"  step {m['step']}: train_mean_nll={_f(m.get('train_mean_nll'))} lr={_f(m.get('optim/lr'))}")
        return "\n".join(lines), history[:rows]
    if rule == "eval":
        preds = [json.loads(line) for line in store.get_bytes(EvalResult.of(manifest).predictions_blob).splitlines() if line]
        s = manifest.get("stats", {})
        head = (
            f"eval {s.get('benchmark')} at step {s.get('step')}: "
            + ", ".join(f"{k}={_f(v)}" for k, v in sorted(manifest.get("metrics", {}).items()))
            + f" ({s.get('tasks')} tasks, {s.get('tasks_sampled')} sampled, {s.get('tasks_cached')} cached)"
        )
        lines = [head] + [f"  {'✓' if p['correct'] else '✗'} {p['task_id']}: {p['prediction']!r}" for p in preds[:rows]]
        return "\n".join(lines), preds[:rows]
    if rule == "report":
        blobs = ReportFiles.of(manifest).files
        lines = ["run-dir files:"] + [f"  {path} ({store.object_size(b)} bytes)" for path, b in sorted(blobs.items())]
        lines += ["", store.get_bytes(blobs["summary.md"]).decode()]
        return "\n".join(lines), sorted(blobs)
    return "", []


def _f(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
