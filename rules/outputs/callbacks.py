"""Callbacks: observers of a run (never part of any key). `local_logger` prints; the run dir files
are written by the report node. `wandb` and `tensorboard` live in trackers.py.

The protocol (every hook optional; a callback class takes `echo` and its params as keywords):

    on_run_start(arm, info)                   first event of a build for this arm; info: experiment,
                                              run_name, arm, config (the arm's config as a dict), run_dir
    on_train_step(arm, step, metrics)         every optimizer step (train_mean_nll, optim/lr, ...)
    on_eval(arm, step, benchmark, metrics)    every scored checkpoint ("<split>/<benchmark>/<metric>")
    on_run_end(arm, run_dir, status)          once, after the build: completed, failed, interrupted, partial

Events reach callbacks live while nodes run; what a build served from the store (cached
training, cached evals, the steps before a resume) is replayed from the stored history before
`on_run_end`, so a callback always sees the whole run exactly once per build (hub.py).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from ..plugins.registry import callbacks as callback_registry
from ..plugins.registry import register_callback


def make_callbacks(specs, echo) -> list:
    """The callbacks of `specs` (a config's `callbacks:` list), instantiated, printing through `echo`."""
    return [callback_registry.get(c.kind)(echo=echo, **c.params) for c in specs]


class Callback:
    """Hooks a callback may implement; each gets plain dicts. Subclassing is optional."""

    def on_run_start(self, arm: str, info: dict) -> None: ...

    def on_train_step(self, arm: str, step: int, metrics: dict) -> None: ...

    def on_eval(self, arm: str, step: int, benchmark: str, metrics: dict) -> None: ...

    def on_run_end(self, arm: str, run_dir, status: str) -> None: ...


@register_callback("local_logger")
class LocalLogger(Callback):
    """A line per `print_every` train steps and per eval on stdout while nodes run; the run dir
    files are written by the report. History replayed from the store is not printed again."""

    replay = False  # the run dir already holds the whole run; reprinting it would only be noise

    class Config(BaseModel, extra="forbid"):
        print_every: int = Field(1, ge=1)  # steps between printed lines

    def __init__(self, echo=print, **kw):
        self.cfg = self.Config(**kw)
        self.echo = echo

    def on_train_step(self, arm: str, step: int, metrics: dict) -> None:
        if step % self.cfg.print_every == 0:
            shown = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items() if k in ("train_mean_nll", "optim/lr", "num_loss_tokens", "tokens_per_s"))
            self.echo(f"        [{arm}] step {step}: {shown}")

    def on_eval(self, arm: str, step: int, benchmark: str, metrics: dict) -> None:
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
        self.echo(f"        [{arm}] step {step} eval {benchmark}: {shown}")


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
