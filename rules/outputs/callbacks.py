"""Callbacks: observers of a run (never part of any key). `local_logger` prints and writes the run dir."""

from __future__ import annotations

from pydantic import BaseModel, Field

from ..plugins.registry import callbacks as callback_registry
from ..plugins.registry import register_callback


def make_callbacks(config, echo) -> list:
    """The config's callbacks, instantiated, printing through `echo`."""
    return [callback_registry.get(c.kind)(echo=echo, **c.params) for c in config.callbacks]


class Callback:
    """Hooks a callback may implement; each gets plain dicts."""

    def on_train_step(self, arm: str, step: int, metrics: dict) -> None: ...

    def on_eval(self, arm: str, step: int, benchmark: str, metrics: dict) -> None: ...

    def on_run_end(self, arm: str, run_dir, status: str) -> None: ...


@register_callback("local_logger")
class LocalLogger(Callback):
    """A line per `print_every` train steps and per eval on stdout; the run dir files are written by the report."""

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
