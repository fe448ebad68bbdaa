"""Experiment trackers as callbacks: `wandb` and `tensorboard`, fed the events `local_logger` gets
(live while nodes run, and the stored history of what a build served from cache: hub.py).

Both are optional extras (`pip install "evsys[wandb]"`, `"evsys[tensorboard]"`); each is imported
when its callback starts, so a config without them never loads them. Event files are written with
TensorBoard's own TF-free writer and protos (tensorboardX and torch.utils.tensorboard would import
torch), so replaying a cached build stays light.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, Field, model_validator

from evsys_build.errors import ConfigError

from ..plugins.registry import register_callback
from .callbacks import Callback


def _numeric(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _run_label(info: dict) -> str:
    """`<run_name>` for a single-arm experiment, `<run_name>/<arm>` when there are arms."""
    return info["run_name"] if info.get("arms", 1) == 1 else f"{info['run_name']}/{info['arm']}"


def _missing(package: str, extra: str) -> ConfigError:
    return ConfigError(f"callbacks: kind {extra} needs the `{package}` package; install it with: pip install \"evsys[{extra}]\"")


def _installed(package: str, extra: str):
    """A Config validator: the tracker's package must be installed (found without importing it)."""

    def check(self):
        if importlib.util.find_spec(package) is None:
            raise ValueError(f"the {extra} callback needs the `{package}` package: pip install \"evsys[{extra}]\"")
        return self

    return model_validator(mode="after")(check)


@register_callback("tensorboard")
class TensorBoardLogger(Callback):
    """Scalars in TensorBoard event files: `train/<metric>` per step and each eval metric
    (`<split>/<benchmark>/<metric>`, as metrics.jsonl names it) at its step. One folder per arm,
    `<log_dir>/<run_name>[/<arm>]`, rewritten with the whole run by every build (its old event
    files there are replaced), so TensorBoard always shows each arm once."""

    path_params = ("log_dir",)  # the Python API's base_dir resolves it

    class Config(BaseModel, extra="forbid"):
        log_dir: Optional[str] = None  # default: <output_dir>/tensorboard
        flush_secs: int = Field(10, ge=1)  # how often the writer flushes to disk

        _needs_package = _installed("tensorboard", "tensorboard")

    def __init__(self, echo=print, **kw):
        self.cfg = self.Config(**kw)
        self.echo = echo
        self.writer = None
        self.folder: Path | None = None

    def on_run_start(self, arm: str, info: dict) -> None:
        try:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError:
            raise _missing("tensorboard", "tensorboard") from None
        base = Path(self.cfg.log_dir) if self.cfg.log_dir else Path(info["output_dir"]) / "tensorboard"
        self.folder = base / _run_label(info)
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob("events.out.tfevents.*"):
            old.unlink()  # this build writes the whole run again
        self.writer = EventFileWriter(str(self.folder), flush_secs=self.cfg.flush_secs)

    def _scalars(self, step: int, values: dict) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=v) for tag, v in values.items()])
        self.writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def on_train_step(self, arm: str, step: int, metrics: dict) -> None:
        self._scalars(step, {f"train/{k}": v for k, v in _numeric(metrics).items()})

    def on_eval(self, arm: str, step: int, benchmark: str, metrics: dict) -> None:
        self._scalars(step, _numeric(metrics))

    def on_run_end(self, arm: str, run_dir, status: str) -> None:
        if self.writer is not None:
            self.writer.close()
            self.echo(f"        [{arm}] tensorboard: {self.folder}")


@register_callback("wandb")
class WandbLogger(Callback):
    """A Weights & Biases run per arm and build: the arm's config, `train/<metric>` per step and
    each eval metric at its step (all against a `step` axis, so evals may arrive after later train
    steps), the build's status in the summary. Offline without a network: `mode: offline` or
    WANDB_MODE=offline (then `wandb sync` uploads later); WANDB_DIR or `dir` say where files go."""

    path_params = ("dir",)  # the Python API's base_dir resolves it

    class Config(BaseModel, extra="forbid"):
        project: Optional[str] = None  # default: the experiment's name
        entity: Optional[str] = None  # the W&B team or user; default: yours
        mode: Optional[Literal["online", "offline", "disabled"]] = None  # default: WANDB_MODE, else wandb's own default
        dir: Optional[str] = None  # default: WANDB_DIR, else <output_dir>
        group: Optional[str] = None  # default: the run_name (arms of one experiment side by side)
        tags: list[str] = Field(default_factory=list)  # tags on every run

        _needs_package = _installed("wandb", "wandb")

    def __init__(self, echo=print, **kw):
        self.cfg = self.Config(**kw)
        self.echo = echo
        self.run = None

    def on_run_start(self, arm: str, info: dict) -> None:
        try:
            import wandb
        except ImportError:
            raise _missing("wandb", "wandb") from None
        folder = self.cfg.dir or os.environ.get("WANDB_DIR") or info["output_dir"]
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=self.cfg.project or info["experiment"],
            entity=self.cfg.entity,
            name=_run_label(info),
            group=self.cfg.group or info["run_name"],
            tags=self.cfg.tags or None,
            config={"arm": arm, **info["config"]},
            mode=self.cfg.mode,
            dir=folder,
            job_type="train",
            reinit="create_new",
            settings=wandb.Settings(console="off", silent=True),
        )
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def on_train_step(self, arm: str, step: int, metrics: dict) -> None:
        self.run.log({"step": step, **{f"train/{k}": v for k, v in _numeric(metrics).items()}})

    def on_eval(self, arm: str, step: int, benchmark: str, metrics: dict) -> None:
        self.run.log({"step": step, **_numeric(metrics)})

    def on_run_end(self, arm: str, run_dir, status: str) -> None:
        if self.run is None:
            return
        self.run.summary["evsys_status"] = status
        if run_dir is not None:
            self.run.summary["evsys_run_dir"] = str(run_dir)
        self.run.finish(exit_code=0 if status in ("completed", "partial") else 1)
        self.run = None
