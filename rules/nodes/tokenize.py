"""The `tokenize` node: chat rows -> input ids + per-token loss weights, per chunk, with the
model's own tokenizer and chat template. Its key holds the tokenizer files' digests and the
algorithm params that shape tokens (supervise, max_length, truncation)."""

from __future__ import annotations

import functools
import threading
from pathlib import Path

from evsys_build.chunk_workers import ChunkWorkers, Standby, start_standby, store_address
from evsys_build.chunks import map_chunks
from evsys_build.errors import ConfigError
from evsys_build.executor import RunContext
from evsys_build.graph import Node
from evsys_build.hashing import digest
from evsys_build.store import Store

from ..config.loading import Arm
from ..data.tokenize_chunk import TokenShaping, refused_row, start_tokenize_worker, tokenize_chunk, tokenize_chunk_in_worker
from ..data.tokenizer_snapshot import load_chat_tokenizer, save_chat_recipes, tokenizer_code, tokenizer_library_versions
from ..models.resolve import ResolvedModel, tokenizer_files
from ..plugins.code_identity import code_identity
from .row_chunks import chunk_starts, row_location, stage_identity
from .views import RowDataset, TokenDataset

SHAPING_PARAMS = ("supervise", "max_length", "truncation")  # algorithm params that shape the tokens, not training
SHAPING_DEFAULTS = {"supervise": "all_assistant", "max_length": 2048, "truncation": "right"}  # for an algorithm without them


def token_shaping(algo) -> dict:
    """The algorithm's shaping params, each at its default where the algorithm has none."""
    return {k: getattr(algo, k, SHAPING_DEFAULTS[k]) for k in SHAPING_PARAMS}


def tokenize_node(arm: Arm, rows: Node, model: ResolvedModel) -> Node:
    algo = arm.params["algorithm"]
    return Node(
        rule="tokenize",
        name="tokenize",
        version=code_identity(run_tokenize),
        params={
            "tokenizer": model.tokenizer,
            **token_shaping(algo),
            "libraries": tokenizer_libraries(model),
            **clock_params(model),
        },
        inputs=[("rows", rows)],
        run=run_tokenize,
        arm=arm.name,
        param_paths={k: f"algorithm.params.{k}" for k in SHAPING_PARAMS},
        param_labels={"tokenizer": "tokenizer file {name} changed", "libraries": "tokenizer library versions changed",
                      "clock": "the date the chat template renders changed"},
        payload={"model_dir": model.dir, "tokenizer_code": tokenizer_code()},
        warm=functools.partial(warm_tokenizer, str(model.dir), tokenizer_code()),
    )


def tokenizer_libraries(model: ResolvedModel) -> dict[str, str | None]:
    """The versions of what renders and encodes with the model's tokenizer (the tokenizer
    snapshot is keyed by the same ones)."""
    return tokenizer_library_versions(model.tokenizer)


def clock_params(model: ResolvedModel) -> dict:
    """`{"clock": ...}` when the model's chat template renders the date (`template_clock`), else
    nothing: the tokenize, eval and held-out keys hold it in this one shape."""
    return {"clock": model.clock} if model.clock is not None else {}


def warm_tokenizer(model_dir: str, code: str, store: Store) -> Standby | None:
    """Start a worker process that loads the tokenizer (capturing its snapshot on a first build)
    while the stages before this one run, for this node's map to adopt: loading it here would hold
    this process's GIL (AutoTokenizer's imports for seconds; even a snapshot for a third of a
    second) while those stages need it, and a one-row edit then tokenizes its chunk in that worker."""
    return start_standby(standby_key(store, model_dir, code), functools.partial(start_tokenize_worker, store_address(store), model_dir, code))


def standby_key(store: Store, model_dir: str, code: str) -> str:
    return digest({"rule": "tokenize", "store": store_address(store), "model_dir": str(model_dir), "code": code})


def run_tokenize(ctx: RunContext) -> dict:
    model_dir = str(ctx.node.payload["model_dir"])
    code = ctx.node.payload["tokenizer_code"]
    p = ctx.node.params
    shaping = TokenShaping(p["supervise"], p["max_length"], p["truncation"], p.get("clock"))
    store = ctx.store
    loaded: list = []
    loading = threading.Lock()

    def tokenizer():
        """Loaded on the first chunk that misses: a rebuild that reruns none pays nothing for it."""
        with loading:
            if not loaded:
                loaded.append(load_chat_tokenizer(model_dir, store, code))
        return loaded[0]

    dataset = RowDataset.of(ctx.inputs["rows"])
    starts = chunk_starts(dataset.chunks)
    address = store_address(store)
    workers = ChunkWorkers(
        task=tokenize_chunk_in_worker,
        args_of=lambda chunk: (address, model_dir, code, shaping, chunk, starts[chunk["blob"]]),
        start=functools.partial(start_tokenize_worker, address, model_dir, code),
        standby=standby_key(store, model_dir, code),
    )
    try:
        chunks, stats = map_chunks(
            store, dataset.chunks, stage_identity(ctx),
            lambda chunk: tokenize_chunk(store, tokenizer(), chunk, starts[chunk["blob"]], shaping),
            ctx.progress, ctx.check_stop, workers,
        )
    except ConfigError as exc:  # name the row by where it came from: data/train.jsonl:6
        refused = refused_row(exc)
        if refused is None:
            raise
        located = row_location(store, ctx.node.inputs[0][1], refused[0])
        raise ConfigError(f"{located}: tokenize: {refused[1]}") from None
    if loaded:
        save_chat_recipes(loaded[0], model_dir, store, code)
    files = tokenizer_files(Path(model_dir))
    kept = [f for f in files if f.name not in ("vocab.json", "merges.txt")] if any(f.name == "tokenizer.json" for f in files) else files
    tokens = TokenDataset([c for c in chunks if c["rows"]], {f.relative_to(model_dir).as_posix(): store.put_bytes(f.read_bytes()) for f in kept})
    cut = tokens.cut_summary(shaping.max_length, shaping.truncation)
    if cut:  # not an error (the rows still train), but what a long row loses should be seen
        ctx.log(f"{cut}; raise algorithm.params.max_length or drop long rows with a filter transform")
    return {
        "outputs": tokens.outputs(),
        "attachments": tokens.attachments(),
        "stats": dict(stats, rows=tokens.num_rows, tokens=tokens.num_tokens, loss_tokens=tokens.num_loss_tokens),
    }
