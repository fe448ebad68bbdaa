"""Held-out loss: a `kind: nll` benchmark scores a checkpoint by the mean NLL per loss token of
chat rows it did not train on (tokenized exactly as training rows are: same template, same
`supervise`, `max_length`, `truncation`).

One node per (benchmark, checkpoint), named `eval <benchmark>@<step>` like a task benchmark's;
its key holds the checkpoint's content, the rows' bytes, the base model and tokenizer files, the
shaping params, the backend's precision and the scorer's code and libraries. Its metric lands in
metrics.jsonl as `<split>/<benchmark>/nll`; its predictions are one line per row (row, nll,
loss_tokens).
"""

from __future__ import annotations

import json
from pathlib import Path

from evsys_build.errors import ConfigError
from evsys_build.executor import RunContext
from evsys_build.graph import Node
from evsys_build.statcache import StatCache

from ..config.loading import Arm, located_by
from ..data.chat_tokens import load_tokenizer, tokenize_conversations
from ..data.template_clock import pinned
from ..data.sources import read_jsonl
from ..ml_stack import preload_ml
from ..models.resolve import ResolvedModel
from ..outputs.hub import notify_eval, printing_to
from ..plugins import kinds
from ..plugins.code_identity import code_identity
from ..plugins.installed import library_versions
from .tokenize import SHAPING_DEFAULTS, SHAPING_PARAMS, clock_params, tokenizer_libraries
from .train import backend_code, backend_config, backend_environment, keyed_backend_params, make_backend
from .views import Checkpoint, EvalResult


def heldout_nodes(arm: Arm, bench, checkpoints: dict[int, Node], model: ResolvedModel, statcache: StatCache, callbacks=None, resources: dict | None = None, spots: dict | None = None) -> list[tuple]:
    """(benchmark, step, node) for each checkpoint the benchmark scores."""
    backend_cls = kinds.backends.get(arm.config.backend.kind)
    algo = arm.params["algorithm"]
    index = next(i for i, b in enumerate(arm.config.metadata.benchmark) if b is bench)
    scorer = "score_from_weights"  # check_heldout refused a backend without it
    params = {
        "rows": statcache.file_digest(Path(bench.path)),
        "shaping": heldout_shaping(algo, bench),
        "model": {"base": model.identity, "tokenizer": model.tokenizer, "libraries": tokenizer_libraries(model), **clock_params(model)},
        "scorer": {
            "code": backend_code(backend_cls, scorer),
            "precision": keyed_backend_params(backend_cls, backend_config(backend_cls, arm)),
            "libraries": library_versions(*getattr(backend_cls, "libraries", ())),
            **backend_environment(backend_cls, scorer),
        },
    }
    return [
        (
            bench,
            step,
            Node(
                rule="nll",
                name=f"eval {bench.name}@{step}",
                version=code_identity(run_heldout),
                params=params,
                inputs=[("checkpoint", checkpoint)],
                run=run_heldout,
                arm=arm.name,
                param_paths={"shaping": "algorithm.params" if not bench_shaping(bench) else f"metadata.benchmark[{index}]"},  # where the plan's reason points
                param_labels={"rows": f"benchmark {bench.name} rows changed", "model": "base model or tokenizer changed", "scorer": "scoring code, precision or libraries changed"},
                payload={"arm": arm, "bench": bench, "step": step, "model_dir": model.dir, "callbacks": callbacks, "spots": spots},
                resources=dict(resources or {}),
            ),
        )
        for step, checkpoint in sorted(checkpoints.items())
    ]


def bench_shaping(bench) -> dict:
    """What a kind: nll benchmark sets itself of the shaping params (over the algorithm's)."""
    return {k: getattr(bench, k) for k in ("supervise", "max_length") if getattr(bench, k, None) is not None}


def heldout_shaping(algo, bench) -> dict:
    """The shaping params the held-out rows are tokenized with: the algorithm's, unless the
    benchmark sets its own (then arms that train differently are scored on the same tokens)."""
    return {**{k: getattr(algo, k) for k in SHAPING_PARAMS if hasattr(algo, k)}, **bench_shaping(bench)}


def read_heldout(path: Path) -> tuple[list[dict], list[str]]:
    """The file's chat rows and each one's `file:line`; a row without messages, or no row at all, is one line."""
    rows, wheres = [], []
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            for row in read_jsonl(path, lineno, data=line):
                where = f"{path}:{lineno}"
                if row.get("messages") is None:
                    raise ConfigError(f"{where}: messages: the row has none (a kind: nll benchmark reads chat rows)")
                rows.append(row)
                wheres.append(where)
    if not rows:
        raise ConfigError(f"{path}: no rows (add one chat row per line)")
    return rows, wheres


def heldout_rows(path: Path, tok, shaping: dict) -> list[tuple[list[int], list[float]]]:
    """Every row of the file tokenized as training would (one batched call); a bad row names its file:line."""
    rows, wheres = read_heldout(path)
    shaping = {**SHAPING_DEFAULTS, **shaping}
    return tokenize_conversations(tok, rows, shaping["supervise"], shaping["max_length"], shaping["truncation"], wheres)


def run_heldout(ctx: RunContext) -> dict:
    with located_by(ctx.node.payload.get("spots")):  # a backend's refusal names the config line
        return _score(ctx)


def _score(ctx: RunContext) -> dict:
    preload_ml()
    from ..backends.base import Datum  # lazily: numpy loads only when scoring runs

    payload = ctx.node.payload
    arm, bench, step = payload["arm"], payload["bench"], payload["step"]
    tok = load_tokenizer(str(payload["model_dir"]))
    with pinned(ctx.node.params["model"].get("clock")):
        rows = heldout_rows(Path(bench.path), tok, ctx.node.params["shaping"])
    backend = make_backend(arm)
    weights = {name: ctx.store.get_bytes(blob) for name, blob in Checkpoint.of(ctx.inputs["checkpoint"]).weights.items()}
    ctx.progress(0, len(rows), f"scoring {len(rows)} rows")
    per_row = backend.score_from_weights(payload["model_dir"], weights, [Datum(ids, w) for ids, w in rows])
    loss = sum(nll for nll, _ in per_row)
    tokens = sum(n for _, n in per_row)
    metrics = {"nll": loss / tokens if tokens else None}
    lines = [{"row": i, "step": step, "nll": (nll / n if n else None), "loss_tokens": n} for i, (nll, n) in enumerate(per_row)]
    hub = payload.get("callbacks")
    with printing_to(hub, ctx.log):
        notify_eval(hub, step, bench.name, {f"{bench.split}/{bench.name}/nll": metrics["nll"]})
    data = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines).encode()
    return {
        "outputs": EvalResult(ctx.store.put_bytes(data), metrics).outputs(),
        "metrics": metrics,
        "stats": {"step": step, "benchmark": bench.name, "split": bench.split, "rows": len(rows), "loss_tokens": tokens},
    }
