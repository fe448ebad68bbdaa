"""Supervised fine-tuning over any backend's TrainingClient.

Batches: the data is read as an endless stream of epochs, each a permutation seeded by (seed, epoch);
step k takes stream items [(k-1)*batch_size, k*batch_size). So every batch is full, epochs repeat
when max_steps asks for more, and any step's batch is known without replaying earlier ones (resume).
A step's batch is never larger than the data: with fewer rows than batch_size, a step is one
whole pass, each row once (a batch that straddles two epochs may still hold a row of each).
No length grouping: the local backend packs sequences without padding, so order costs nothing.

Loss normalisation: each step divides every datum's weights by the batch's total raw weight, so the
summed loss the backend minimises is the mean NLL per loss token of the batch (long and short
conversations weigh per token, as in Tinker's cookbook SFT).

Gradient accumulation: a step takes `batch_size × gradient_accumulation_steps` examples from the
stream, normalises them as one batch, and sends them as that many forward_backward calls of
`batch_size` before one optim_step. The gradients add up on the client, so the update is the one
the whole batch would give (up to float summation order), with a micro-batch's memory.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from evsys_build.errors import NodeFailed

from ..backends.base import AdamParams, Datum, PipelinedTrainingClient, SavedCheckpoint, StepFailed, TrainingClient
from .sft import WALL_CLOCK_METRICS as TIMING_METRICS  # noqa: F401  (re-exported for callers of the loop)
from .sft import SFTConfig

if TYPE_CHECKING:
    import numpy as np


def epoch_permutation(num_examples: int, seed: int, epoch: int):
    """The order of examples in `epoch`, a pure function of (seed, epoch)."""
    import numpy as np  # lazily: planning imports this module (to key training) but never trains

    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batch_indices(num_examples: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Example indices of 1-based `step` in the epoch stream."""
    start = (step - 1) * batch_size
    indices = []
    cached: dict = {}
    for position in range(start, start + batch_size):
        epoch, offset = divmod(position, num_examples)
        if epoch not in cached:
            cached[epoch] = epoch_permutation(num_examples, seed, epoch)
        indices.append(int(cached[epoch][offset]))
    return indices


def learning_rate_at(step: int, cfg: SFTConfig) -> float:
    """LR of 1-based `step`: linear warmup over warmup_steps, then constant / linear / cosine decay
    (decays towards 0 at max_steps but never reaches it on a trained step)."""
    i = step - 1
    if i < cfg.warmup_steps:
        return cfg.learning_rate * (i + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    progress = (i - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    if cfg.lr_schedule == "linear":
        return cfg.learning_rate * (1.0 - progress)
    return cfg.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))


def normalized_batch(batch: Sequence[Datum]) -> tuple[list[Datum], float]:
    """Datums with weights divided by the batch's total raw weight, and that total."""
    total = sum(d.loss_weight for d in batch)
    if total <= 0:
        return list(batch), 0.0
    import numpy as np  # lazily, as above

    scale = np.float32(1.0 / total)
    return [Datum(d.input_ids, d.weights * scale) for d in batch], total


def steps_to_save(cfg: SFTConfig, requested: set[int], final_step: int) -> set[int]:
    """The steps to checkpoint: the requested ones, save_every multiples, and the final step."""
    every = set(range(cfg.save_every, final_step + 1, cfg.save_every)) if cfg.save_every else set()
    return {s for s in (set(requested) | every) if 1 <= s <= final_step} | {final_step}


def adam_params(cfg: SFTConfig, learning_rate: float) -> AdamParams:
    return AdamParams(
        learning_rate=learning_rate,
        beta1=cfg.beta1,
        beta2=cfg.beta2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        grad_clip=cfg.grad_clip,
    )


class _Progress:
    """A one-line progress bar on stderr (only when stderr is a terminal)."""

    def __init__(self, first: int, last: int, enabled: bool):
        self.first, self.last = first, last
        self.enabled = enabled and sys.stderr.isatty()
        self.start = time.perf_counter()

    def update(self, step: int, loss: Optional[float]) -> None:
        if not self.enabled:
            return
        done = step - self.first + 1
        elapsed = time.perf_counter() - self.start
        eta = elapsed / done * (self.last - step)
        loss_text = f"{loss:.4f}" if loss is not None else "-"
        sys.stderr.write(f"\rsft step {step}/{self.last}  loss {loss_text}  eta {eta:5.0f}s ")
        if step == self.last:
            sys.stderr.write("\n")
        sys.stderr.flush()


def train_sft(
    client: TrainingClient,
    data: list[Datum],
    cfg: SFTConfig,
    *,
    seed: int,
    save_steps: set[int],
    resume: Optional[SavedCheckpoint],
    on_step: Callable[[int, dict], None],
    on_checkpoint: Callable[[int, SavedCheckpoint], None],
    stop_at: Optional[int] = None,
    show_progress: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
    log: Callable[[str], None] = lambda message: None,
) -> list[dict]:
    """Run SFT steps up to max_steps (or stop_at) and return every step's metrics.

    `on_checkpoint(step, saved)` fires at save_steps, save_every multiples and the final step;
    `resume` (an earlier SavedCheckpoint) continues bit-identically on CPU. When `should_stop()`
    turns true the loop starts no new step: it checkpoints the last finished step (unless that
    is saved already) and returns early, so no finished step is lost.

    A client on a service (`PipelinedTrainingClient`) gets step N+1 submitted before step N's
    result is awaited, as tinker-cookbook's supervised loop does; a local client runs each step
    to the end first. A `StepFailed` from a service is recovered once: the client is recreated
    from the last saved state and the steps after it are trained again.
    """
    if not data:
        raise ValueError("train_sft: no training examples")
    final_step = min(cfg.max_steps, stop_at) if stop_at is not None else cfg.max_steps
    run = _Run(client, data, cfg, seed, on_step, on_checkpoint, _Progress(1, final_step, False))
    first_step = 1
    if resume is not None:
        meta = resume.meta
        _check_resumable(meta, cfg, seed, len(data), client.info())
        continue_like = getattr(client, "continue_like", None)  # optional: run on as the saved steps ran
        said = continue_like(meta.get("info", {})) if continue_like is not None else None
        if said:
            log(said)
        client.load_state(resume.state)
        run.metrics = [dict(m) for m in meta["metrics_so_far"]]
        first_step = int(meta["step"]) + 1
        run.last_saved = resume
    run.saves = steps_to_save(cfg, save_steps, final_step)
    run.progress = _Progress(first_step, final_step, show_progress)  # evsys build draws its own
    recovered = False
    step = first_step
    while True:
        try:
            stopped = run.steps(step, final_step, should_stop)
            break
        except StepFailed as exc:
            if recovered or not isinstance(client, PipelinedTrainingClient):
                raise
            recovered = True
            saved = run.last_saved
            step = int(saved.meta["step"]) + 1 if saved is not None else 1
            log(f"a training step failed on the service ({exc}); recreating the training client from "
                + (f"the state saved at step {step - 1}" if saved is not None else "scratch") + " and training again from there")
            client.recover(saved.state if saved is not None else None)
            run.metrics = [dict(m) for m in saved.meta["metrics_so_far"]] if saved is not None else []
    if stopped:
        done = run.metrics[-1]["step"] if run.metrics else 0
        if done >= first_step and done not in run.saves:
            run.checkpoint(done, run.save_now(done))
    return run.metrics


class _Run:
    """The state of one train_sft call: metrics so far, the last saved checkpoint, the steps in flight."""

    def __init__(self, client, data, cfg, seed, on_step, on_checkpoint, progress):
        self.client, self.data, self.cfg, self.seed = client, data, cfg, seed
        self.on_step, self.on_checkpoint, self.progress = on_step, on_checkpoint, progress
        self.pipelined = isinstance(client, PipelinedTrainingClient)
        self.metrics: list[dict] = []
        self.last_saved: Optional[SavedCheckpoint] = None
        self.saves: set[int] = set()
        self.last_finish = 0.0

    def steps(self, first: int, last: int, should_stop: Callable[[], bool]) -> bool:
        """Train steps first..last; True when `should_stop` ended it early. Steps are submitted one
        ahead on a service; every submitted step is finished (its metrics kept) before returning."""
        in_flight: deque = deque()
        ahead = 1 if self.pipelined else 0
        stopped = False
        for step in range(first, last + 1):
            if should_stop():
                stopped = True
                break
            in_flight.append(self.submit(step))
            while len(in_flight) > ahead:
                self.finish(*in_flight.popleft())
        while in_flight:
            self.finish(*in_flight.popleft())
        return stopped

    def submit(self, step: int) -> tuple:
        """Step `step`'s forward_backward and optim_step (and its checkpoint save, if any), in order."""
        started = time.perf_counter()
        batch = [self.data[i] for i in batch_indices(len(self.data), step_batch(self.cfg, len(self.data)), self.seed, step)]
        normalized, raw_weight = normalized_batch(batch)  # weights over the whole step's batch
        micro = [normalized[i : i + self.cfg.batch_size] for i in range(0, len(normalized), self.cfg.batch_size)]
        lr = learning_rate_at(step, self.cfg)
        if self.pipelined:  # gradients accumulate over the micro-batches until optim_step
            results = [self.client.forward_backward_async(m) for m in micro]
            optim = self.client.optim_step_async(adam_params(self.cfg, lr))
            save = self.client.save_checkpoint_async(f"step-{step}") if step in self.saves else None
        else:
            results = [_Done(self.client.forward_backward(m)) for m in micro]
            optim = _Done(self.client.optim_step(adam_params(self.cfg, lr)))
            save = _Done(self.save_now(step)) if step in self.saves else None
        return step, raw_weight, lr, results, optim, save, started

    def save_now(self, step: int):
        """A checkpoint of the client as it is (after step `step`): submitted and awaited."""
        if self.pipelined:
            return self.client.save_checkpoint_async(f"step-{step}").result()
        return self.client.save_state(), self.client.weights_blobs(), {}

    def finish(self, step, raw_weight, lr, results, optim, save, started) -> None:
        fb = {"loss_sum": 0.0, "num_tokens": 0, "num_loss_tokens": 0}
        for result in results:
            micro = result.result()
            for key in fb:
                fb[key] += micro[key]
        opt = optim.result()
        elapsed = time.perf_counter() - max(started, self.last_finish)  # in flight: since the previous step ended
        self.last_finish = time.perf_counter()
        mean_nll = float(fb["loss_sum"]) if raw_weight > 0 else None  # weights were divided by raw_weight
        metrics = {
            "step": step,
            "train_mean_nll": mean_nll,
            "optim/lr": lr,
            "num_tokens": int(fb["num_tokens"]),
            "num_loss_tokens": int(fb["num_loss_tokens"]),
            "loss_weight": raw_weight,
            "tokens_per_s": fb["num_tokens"] / elapsed if elapsed > 0 else None,
            "step_time_s": elapsed,
        }
        if "grad_norm" in opt:
            metrics["optim/grad_norm"] = opt["grad_norm"]
        _refuse_divergence(step, metrics)
        self.metrics.append(metrics)
        self.on_step(step, metrics)
        self.progress.update(step, mean_nll)
        if save is not None:
            self.checkpoint(step, save.result())

    def checkpoint(self, step: int, saved: tuple) -> None:
        state, weights, remote = saved
        checkpoint = SavedCheckpoint(state, weights, _meta(self.client, self.cfg, self.seed, step, len(self.data), self.metrics), remote)
        self.last_saved = checkpoint
        self.on_checkpoint(step, checkpoint)


def _refuse_divergence(step: int, metrics: dict) -> None:
    """A loss or gradient norm that is not finite means the weights are NaN or about to be: every
    later step and checkpoint would be garbage under a run that says completed. Stop here; the
    checkpoints saved before this step stay stored."""
    for name in ("train_mean_nll", "optim/grad_norm"):
        value = metrics.get(name)
        if value is not None and not math.isfinite(value):
            raise NodeFailed(f"train: {name} is {value} at step {step}: training diverged (lower learning_rate, set grad_clip, "
                             "or look for extreme rows); checkpoints saved before this step are kept")


class _Done:
    """A finished value shaped like a future (local clients compute at once)."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def _check_resumable(meta: dict, cfg: SFTConfig, seed: int, num_examples: int, info: dict) -> None:
    """Refuse a checkpoint whose batch stream or precision would differ from this run's: training
    never resumes across a different device type, dtype or attention kernel."""
    expected = {"seed": seed, "batch_size": step_batch(cfg, num_examples), "num_examples": num_examples, "lora_rank": cfg.lora_rank}
    differ = {k: (meta.get(k), v) for k, v in expected.items() if k in meta and meta[k] != v}
    saved = meta.get("info", {})
    for k in PRECISION_FIELDS:
        was, now = _precision(saved, k), _precision(info, k)
        if was is not None and now is not None and was != now:
            differ[k] = (was, now)
    if differ:
        raise ValueError(f"train_sft: cannot resume, checkpoint differs from this run in (saved, now): {differ}")


PRECISION_FIELDS = ("device", "dtype", "attention")


def _precision(info: dict, field: str):
    value = info.get(field)
    return value.split(":", 1)[0] if field == "device" and isinstance(value, str) else value  # cuda:0 and cuda:1 train alike


def step_batch(cfg: SFTConfig, num_examples: int) -> int:
    """Examples per optimizer step: micro-batch × accumulation, but never more than the rows
    there are (a larger batch would hold each row several times over, and pass over the data
    more often than num_epochs says)."""
    return min(cfg.batch_size * getattr(cfg, "gradient_accumulation_steps", 1), max(1, num_examples))


def _meta(client: TrainingClient, cfg: SFTConfig, seed: int, step: int, num_examples: int, metrics: list[dict]) -> dict:
    """What a checkpoint records besides the client's state: the step, the data position, the
    metrics so far, and what resume checks (seed, batch size, data size, rank, precision)."""
    position = step * step_batch(cfg, num_examples)
    return {
        "step": step,
        "epoch": position // num_examples,
        "position": position,
        "metrics_so_far": [dict(m) for m in metrics],
        "lora_rank": cfg.lora_rank,
        "seed": seed,
        "batch_size": step_batch(cfg, num_examples),
        "num_examples": num_examples,
        "info": client.info(),
    }
