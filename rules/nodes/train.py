"""The `train` node and the `checkpoint` nodes it produces.

The train key holds the model's bytes, the backend settings that change the trajectory, the
algorithm and its params, the seed, and the tokens (its input). Checkpoint keys depend only on
(train key, step), so a killed build resumes from the newest stored checkpoint, and a checkpoint
that a new eval schedule needs is filled in by resuming from the nearest earlier one.
"""

from __future__ import annotations

import inspect
import json
from typing import Iterable

from evsys_build.errors import ConfigError, Interrupted, NodeFailed
from evsys_build.executor import RunContext
from evsys_build.graph import Node
from evsys_build.hashing import canonical_json, digest_bytes
from evsys_build.planner import cached_manifest
from evsys_build.store import Store

from ..backends.base import Datum, SavedCheckpoint, StepFailed
from ..algorithms.sft import WALL_CLOCK_METRICS
from ..config.keyed_params import keyed_dump, with_mapping_orders
from ..config.loading import Arm, located_by
from ..ml_stack import preload_ml
from ..models.resolve import ResolvedModel, local_model_dir
from ..outputs.hub import notify_train_step, printing_to
from ..plugins import kinds
from ..plugins.code_identity import code_identity, declared_version, method_identity
from ..plugins.environment_reads import environment_param
from ..plugins.installed import library_versions
from .steps import EMPTY_DATASET
from .tokenize import SHAPING_PARAMS
from .views import Checkpoint, TokenDataset, TrainResult, with_timings

SCHEDULE_PARAMS = ("save_every",)  # which checkpoints are stored, not what training computes


def backend_environment(backend_cls, method: str) -> dict:
    """What the modules behind a plugin backend's `method` read of the environment: in its train,
    eval and held-out keys, as `backend_code` is."""
    return environment_param(getattr(backend_cls, method), f"the backend {getattr(backend_cls, '__name__', backend_cls)}")


def train_node(arm: Arm, tokens: Node, model: ResolvedModel, callbacks=None, data_where: str = "data", spots: dict | None = None) -> Node:
    """The arm's train node (its checkpoints are attached by `attach_checkpoints`)."""
    cfg = arm.config
    backend_cls = kinds.backends.get(cfg.backend.kind)
    algo_cls = kinds.algorithms.get(cfg.algorithm.kind)
    if not callable(getattr(algo_cls, "train", None)):
        raise ConfigError(f"algorithm.kind: {cfg.algorithm.kind!r} has no train(client, data, cfg, **kw) method (see docs/plugins.md)")
    algo = arm.params["algorithm"]
    algo_params = {k: v for k, v in keyed_dump(algo, mode="json").items() if k not in SHAPING_PARAMS + SCHEDULE_PARAMS}
    algo_params = with_mapping_orders(algo_params, algo)
    backend = make_backend(arm)
    return Node(
        rule="train",
        name="train",
        version=code_identity(run_train),
        params={
            "model": model.identity,
            "backend": {
                "kind": cfg.backend.kind,
                "params": keyed_backend_params(backend_cls, backend_config(backend_cls, arm)),
                "code": backend_code(backend_cls, "create_training_client"),
                "libraries": library_versions(*getattr(backend_cls, "libraries", ())),
                **backend_environment(backend_cls, "create_training_client"),
            },
            "algorithm": {"kind": cfg.algorithm.kind, "params": algo_params, "code": code_identity(algo_cls),
                          **({"libraries": library_versions(*algo_cls.libraries)} if getattr(algo_cls, "libraries", ()) else {}),
                          **environment_param(algo_cls, f"the algorithm {cfg.algorithm.kind}")},
            "seed": cfg.seed,
        },
        inputs=[("tokens", tokens)],
        run=run_train,
        arm=arm.name,
        param_paths={"seed": "seed"},
        param_labels={"model": f"model changed ({cfg.model.name})"},
        payload={"arm": arm, "model_dir": model.dir, "backend": backend, "algorithm": algo, "algorithm_cls": algo_cls, "callbacks": callbacks, "data_where": data_where, "spots": spots},
        resources=backend_resources(backend),
        estimate=estimate_training,
    )


def backend_code(backend_cls, method: str) -> str:
    """A backend method's code identity as its class runs it (`self.helper()` included), with the
    class's `Config` (its defaults are settings a config leaves out). A `version` set on the class
    pins both."""
    version = declared_version(backend_cls)
    if version is not None:
        return f"version:{version}"
    config_cls = getattr(backend_cls, "Config", None)
    config = code_identity(config_cls) if isinstance(config_cls, type) else None
    return method_identity(backend_cls, method) + (f"+config:{config}" if config else "")


def keyed_backend_params(backend_cls, backend_cfg, left_out: str = "sampling_only_params") -> dict:
    """The backend's settings a key holds: those set away from their defaults, less the ones the
    backend lists under `left_out` (sampling_only_params for training, training_only_params for
    sampling: their effect reaches the other side through the checkpoint's bytes)."""
    if backend_cfg is None:
        return {}
    skipped = set(getattr(backend_cls, left_out, ()))
    params = {k: v for k, v in keyed_dump(backend_cfg, mode="json").items() if k not in skipped}
    return with_mapping_orders(params, backend_cfg)


BUILT_ON = ("device", "dtype", "attention", "cpu_threads")  # what a train or checkpoint manifest says it ran on


def ready_args(backend, arm: Arm) -> dict:
    """What `check_ready` is told: for a backend that trains by name, the base model, the LoRA
    rank and (where its check takes it) the longest row."""
    if not getattr(backend, "trains_by_name", False):
        return {}
    algo = arm.params["algorithm"]
    args = {"base_model": arm.config.model.name, "lora_rank": algo.lora_rank}
    if "max_length" in inspect.signature(backend.check_ready).parameters and getattr(algo, "max_length", None) is not None:
        args["max_length"] = algo.max_length
    return args


def make_backend(arm: Arm):
    """The arm's backend, built from its validated Config with `auto` settings resolved."""
    backend_cls = kinds.backends.get(arm.config.backend.kind)
    return backend_cls(backend_config(backend_cls, arm))


def backend_resources(backend) -> dict:
    """What a node that trains or samples on `backend` asks of a cluster: a GPU when the backend
    computes on one (its optional `node_resources()`); a hosted backend asks for nothing special."""
    hook = getattr(backend, "node_resources", None)
    return dict(hook()) if hook is not None else {}


def backend_config(backend_cls, arm: Arm):
    """The arm's backend Config; a backend with a `resolve` hook makes `auto` settings explicit
    (the local backend's device, dtype and attention), so they are in the key."""
    config = arm.params["backend"]
    resolve = getattr(backend_cls, "resolve", None)
    return resolve(config) if resolve is not None and config is not None else config


def checkpoint_node(train: Node, step: int, arm: str | None = None) -> Node:
    """The checkpoint of `train` after `step` optimizer steps, for `arm` (default: the train
    node's; arms share a train node); its key depends only on (train key, step)."""
    node = Node(
        rule="checkpoint",
        name=f"checkpoint@{step}",
        version=code_identity(checkpoint_body),
        params={"step": step},
        inputs=[("train", train)],
        arm=arm or train.arm,
        produced_by=train,
        check_stored=remote_references_lost,
    )
    if train.key is not None:
        node.key = node.key_for({})
    return node


def stored_checkpoint_steps(arm: Arm) -> list[int]:
    """Every step the arm stores a checkpoint at: what its evals need (run_every), save_every, and the final step."""
    algo = arm.params["algorithm"]
    max_steps = algo.max_steps
    steps = {max_steps}
    for bench in arm.config.metadata.benchmark:
        if bench.run_every:
            steps.update(range(bench.run_every, max_steps + 1, bench.run_every))
    if getattr(algo, "save_every", 0):
        steps.update(range(algo.save_every, max_steps + 1, algo.save_every))
    return sorted(steps)


def attach_checkpoints(train: Node, checkpoints: dict[int, Node]) -> None:
    """Arms that differ only in evals share one train node: it must save every arm's checkpoints."""
    shared = train.payload.setdefault("checkpoints", {})
    shared.update(checkpoints)
    train.produces = [shared[s] for s in sorted(shared)]


def run_train(ctx: RunContext) -> dict:
    with located_by(ctx.node.payload.get("spots")):  # a backend's refusal names the config line
        return _train(ctx)


def _train(ctx: RunContext) -> dict:
    preload_ml()
    from ..data.token_chunks import iter_token_rows  # lazily: numpy loads only when training runs

    payload = ctx.node.payload
    arm, algo = payload["arm"], payload["algorithm"]
    backend = payload["backend"]
    by_name = getattr(backend, "trains_by_name", False)
    if hasattr(backend, "check_ready"):
        backend.check_ready(**ready_args(backend, arm))
    checkpoints = payload["checkpoints"]
    final_step = algo.max_steps
    missing = [s for s, n in sorted(checkpoints.items()) if not usable(ctx.store, n)]
    if not missing:  # every checkpoint stored (the build died just before this manifest): nothing to train
        return _train_result(ctx.store, checkpoints[final_step])
    resume_step = newest_stored_step(ctx.store, ctx.node, below=missing[0])
    resume = load_checkpoint(ctx.store, checkpoint_node(ctx.node, resume_step).key) if resume_step else None
    if resume_step:
        ctx.log(f"resuming {ctx.node.name} from checkpoint@{resume_step}")
    data = [Datum(ids, w) for ids, w in iter_token_rows(ctx.store, TokenDataset.of(ctx.inputs["tokens"]).chunks)]
    if not data:
        raise ConfigError(f"{payload['data_where']}: {EMPTY_DATASET}")
    client = backend.create_training_client(payload["model_dir"], algo.lora_rank, arm.config.seed, **({"base_model": arm.config.model.name} if by_name else {}))
    hub = payload.get("callbacks")
    saved_steps: list[int] = []

    def on_step(step: int, metrics: dict) -> None:
        ctx.progress(step, missing[-1], f"loss {metrics['train_mean_nll']:.4f}")
        notify_train_step(hub, step, metrics)

    def on_checkpoint(step: int, saved: SavedCheckpoint) -> None:
        node = checkpoints.get(step) or checkpoint_node(ctx.node, step)
        saved_steps.append(step)
        if not usable(ctx.store, node):
            body = checkpoint_body(ctx.store, saved, arm.config.model.name, arm.config.model.revision, local_model_dir(arm.config.model.name, payload["model_dir"]), _service(backend), ctx.node.params["model"])
            ctx.publish(node, body)

    try:
        with printing_to(hub, ctx.log):
            history = payload["algorithm_cls"].train(
                client,
                data,
                algo,
                seed=arm.config.seed,
                save_steps=set(checkpoints),
                resume=resume,
                on_step=on_step,
                on_checkpoint=on_checkpoint,
                stop_at=missing[-1],
                should_stop=ctx.stop_requested,
                log=ctx.log,
            )
    except StepFailed as exc:  # the loop already recovered from one
        raise NodeFailed(f"{ctx.node.name}: {exc}, again after recreating the training client") from None
    done = history[-1]["step"] if history else 0
    if done < missing[-1]:
        kept = (f"checkpoint@{saved_steps[-1]} saved" if saved_steps else f"checkpoint@{resume_step} kept, the next build resumes from it" if resume_step
                else "no step finished")
        raise Interrupted(f"{ctx.node.name} stopped after step {done} of {final_step} ({kept})")
    return _train_result(ctx.store, checkpoints[final_step])


def newest_stored_step(store: Store, train: Node, below: int) -> int:
    """The newest step < `below` with a fully stored, usable checkpoint of this train node (0 = none).
    Any step may have one (a stopped training saves where it stopped): each step's key is
    computed without building its node, and only a checkpoint whose manifest is here (or that an
    upstream store may hold) is built and checked."""
    keys = checkpoint_keys(train, range(below - 1, 0, -1))
    here = set(keys.values()) if store.upstream is not None else store.stored_manifests(keys.values())
    for step, key in keys.items():
        if key in here and usable(store, checkpoint_node(train, step)):
            return step
    return 0


_STEP_PROBE = -7_346_519_283  # no checkpoint's step: its digits mark where a step goes in a key's canonical JSON


def checkpoint_keys(train: Node, steps: Iterable[int]) -> dict[int, str]:
    """`checkpoint_node(train, step).key` for each step, in order: the canonical JSON the key is the
    digest of is made once, for a probe step, and each step's digits put in its place (what
    `digest` hashes for that step: an int's canonical form is its decimal text)."""
    text = canonical_json(checkpoint_node(train, _STEP_PROBE).key_material({}))
    head, probe, tail = text.partition(str(_STEP_PROBE))
    if not probe or str(_STEP_PROBE) in tail:  # not exactly once: build each node
        return {step: checkpoint_node(train, step).key_for({}) for step in steps}
    return {step: digest_bytes(f"{head}{int(step)}{tail}".encode()) for step in steps}


def usable(store: Store, checkpoint: Node) -> bool:
    """Stored completely, and whatever it references on a service still exists there."""
    return cached_manifest(store, checkpoint) is not None


def remote_references_lost(manifest: dict) -> str | None:
    """Why a checkpoint is unusable: its references on a service (tinker:// paths) are gone. None
    when it has none, when they exist, or when the service cannot be asked (no key, offline)."""
    remote = (manifest.get("attachments") or {}).get("remote")
    if not remote:
        return None
    service = remote.get("service", {})
    if service.get("backend") not in kinds.backends:
        return None
    check = getattr(kinds.backends.get(service["backend"]), "missing_remote", None)
    missing = check(sorted(remote.get("refs", {}).values()), service) if check else None
    return "; ".join(sorted(missing.values())) if missing else None


def _service(backend) -> dict:
    service = getattr(backend, "service", None)
    return service() if service is not None else {}


def estimate_training(store: Store, train: Node, inputs: dict) -> dict:
    """What `plan` says a train node that runs will cost: the steps left (after the newest usable
    checkpoint), and the tokens and loss tokens they process, from the tokenized data's mean row
    length (plan never loads numpy, so not row by row). Tokens are unknown until tokenize ran."""
    algo = train.payload["algorithm"]
    first_missing = algo.max_steps
    if train.key is not None:
        missing = [s for s, n in sorted(train.payload.get("checkpoints", {}).items()) if not usable(store, n)]
        first_missing = missing[0] if missing else algo.max_steps + 1
    done = newest_stored_step(store, train, below=first_missing) if train.key is not None else 0
    steps = max(0, algo.max_steps - done)
    tokens = TokenDataset.of(inputs["tokens"]) if inputs.get("tokens") else None
    per_step = algo.batch_size * getattr(algo, "gradient_accumulation_steps", 1)
    if tokens is not None and tokens.num_rows:
        per_step = min(per_step, tokens.num_rows)  # a step's batch is never larger than the data (sft_loop.step_batch)
    rows = steps * per_step
    cost = {"steps": steps, "rows": rows, "resumes_from_step": done}
    if tokens is None or not tokens.num_rows:
        return {**cost, "summary": f"{steps} step{'s' * (steps != 1)} x {rows // steps if steps else 0} rows; token counts once tokenize has run"}
    cost["tokens"] = round(tokens.num_tokens / tokens.num_rows * rows)
    cost["loss_tokens"] = round(tokens.num_loss_tokens / tokens.num_rows * rows)
    resumed = f", resuming after step {done}" if done else ""
    return {**cost, "summary": f"~{cost['tokens']:,} tokens, ~{cost['loss_tokens']:,} loss tokens over {steps} step{'s' * (steps != 1)}{resumed}"}


def checkpoint_body(store: Store, saved: SavedCheckpoint, model_name: str, revision: str | None = None, model_dir: str | None = None, service: dict | None = None, model_identity: dict | None = None) -> dict:
    """A checkpoint manifest body from a SavedCheckpoint: weights, state and meta as blobs (the
    content evals key on); wall-clock timings attached apart, so a retrain that computes the same
    bytes has the same output digest; where and in what precision it was built, and its base
    model (name, revision, the folder when it is local: what `evsys export` loads, and the
    identity training was keyed on: what export checks that folder against, even when the
    training never finished and so wrote no manifest of its own)."""
    meta = dict(saved.meta)
    history = meta.get("metrics_so_far", [])
    meta["metrics_so_far"] = [{k: v for k, v in m.items() if k not in WALL_CLOCK_METRICS} for m in history]
    timings = [{"step": m["step"], **{k: m[k] for k in WALL_CLOCK_METRICS if k in m}} for m in history]
    checkpoint = Checkpoint(
        weights={name: store.put_bytes(data) for name, data in saved.weights.items()},
        state={name: store.put_bytes(data) for name, data in saved.state.items()},
        meta_blob=store.put_bytes(_json(meta)),
        timings_blob=store.put_bytes(_json(timings)),
    )
    info = meta.get("info", {})
    remote = {"remote": {"refs": dict(saved.remote), "service": service or {}}} if saved.remote else {}
    return {
        "outputs": checkpoint.outputs(),
        "attachments": {**checkpoint.attachments(), **remote},
        "metrics": {k: v for k, v in (history[-1] if history else {}).items() if k != "step"},
        "stats": {
            "step": meta["step"],
            "base_model": model_name,
            "base_model_revision": revision,
            "base_model_dir": model_dir,
            "base_model_identity": model_identity,
            "lora_rank": meta.get("lora_rank"),
            "trainable_params": info.get("trainable_params"),
            "size_bytes": sum(len(b) for part in (saved.weights, saved.state) for b in part.values()),
        },
        "built_on": {k: info[k] for k in BUILT_ON if k in info},
    }


def load_checkpoint(store: Store, key: str) -> SavedCheckpoint:
    """A stored checkpoint as the SavedCheckpoint an algorithm resumes from (timings merged back)."""
    checkpoint = Checkpoint.of(store.read_manifest(key))
    meta = json.loads(store.get_bytes(checkpoint.meta_blob))
    meta["metrics_so_far"] = with_timings(store, checkpoint.timings_blob, meta["metrics_so_far"])
    return SavedCheckpoint(
        state={k: store.get_bytes(v) for k, v in checkpoint.state.items()},
        weights={k: store.get_bytes(v) for k, v in checkpoint.weights.items()},
        meta=meta,
    )


def _train_result(store: Store, final_checkpoint: Node) -> dict:
    checkpoint = Checkpoint.of(store.read_manifest(final_checkpoint.key))
    meta = json.loads(store.get_bytes(checkpoint.meta_blob))
    history = meta["metrics_so_far"]
    result = TrainResult(store.put_bytes(_json(history)), final_checkpoint.key, checkpoint.state, checkpoint.timings_blob)
    return {
        "outputs": result.outputs(),
        "attachments": result.attachments(),
        "metrics": {
            "first_train_mean_nll": history[0]["train_mean_nll"] if history else None,
            "final_train_mean_nll": history[-1]["train_mean_nll"] if history else None,
            "steps": len(history),
        },
        "stats": {"info": meta.get("info", {})},
        "built_on": {k: meta.get("info", {})[k] for k in BUILT_ON if k in meta.get("info", {})},
    }


def _json(value) -> bytes:
    return json.dumps(value, sort_keys=True).encode()
