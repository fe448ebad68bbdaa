"""The `eval` node: score one checkpoint on one benchmark, caching generations per task.

Prompts are rendered with the training chat template (and its system prompt) and end with
the generation prompt; generation stops at the template's end-of-turn. Adding tasks samples
only the new ones: each task's completions are memoised under (checkpoint, prompt, sampling).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from evsys_build.executor import RunContext
from evsys_build.graph import Node
from evsys_build.hashing import digest
from evsys_build.planner import output_digest
from evsys_build.statcache import StatCache
from evsys_build.store import is_remote

from evsys_build.errors import ConfigError, UnknownKindError

from ..config.keyed_params import keyed_dump, with_mapping_orders
from ..config.loading import Arm, LoadedConfig, located, located_by
from ..data.chat_tokens import end_of_turn_ids, load_tokenizer, prompt_ids
from ..data.conversation import check_conversation
from ..data.template_clock import pinned
from ..evals.benchmarks import benchmark_path_problem, load_tasks
from ..evals.passk import aggregate
from ..evals.stops import check_stops, stop_problem
from ..evals.verifiers import check, verifier_code
from ..ml_stack import preload_ml
from ..models.resolve import ResolvedModel
from ..outputs.hub import notify_eval, printing_to
from ..plugins import kinds
from ..plugins.code_identity import code_identity
from ..plugins.discover import plugin_hint
from ..plugins.installed import library_versions
from .heldout import heldout_nodes, read_heldout
from .tokenize import clock_params, tokenizer_libraries
from .train import backend_code, backend_config, backend_environment, backend_resources, keyed_backend_params, make_backend
from .views import Checkpoint, EvalResult

# Tasks are sampled in rounds; between rounds the build sees a stop (Ctrl-C, SIGTERM) and each
# task's samples are memoised. A round is sized to last about ROUND_SECONDS, from the last one's
# pace: a stop waits that long at most, and a kill after it loses no more.
ROUND_SECONDS = 10.0
FIRST_ROUND, MAX_ROUND = 64, 256


def next_round(tasks: int, seconds: float) -> int:
    """How many tasks the next round samples, after `tasks` took `seconds`."""
    if seconds <= 0:
        return MAX_ROUND
    return max(1, min(MAX_ROUND, int(tasks * ROUND_SECONDS / seconds)))


def eval_nodes(loaded: LoadedConfig, arm: Arm, checkpoints: dict[int, Node], model: ResolvedModel, statcache: StatCache, callbacks=None, spots: dict | None = None) -> list[tuple]:
    """(benchmark, step, node) for every scored checkpoint: every run_every steps and the final step.
    Besides the checkpoint's content, the key holds the base model (adapters apply to it) and the
    tokenizer files (prompts are rendered and completions decoded with them). A `kind: nll`
    benchmark gets held-out loss nodes instead (heldout.py)."""
    evals = []
    backend_cls = kinds.backends.get(arm.config.backend.kind)
    sampler_params = keyed_backend_params(backend_cls, backend_config(backend_cls, arm), "training_only_params")
    model_key = digest({"base": model.identity, "tokenizer": model.tokenizer})
    model_dir = model.dir
    max_steps = arm.params["algorithm"].max_steps
    resources = backend_resources(make_backend(arm))
    for index, bench in enumerate(arm.config.metadata.benchmark):
        steps = eval_steps(bench, max_steps)
        if bench.kind == "nll":
            check_heldout(loaded, index, bench, arm)
            evals += heldout_nodes(arm, bench, {s: checkpoints[s] for s in steps}, model, statcache, callbacks, resources, spots)
            continue
        check_samples(loaded, index, bench, arm)
        check_stops(loaded, index, bench, arm, model_dir)  # before any node runs: a bad stop fails no finished training
        tasks = benchmark_tasks(loaded, index, bench, arm)
        system_prompt = bench.system_prompt if bench.system_prompt is not None else training_system_prompt(arm)
        params = {**eval_params(bench, tasks, system_prompt, backend_cls, sampler_params, statcache), "model": model_key,
                  "tokenizer_libraries": tokenizer_libraries(model), **clock_params(model)}  # prompts are rendered (and may render the date), completions decoded
        if bench.temperature > 0:  # sampled completions depend on the seed; greedy ones do not
            params["seed"] = arm.config.seed
        for step in steps:
            node = Node(
                rule="eval",
                name=f"eval {bench.name}@{step}",
                version=code_identity(run_eval),
                params=dict(params),
                inputs=[("checkpoint", checkpoints[step])],
                run=run_eval,
                arm=arm.name,
                param_paths={"sampling": f"metadata.benchmark[{bench.name}]", "metrics": f"metadata.benchmark[{bench.name}].metrics", "system_prompt": "system prompt", "seed": "seed"},
                param_labels={
                    "tasks": f"benchmark {bench.name} tasks changed",
                    "verifiers": f"benchmark {bench.name} verifier code (or a variable it reads) changed",
                    "sampler": "sampling code, settings or libraries changed",
                    "model": "base model or tokenizer changed",
                    "clock": "the date the chat template renders changed",
                },
                payload={"arm": arm, "bench": bench, "tasks": tasks, "step": step, "model_dir": model_dir, "system_prompt": system_prompt, "callbacks": callbacks, "spots": spots},
                resources=resources,
                estimate=estimate_eval,
            )
            evals.append((bench, step, node))
    return evals


def estimate_eval(store, node: Node, inputs: dict) -> dict:
    """What `plan` says an eval that runs will cost: one sampling request per task (num_samples
    each) and at most max_tokens new tokens per sample. Tasks already memoised for a stored
    checkpoint cost nothing and are left out (a checkpoint that has to be trained first has none);
    on a remote store only a small benchmark's are looked for, so `plan` stays quick there."""
    tasks, bench = node.payload["tasks"], node.payload["bench"]
    checkpoint = inputs.get("checkpoint")
    sampled = 0
    if checkpoint is not None and (not is_remote(store.location) or len(tasks) <= REMOTE_TASKS_COUNTED):
        keys = task_memo_keys(node, output_digest(checkpoint))
        stored = store.stored_memos(keys)
        sampled = sum(key in stored for key in keys)  # two tasks with the same turns share one memo
    todo = len(tasks) - sampled
    samples = todo * bench.num_samples
    cost = {"sampling_requests": todo, "samples": samples, "max_new_tokens": samples * bench.max_tokens, "tasks_sampled_before": sampled}
    before = f" ({sampled} of {len(tasks)} tasks sampled before)" if sampled else ""
    return {**cost, "summary": f"{todo} sampling request{'s' * (todo != 1)}{before}, {samples} sample{'s' * (samples != 1)}, <= {cost['max_new_tokens']:,} new tokens"}


REMOTE_TASKS_COUNTED = 16  # on S3/GCS, a plan asks about this many tasks' memos (concurrent HEADs); more would list memo folders per eval


def task_memo_keys(node: Node, checkpoint_digest: str) -> list[str]:
    """Per task, the key its completions are memoised under: the checkpoint's content, the
    prompt's turns, how they are sampled, and all that renders turns into ids (the tokenizer's
    files and template, their libraries, the date a template renders, this code). No tokenizer
    is needed, so `plan` can count the tasks sampled before."""
    params, payload = node.params, node.payload
    sampler = {"rule": node.rule, "version": node.version, "sampler": params["sampler"], "model": params["model"],
               "tokenizer_libraries": params["tokenizer_libraries"], "clock": params.get("clock")}
    common = {"checkpoint": checkpoint_digest, "sampling": params["sampling"], "seed": payload["arm"].config.seed, "sampler": sampler}
    return [digest({**common, "messages": task_messages(t, payload["system_prompt"])}) for t in payload["tasks"]]


def eval_steps(bench, max_steps: int) -> list[int]:
    """The steps a benchmark scores: every run_every steps, and the final step."""
    steps = list(range(bench.run_every, max_steps + 1, bench.run_every)) if bench.run_every else []
    return steps if max_steps in steps else steps + [max_steps]


def benchmark_tasks(loaded: LoadedConfig, index: int, bench, arm: Arm | None = None) -> list:
    """The benchmark's tasks; a path that is not a directory holding tasks.jsonl is named by the
    config's file:line:col (what `validate --deep` and the build both say)."""
    label = f"metadata.benchmark[{index}] ({bench.name})"
    try:
        return load_tasks(Path(bench.path))
    except UnknownKindError as exc:  # a verifier of a plugin file the config does not list
        raise ConfigError(f"{label}: {exc.message}{plugin_hint(exc.kind, exc.name, loaded.path, 'did you mean' in exc.message)}") from None
    except ConfigError as exc:
        problem = benchmark_path_problem(Path(bench.path))  # checked only on failure: a sweep loads each file per arm
        if problem:
            with located(loaded, ("metadata", "benchmark", index, "path"), arm):
                raise ConfigError(f"{label}: {problem}") from None
        raise ConfigError(f"{label}: {exc.message}") from None


def bench_path_problem(bench) -> str | None:
    """What is wrong with a benchmark's path for its kind (stats only), or None: a tasks benchmark
    reads a directory holding tasks.jsonl, a kind: nll one a JSONL file of chat rows."""
    path = Path(bench.path)
    if bench.kind != "nll":
        return benchmark_path_problem(path)
    if path.is_file():
        return None
    return f"{bench.path}: {'is a directory' if path.is_dir() else 'does not exist'} (kind nll reads a JSONL file of chat rows with messages)"


def check_bench_path(loaded: LoadedConfig, index: int, bench, arm: Arm | None = None) -> None:
    """A benchmark path that is not what its kind reads, refused at its config line."""
    problem = bench_path_problem(bench)
    if problem:
        with located(loaded, ("metadata", "benchmark", index, "path"), arm):
            raise ConfigError(f"metadata.benchmark[{index}] ({bench.name}): {problem}")


def check_samples(loaded: LoadedConfig, index: int, bench, arm: Arm | None = None) -> None:
    """pass@k needs k completions per task: checked on each arm's merged config (an arm may set
    either), before any node runs, so a build never trains first and fails at its eval."""
    k = max((int(m.split("@", 1)[1]) for m in bench.metrics), default=1)
    if k > bench.num_samples:
        with located(loaded, ("metadata", "benchmark", index, "metrics"), arm):
            raise ConfigError(f"metadata.benchmark[{index}].num_samples: {bench.num_samples} is below k={k} of pass@{k} (set num_samples >= {k})")


def check_heldout(loaded: LoadedConfig, index: int, bench, arm: Arm | None = None) -> int:
    """A `kind: nll` benchmark's path must be a JSONL file of chat rows, and the backend must
    score them (checked before any node runs, so a build never trains first and fails after).
    Returns the number of rows."""
    backend = kinds.backends.get(arm.config.backend.kind) if arm is not None else None
    if backend is not None and not hasattr(backend, "score_from_weights"):
        with located(loaded, ("metadata", "benchmark", index, "kind"), arm):
            raise ConfigError(f"metadata.benchmark[{index}] ({bench.name}): backend {arm.config.backend.kind} cannot score held-out loss "
                              "(kind: nll; it has no score_from_weights); use a backend that does, such as local or tinker")
    path = Path(bench.path)
    check_bench_path(loaded, index, bench, arm)
    rows, wheres = read_heldout(path)
    for row, at in zip(rows, wheres):
        check_conversation(row, "all", at)  # well-formed messages (tokenized at build time)
    return len(rows)


def training_system_prompt(arm: Arm) -> str | None:
    """The system prompt jsonl_to_chat gives training rows, so eval prompts match training. Rows
    that carry their own system turns (sharegpt_to_messages, chat data) differ row by row: a
    benchmark sets its own `system_prompt` (or each task does)."""
    for spec in arm.config.transforms:
        if spec.kind == "jsonl_to_chat":
            return spec.params.get("system_prompt")
    return None


def eval_params(bench, tasks, system_prompt: str | None, backend_cls, backend_params: dict, statcache: StatCache | None = None) -> dict:
    """What an eval node's key holds: task content, sampling params, verifier identity, metrics,
    the sampler's code, libraries and settings (device, dtype, batch size: they can change what
    greedy decoding picks), and the system prompt."""
    return {
        "sampler": {
            "code": backend_code(backend_cls, "sampling_client_from_weights"),
            "libraries": library_versions(*getattr(backend_cls, "libraries", ())),
            "params": backend_params,
            **backend_environment(backend_cls, "sampling_client_from_weights"),
        },
        "tasks": _tasks_content(tasks)[0],
        "sampling": {"max_tokens": bench.max_tokens, "temperature": bench.temperature, "num_samples": bench.num_samples, "stop": bench.stop,
                     **({"chat_template_kwargs": kwargs} if (kwargs := getattr(bench, "chat_template_kwargs", None)) else {})},  # absent when unset: keys stay
        "metrics": sorted(bench.metrics),
        "verifiers": _verifiers_digest(tasks, statcache),
        "system_prompt": system_prompt,
    }


_tasks_memo: dict[int, tuple] = {}


def _verifiers_digest(tasks, statcache: StatCache | None = None) -> str:
    """The digest of the code of each verifier function the tasks name (with what it reads). The
    specs (fn_name and args) are in the tasks' content already, so adding a task changes only
    `tasks`, and `plan` says the tasks changed, not the verifier code. Not memoised: it follows
    plugin code, which a long-lived process may reload."""
    names = sorted({str(spec["fn_name"]) for spec in _tasks_content(tasks)[1]})
    return digest({name: verifier_code(name, statcache) for name in names})


def _tasks_content(tasks) -> tuple[str, list[dict]]:
    """(digest of the tasks' content, their distinct verifier specs): a pure function of the
    tasks, computed once per parsed tasks file (load_tasks returns one tuple per file version,
    which a sweep's arms and an eval's steps share). Verifier identities are not memoised: they
    follow plugin code, which a long-lived process may reload."""
    hit = _tasks_memo.get(id(tasks))
    if hit is not None and hit[0] is tasks:  # holding `tasks` keeps its id from being reused
        return hit[1]
    specs = {json.dumps(t.verifier, sort_keys=True): t.verifier for t in tasks}
    value = (digest([with_mapping_orders(keyed_dump(t), t) for t in tasks]), list(specs.values()))
    if isinstance(tasks, tuple):
        _tasks_memo[id(tasks)] = (tasks, value)
    return value


def task_messages(task, system_prompt: str | None) -> list[dict]:
    """The prompt's turns: a system turn whenever one is set, even "" (training rows then carry
    an empty system turn too, and the template renders it), then the task's instruction."""
    system = task.system_prompt if task.system_prompt is not None else system_prompt
    messages = [{"role": "system", "content": system}] if system is not None else []
    return messages + [{"role": "user", "content": task.instruction}]


def run_eval(ctx: RunContext) -> dict:
    with located_by(ctx.node.payload.get("spots")):  # a backend's refusal names the config line
        return _evaluate(ctx)


def _evaluate(ctx: RunContext) -> dict:
    payload = ctx.node.payload
    arm, bench, tasks, step = payload["arm"], payload["bench"], payload["tasks"], payload["step"]
    checkpoint = ctx.inputs["checkpoint"]
    sampling = ctx.node.params["sampling"]
    checkpoint_digest = output_digest(checkpoint)
    memo_keys = task_memo_keys(ctx.node, checkpoint_digest)
    completions: list[list[str] | None] = []
    for key in memo_keys:
        hit = ctx.store.memo_get(key)
        completions.append(hit["samples"] if hit else None)
    todo = [i for i, c in enumerate(completions) if c is None]
    if todo:  # only then the ML stack and the tokenizer: scoring memoised completions again (a verifier changed) needs neither
        preload_ml()
        tok = load_tokenizer(str(payload["model_dir"]))
        with pinned(ctx.node.params.get("clock")):  # the date the key holds, for a template that renders it
            prompts = {i: prompt_ids(tok, task_messages(tasks[i], payload["system_prompt"]), template_kwargs=bench.chat_template_kwargs) for i in todo}
        stop_ids = stop_token_ids(tok, sampling["stop"], f"metadata.benchmark ({bench.name}).stop")
        sampler = _sampler(ctx, arm, payload["model_dir"], checkpoint)
        start, size = 0, FIRST_ROUND
        while start < len(todo):
            ctx.check_stop()  # tasks sampled so far stay memoised
            ctx.progress(start, len(todo), f"sampling {len(todo)} tasks")
            group = todo[start : start + size]
            began = time.perf_counter()
            outs = _sample(sampler, [prompts[i] for i in group], sampling, stop_ids, arm.config.seed)
            size = next_round(len(group), time.perf_counter() - began)
            for i, samples in zip(group, outs):
                texts = [_cut_at_strings(tok.decode(ids, skip_special_tokens=True), sampling["stop"]) for ids in samples]
                completions[i] = texts
                ctx.store.memo_put(memo_keys[i], {"samples": texts, "checkpoint": checkpoint_digest})
            start += len(group)
    where = f"{bench.path}/tasks.jsonl"
    verdicts = [[check(t.verifier, text, f"{where} ({t.task_id})") for text in samples] for t, samples in zip(tasks, completions)]
    ks = sorted({int(m.split("@", 1)[1]) for m in bench.metrics})
    metrics = aggregate(verdicts, ks)
    rows = [
        {"task_id": t.task_id, "step": step, "prediction": samples[0], "correct": v[0], **({"samples": samples, "verdicts": v} if len(samples) > 1 else {})}
        for t, samples, v in zip(tasks, completions, verdicts)
    ]
    hub = payload.get("callbacks")
    with printing_to(hub, ctx.log):
        notify_eval(hub, step, bench.name, {f"{bench.split}/{bench.name}/{k}": v for k, v in metrics.items()})
    data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode()
    return {
        "outputs": EvalResult(ctx.store.put_bytes(data), metrics).outputs(),
        "metrics": metrics,
        "stats": {"step": step, "benchmark": bench.name, "split": bench.split, "tasks": len(tasks), "tasks_sampled": len(todo), "tasks_cached": len(tasks) - len(todo)},
    }


def _sample(sampler, prompts: list[list[int]], sampling: dict, stop_ids: list[int], seed: int) -> list[list[list[int]]]:
    """Greedy decoding batches all prompts. With temperature > 0 each prompt gets its own RNG
    stream, seeded from (seed, prompt), so a task's samples never depend on which tasks were
    sampled beside it (the per-task cache relies on that) or on the batch size."""
    common = {"max_tokens": sampling["max_tokens"], "temperature": sampling["temperature"], "stop_token_ids": stop_ids, "n": sampling["num_samples"]}
    if sampling["temperature"] == 0:
        return sampler.sample(prompts, seed=seed, **common)
    seeds = [int(digest({"seed": seed, "prompt": prompt})[:8], 16) for prompt in prompts]
    if getattr(sampler, "per_prompt_seeds", False):  # a service: every prompt in one submission
        return sampler.sample(prompts, seed=seed, seeds=seeds, **common)
    out = []
    for prompt, task_seed in zip(prompts, seeds):
        out += sampler.sample([prompt], seed=task_seed, **common)
    return out


def _sampler(ctx: RunContext, arm: Arm, model_dir, checkpoint: dict):
    backend = make_backend(arm)
    weights = {name: ctx.store.get_bytes(blob) for name, blob in Checkpoint.of(checkpoint).weights.items()}
    return backend.sampling_client_from_weights(model_dir, weights)


def stop_token_ids(tok, stops: list[str], where: str) -> list[int]:
    """The ids that end a completion: the end of turn, and each `stop` that is one special token
    (completions are decoded without special tokens, so no text search could find one). A stop
    that holds a special token among other text could never match: refused (stops.py)."""
    specials = {t.content: i for i, t in tok.added_tokens_decoder.items() if t.special}
    ids = set(end_of_turn_ids(tok))
    for stop in stops:
        if stop in specials:
            ids.add(specials[stop])
        problem = stop_problem(stop, specials)
        if problem:
            raise ConfigError(f"{where}: {problem}")
    return sorted(ids)


def _cut_at_strings(text: str, stops: list[str]) -> str:
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return text[:cut] if cut >= 0 else text
