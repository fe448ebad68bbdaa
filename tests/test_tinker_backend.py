"""The `tinker` backend through the real, unmodified Tinker SDK, against a Tinker-protocol server
started in this process on 127.0.0.1 (tests/tinker_fake: it computes with the local backend on
the tiny model). The SDK reaches it through TINKER_BASE_URL, as it would reach a TuFT or SkyRL
tx server; the key is a canary that must end up nowhere on disk.

One walkthrough build (the example config, model swapped to the tiny one) is shared; tests
that change something copy it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from evsys_build.store import Store
from evsys_testkit import copy_project, evsys, ok, ran_names
from tinker_fake.local_compute import LocalCompute
from tinker_fake.server import TinkerProtocolServer

pytest.importorskip("tinker")

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "sft_walkthrough"
TINY = "evsys/tiny-qwen3"
KEY = f"tml-evsys-canary-{uuid.uuid4().hex}"
VAL_TASKS = 12  # of the example's 52, to keep the suite quick
STARTED = time.time()
FB = "/api/v1/forward_backward"


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    srv = TinkerProtocolServer(LocalCompute({TINY: tiny_model_dir}), models=[TINY], api_key=KEY)
    srv.start()
    yield srv
    srv.stop()
    assert not srv.errors, srv.errors[0]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("home")  # the SDK would read ~/.tinker; nothing may be written there


def tinker_env(server, home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINKER_")}
    env.update(TINKER_API_KEY=KEY, TINKER_BASE_URL=server.base_url, TINKER_TELEMETRY="0", HOME=str(home), EVSYS_CACHE="cache")
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def walkthrough_project(root: Path, config: str | None = None) -> Path:
    """The example's folder layout (its config's paths are relative to the repository root)."""
    example = root / "examples" / "sft_walkthrough"
    (example / "data" / "val").mkdir(parents=True)
    shutil.copy(EXAMPLE / "run.py", example / "run.py")
    shutil.copy(EXAMPLE / "data" / "train.jsonl", example / "data" / "train.jsonl")
    tasks = (EXAMPLE / "data" / "val" / "tasks.jsonl").read_text().splitlines()[:VAL_TASKS]
    (example / "data" / "val" / "tasks.jsonl").write_text("\n".join(tasks) + "\n")
    held = [{"messages": [{"role": "user", "content": f"Which tool adds {a} and {b}?"}, {"role": "assistant", "content": f"calculator: {a} + {b}"}]} for a, b in ((2, 3), (17, 40))]
    (example / "data" / "held.jsonl").write_text("".join(json.dumps(row) + "\n" for row in held))
    text = config if config is not None else (EXAMPLE / "config.yaml").read_text().replace("name: Qwen/Qwen3.5-4B", f"name: {TINY}").replace(
        "      max_tokens: 64\n", "      max_tokens: 64\n    - {name: held, kind: nll, path: examples/sft_walkthrough/data/held.jsonl, run_every: 1}\n")
    assert config is not None or "name: held" in text
    (example / "config.yaml").write_text(text)
    return root


CONFIG = "examples/sft_walkthrough/config.yaml"


def response(status: int):
    """An HTTP response as the SDK's errors carry it."""
    import httpx

    return httpx.Response(status, request=httpx.Request("POST", "http://127.0.0.1:1/api/v1/forward_backward"))


def since(server, start: int) -> list:
    return server.requests[start:]


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory, server, home):
    """The walkthrough built once through run.py on the fake service; its first forward_backward
    is answered 429 once, and forward_backward results come late, so pipelining shows."""
    project = walkthrough_project(tmp_path_factory.mktemp("tinker") / "project")
    first = len(server.requests)
    server.fail_next(FB, 429)
    server.job_delays[FB] = 0.3
    try:
        proc = subprocess.run([sys.executable, "examples/sft_walkthrough/run.py"], cwd=project, env=tinker_env(server, home),
                              capture_output=True, text=True, timeout=900)
    finally:
        server.job_delays.clear()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return SimpleNamespace(project=project, proc=proc, requests=list(since(server, first)), deliveries=list(server.deliveries))


def metrics_rows(project: Path) -> list[dict]:
    path = project / "examples" / "sft_walkthrough" / "outputs" / "sft_tool_selection" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def checkpoint_manifests(project: Path) -> dict[int, dict]:
    store = Store(project / "cache")
    out = {}
    for key in store.iter_manifests():
        m = store.read_manifest(key)
        if m and m["rule"] == "checkpoint":
            out[m["stats"]["step"]] = m
    return out


def test_the_walkthrough_config_builds_on_tinker_through_run_py(walkthrough):
    lines = walkthrough.proc.stdout.splitlines()
    assert "Status:     completed" in lines
    assert any(line.startswith("Artifacts:  ['run_dir', 'checkpoint-final', 'state-final'") for line in lines)
    assert "Conclusion: 1/1 arms completed." in lines
    assert {"train", "eval val@1", "eval val@2", "report"} <= ran_names(walkthrough.proc.stdout)
    val = [r for r in metrics_rows(walkthrough.project) if r["split"] == "val" and "val/held/nll" not in r["metrics"]]
    assert [r["step"] for r in val] == [1, 2] and all("val/val/pass@1" in r["metrics"] for r in val)
    paths = {p for p, _, _ in walkthrough.requests}
    assert {"/api/v1/create_model", FB, "/api/v1/optim_step", "/api/v1/save_weights", "/api/v1/save_weights_for_sampler",
            "/api/v1/create_sampling_session", "/api/v1/asample", "/api/v1/get_server_capabilities"} <= paths


def test_checkpoints_hold_tinker_paths_and_the_adapter_bytes(walkthrough, server):
    from tinker_fake.local_compute import unpack

    store = Store(walkthrough.project / "cache")
    for step, m in checkpoint_manifests(walkthrough.project).items():
        refs = m["attachments"]["remote"]["refs"]
        assert refs["state"].startswith("tinker://") and refs["state"].endswith(f"/weights/step-{step}")
        assert refs["sampler"].endswith(f"/sampler_weights/step-{step}")
        weights = m["outputs"]["weights"]["blobs"]
        adapter = store.get_bytes(weights["adapter/adapter_model.safetensors"])  # downloaded through the signed URLs
        # the sampler weights on the service are this step's, not the next one's (submitted in order)
        assert unpack(server._checkpoints[refs["sampler"]]["data"])["adapter_model.safetensors"] == adapter
    proc = evsys("show", "node:" + checkpoint_manifests(walkthrough.project)[2]["key"][:12], cwd=walkthrough.project, env={"EVSYS_CACHE": "cache"})
    assert proc.returncode == 0, proc.stderr
    assert "checkpoint step 2 of base model evsys/tiny-qwen3" in proc.stdout and "tinker://" in proc.stdout


def test_a_tinker_checkpoint_exports_as_the_adapter_the_service_wrote(walkthrough, tmp_path):
    manifest = checkpoint_manifests(walkthrough.project)[2]
    ref = "node:" + manifest["key"][:12]
    env = {"EVSYS_CACHE": "cache"}
    ok(evsys("export", ref, str(tmp_path / "adapter"), cwd=walkthrough.project, env=env))
    store = Store(walkthrough.project / "cache")
    blobs = manifest["outputs"]["weights"]["blobs"]
    stored = {name.removeprefix("adapter/"): store.get_bytes(obj) for name, obj in blobs.items() if name.startswith("adapter/")}
    assert stored and all((tmp_path / "adapter" / name).read_bytes() == data for name, data in stored.items())
    provenance = json.loads((tmp_path / "adapter" / "evsys_export.json").read_text())
    assert provenance["checkpoint"] == manifest["key"] and provenance["step"] == 2
    assert (tmp_path / "adapter" / "tokenizer_config.json").is_file()  # the base model resolves here: its tokenizer comes along
    merged = evsys("export", ref, str(tmp_path / "merged"), "--merge", cwd=walkthrough.project, env=env)
    assert merged.returncode == 2 and merged.stderr.count("\n") == 1 and "--merge takes checkpoints trained here" in merged.stderr
    assert not (tmp_path / "merged").exists()


def test_a_checkpoint_kept_on_the_service_says_how_to_download_it(walkthrough, tmp_path):
    from evsys_build.store import referenced_objects

    manifest = checkpoint_manifests(walkthrough.project)[2]
    source = Store(walkthrough.project / "cache")
    blobs = manifest["outputs"]["weights"]["blobs"]
    manifest["outputs"]["weights"]["blobs"] = {n: o for n, o in blobs.items() if not n.startswith("adapter/")}  # as download_weights: false stores it
    store = Store(tmp_path / "cache")
    for name in referenced_objects(manifest):
        assert store.put_bytes(source.get_bytes(name)) == name
    store.write_manifest(manifest["key"], manifest)
    state = manifest["attachments"]["remote"]["refs"]["state"]
    assert state.startswith("tinker://")
    out = evsys("export", "node:" + manifest["key"][:12], str(tmp_path / "adapter"), cwd=tmp_path, env={"EVSYS_CACHE": "cache"})
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert f"tinker checkpoint download {state}" in out.stderr and "download_weights: false" in out.stderr
    assert not (tmp_path / "adapter").exists()


def test_datums_the_service_received_are_the_local_backends_inputs(walkthrough):
    import numpy as np

    from evsys_rules.algorithms.sft_loop import batch_indices, normalized_batch
    from evsys_rules.backends.base import Datum
    from evsys_rules.data.token_chunks import iter_token_rows
    from evsys_rules.nodes.views import TokenDataset

    store = Store(walkthrough.project / "cache")
    tokenize = next(m for k in store.iter_manifests() if (m := store.read_manifest(k)) and m["rule"] == "tokenize")
    data = [Datum(ids, w) for ids, w in iter_token_rows(store, TokenDataset.of(tokenize).chunks)]
    sent = {}
    for path, body, _ in walkthrough.requests:  # the 429'd first request was recorded too: same seq_id
        if path == FB:
            sent[body["seq_id"]] = body["data"]
    received = [sent[k] for k in sorted(sent)]
    assert len(received) == 2
    for step, datums in enumerate(received, start=1):
        batch, _ = normalized_batch([data[i] for i in batch_indices(len(data), 1, 0, step)])
        expected = [{"model_input": d.input_ids[:-1].tolist(), "loss_fn_inputs": {"target_tokens": d.input_ids[1:].tolist(), "weights": d.weights[1:].tolist()}} for d in batch]
        assert datums == expected
        assert np.float32(sum(datums[0]["loss_fn_inputs"]["weights"])) == pytest.approx(1.0)


def test_evaluation_sends_the_local_prompts_all_at_once_with_the_end_of_turn_stop(walkthrough, tiny_model_dir):
    from evsys_rules.data.chat_tokens import end_of_turn_ids, load_tokenizer, prompt_ids
    from evsys_rules.evals.benchmarks import load_tasks
    from evsys_rules.nodes.eval import task_messages

    tok = load_tokenizer(str(tiny_model_dir))
    system = "You select the single best tool for the user's query."
    tasks = load_tasks(walkthrough.project / "examples" / "sft_walkthrough" / "data" / "val")
    expected = sorted(prompt_ids(tok, task_messages(t, system)) for t in tasks)
    samples = [(body, t) for path, body, t in walkthrough.requests if path == "/api/v1/asample" and not body.get("prompt_logprobs")]
    by_session: dict[str, list] = {}
    for body, _ in samples:
        by_session.setdefault(body["sampling_session_id"], []).append(body)
    assert len(by_session) == 2  # one sampler per checkpoint
    for bodies in by_session.values():
        assert sorted(b["prompt"]["chunks"][0]["tokens"] for b in bodies) == expected
        assert {json.dumps(b["sampling_params"], sort_keys=True) for b in bodies} == {json.dumps(
            {"max_tokens": 64, "temperature": 0.0, "stop": end_of_turn_ids(tok), "top_k": -1, "top_p": 1.0, "seed": 0}, sort_keys=True)}
    first_result = min(t for _, path, t in walkthrough.deliveries if path == "/api/v1/asample")
    assert sum(t < first_result for _, t in samples) >= VAL_TASKS  # a whole benchmark before any answer


def test_the_service_is_asked_for_the_local_backends_lora_layers(walkthrough):
    """Attention and MLP adapters, no unembedding adapter, as the local backend trains: said
    explicitly, since the SDK's own default would also train the unembedding."""
    from evsys_rules.backends.local.model_io import LORA_TARGETS

    created = [body["lora_config"] for path, body, _ in walkthrough.requests if path == "/api/v1/create_model"]
    assert created and all(c["train_attn"] and c["train_mlp"] and c["train_unembed"] is False for c in created)
    assert "lm_head" not in LORA_TARGETS and {"q_proj", "down_proj"} <= set(LORA_TARGETS)


def test_step_two_is_submitted_before_step_one_is_fetched(walkthrough):
    posts = [(t, body["seq_id"]) for path, body, t in walkthrough.requests if path == FB]
    first_seq = min(s for _, s in posts)
    step2_post = min(t for t, s in posts if s != first_seq)
    step1_delivered = min(t for _, path, t in walkthrough.deliveries if path == FB)
    assert step2_post < step1_delivered


def test_a_429_is_retried_and_the_build_succeeds(walkthrough):
    first = [body["seq_id"] for path, body, _ in walkthrough.requests if path == FB]
    assert first[0] == first[1]  # answered 429, then sent again


def test_same_losses_and_scores_as_the_local_backend(walkthrough, tmp_path):
    local = copy_project(walkthrough.project, tmp_path / "local")
    shutil.rmtree(local / "cache")
    cfg = local / CONFIG
    cfg.write_text(cfg.read_text().replace("kind: tinker", "kind: local"))
    proc = evsys("build", CONFIG, cwd=local, env={"EVSYS_CACHE": "cache"}, timeout=600)
    assert proc.returncode == 0, proc.stderr

    def series(rows, split, name):
        return [(r["step"], r["metrics"][name]) for r in rows if r["split"] == split and name in r["metrics"]]

    tinker_rows, local_rows = metrics_rows(walkthrough.project), metrics_rows(local)
    assert series(tinker_rows, "train", "train_mean_nll") == series(local_rows, "train", "train_mean_nll")
    assert series(tinker_rows, "train", "optim/grad_norm") == series(local_rows, "train", "optim/grad_norm")
    assert series(tinker_rows, "val", "val/val/pass@1") == series(local_rows, "val", "val/val/pass@1")
    held_out = series(tinker_rows, "val", "val/held/nll")  # scored by the service's compute_logprobs
    assert [s for s, _ in held_out] == [1, 2] and all(v > 0 for _, v in held_out)
    assert [v for _, v in held_out] == pytest.approx([v for _, v in series(local_rows, "val", "val/held/nll")], rel=1e-5)


def test_switching_backend_reruns_training_and_evals_never_data(walkthrough, tmp_path):
    project = copy_project(walkthrough.project, tmp_path / "p")
    cfg = project / CONFIG
    cfg.write_text(cfg.read_text().replace("kind: tinker", "kind: local"))
    proc = evsys("plan", CONFIG, "--json", cwd=project, env={"EVSYS_CACHE": "cache"})
    assert proc.returncode == 0, proc.stderr
    plan = {n["name"]: n for n in json.loads(proc.stdout)["nodes"]}
    assert {plan[n]["status"] for n in ("source", "transform[0] jsonl_to_chat", "tokenize")} == {"cached"}
    assert plan["train"]["status"] == "run" and plan["eval val@2"]["status"] in ("run", "maybe")


def test_plan_shows_what_a_run_will_cost(walkthrough, tmp_path, server, home):
    project = copy_project(walkthrough.project, tmp_path / "p")
    cfg = project / CONFIG
    cfg.write_text(cfg.read_text().replace("learning_rate: 1.0e-4", "learning_rate: 2.0e-4"))
    env = tinker_env(server, home)
    plan = {n["name"]: n for n in json.loads(evsys("plan", CONFIG, "--json", cwd=project, env=env).stdout)["nodes"]}
    cost = plan["train"]["cost"]
    assert cost["steps"] == 2 and cost["rows"] == 2 and cost["tokens"] > cost["loss_tokens"] > 0
    assert plan["eval val@1"]["status"] == "maybe" and plan["eval val@1"]["cost"] == {
        "sampling_requests": VAL_TASKS, "samples": VAL_TASKS, "max_new_tokens": VAL_TASKS * 64, "tasks_sampled_before": 0,
        "summary": f"{VAL_TASKS} sampling requests, {VAL_TASKS} samples, <= {VAL_TASKS * 64:,} new tokens"}
    train_line = next(line for line in evsys("plan", CONFIG, cwd=project, env=env).stdout.splitlines() if "  train  (" in line)
    assert train_line.endswith(f"[~{cost['tokens']:,} tokens, ~{cost['loss_tokens']:,} loss tokens over 2 steps]")


def test_a_checkpoint_deleted_on_the_service_is_reported_by_plan_and_verify(walkthrough, tmp_path, server, home):
    project = copy_project(walkthrough.project, tmp_path / "p")
    gone = checkpoint_manifests(project)[2]["attachments"]["remote"]["refs"]["sampler"]
    server.delete_checkpoint(gone)
    env = tinker_env(server, home)
    proc = evsys("plan", CONFIG, "--json", cwd=project, env=env)
    plan = {n["name"]: n for n in json.loads(proc.stdout)["nodes"]}
    assert plan["train"]["status"] == "run"
    assert any(gone in r and "no longer exists" in r for r in plan["train"]["reasons"]), plan["train"]["reasons"]
    assert plan["checkpoint@2"]["status"] == "run" and plan["checkpoint@1"]["status"] == "cached"
    assert plan["eval val@1"]["status"] == "cached" and plan["eval val@2"]["status"] in ("run", "maybe")
    proc = evsys("verify", cwd=project, env=env)
    assert proc.returncode == 1
    assert any(line.startswith("checkpoint@2 node:") and gone in line for line in proc.stdout.splitlines()), proc.stdout
    state1 = checkpoint_manifests(project)[1]["attachments"]["remote"]["refs"]["state"]
    first = len(server.requests)
    proc = evsys("build", CONFIG, cwd=project, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the retrained checkpoint@2 replaces the manifest naming the deleted tinker:// paths
    assert {"train", "eval val@2"} <= ran_names(proc.stdout) and "eval val@1" not in ran_names(proc.stdout), proc.stdout
    assert [b["path"] for p, b, _ in since(server, first) if p == "/api/v1/load_weights"] == [state1]
    assert evsys("verify", cwd=project, env=env).returncode == 0


def test_sigkill_mid_training_then_rebuild_resumes_from_the_newest_state(tmp_path, server, home):
    config = (EXAMPLE / "config.yaml").read_text().replace("name: Qwen/Qwen3.5-4B", f"name: {TINY}")
    config = config.replace("max_steps: 2 ", "max_steps: 3 ").replace("lora_rank: 1\n", "lora_rank: 1\n    save_every: 1\n")
    config = config.split("metadata:")[0]  # training only
    project = walkthrough_project(tmp_path / "p", config)
    gate = threading.Event()
    server.gates[FB] = [1, gate]  # step 1 goes through; step 2 waits
    try:
        build = subprocess.Popen([sys.executable, "-m", "evsys_build.cli", "build", CONFIG], cwd=project, env=tinker_env(server, home),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seen = []
        for line in build.stdout:
            seen.append(line)
            if line.startswith("saved   checkpoint@1"):
                break
        assert any(line.startswith("saved   checkpoint@1") for line in seen), "".join(seen)
        build.send_signal(signal.SIGKILL)
        build.wait(timeout=60)
    finally:
        server.gates.clear()
        gate.set()
    state = checkpoint_manifests(project)[1]["attachments"]["remote"]["refs"]["state"]
    first = len(server.requests)
    proc = evsys("build", CONFIG, cwd=project, env=tinker_env(server, home), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resuming train from checkpoint@1" in proc.stdout
    loads = [body for path, body, _ in since(server, first) if path == "/api/v1/load_weights"]
    assert [(b["path"], b["optimizer"]) for b in loads] == [(state, True)]
    assert sorted(checkpoint_manifests(project)) == [1, 2, 3]


def one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and ran_names(proc.stdout) == set()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_no_key_fails_before_any_node_runs(tmp_path, server, home):
    project = walkthrough_project(tmp_path / "p")
    line = one_line_error(evsys("build", CONFIG, cwd=project, env=tinker_env(server, home, TINKER_API_KEY=None)))
    assert "TINKER_API_KEY" in line and "offline.yaml" in line


def test_a_rejected_key_gives_the_authentication_line(tmp_path, server, home):
    project = walkthrough_project(tmp_path / "p")
    line = one_line_error(evsys("build", CONFIG, cwd=project, env=tinker_env(server, home, TINKER_API_KEY="tml-not-the-key")))
    assert "rejected TINKER_API_KEY (HTTP 401" in line and "tml-not-the-key" not in line


def test_a_model_the_service_does_not_offer_gives_the_list(tmp_path, server, home, tiny_model_dir):
    config = (EXAMPLE / "config.yaml").read_text().replace("name: Qwen/Qwen3.5-4B", f"name: {tiny_model_dir}")
    project = walkthrough_project(tmp_path / "p", config)
    line = one_line_error(evsys("build", CONFIG, cwd=project, env=tinker_env(server, home)))
    assert f"is not offered by the Tinker service at {server.base_url}; it offers: {TINY}" in line


def test_a_failed_step_is_recovered_once_from_the_last_saved_state(server, home, monkeypatch):
    import numpy as np

    from evsys_rules.algorithms.sft import SFTConfig
    from evsys_rules.algorithms.sft_loop import train_sft
    from evsys_rules.backends.base import Datum
    from evsys_rules.backends.tinker.training import TinkerTrainingClient

    monkeypatch.setenv("TINKER_API_KEY", KEY)
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    rng = np.random.default_rng(0)
    data = [Datum(rng.integers(0, 1000, 12), np.ones(12, dtype=np.float32)) for _ in range(4)]
    cfg = SFTConfig(max_steps=3, batch_size=2, lora_rank=1, learning_rate=1e-3)
    first = len(server.requests)
    server.fail_jobs(FB, times=1, skip=2)  # step 3's forward_backward fails on the service
    saved, logs = {}, []
    client = TinkerTrainingClient(TINY, 1, 0, server.base_url)
    history = train_sft(client, data, cfg, seed=0, save_steps={2}, resume=None, on_step=lambda s, m: None,
                        on_checkpoint=lambda s, c: saved.setdefault(s, c), log=logs.append)
    assert [m["step"] for m in history] == [1, 2, 3]
    loads = [body["path"] for path, body, _ in since(server, first) if path == "/api/v1/load_weights"]
    assert loads == [saved[2].remote["state"]]
    assert len(logs) == 1 and "recreating the training client from the state saved at step 2" in logs[0]

    server.fail_jobs(FB, times=3, skip=0)  # steps 1 and 2 (in flight) fail, then step 1 again after the recovery: raised, not retried forever
    from evsys_rules.backends.base import StepFailed

    with pytest.raises(StepFailed, match="forward_backward failed on the Tinker service at .*worker lost"):
        train_sft(TinkerTrainingClient(TINY, 1, 0, server.base_url), data, cfg, seed=0, save_steps=set(), resume=None,
                  on_step=lambda s, m: None, on_checkpoint=lambda s, c: None, log=logs.append)
    assert len(logs) == 2 and "from scratch" in logs[1]


def test_a_failed_adapter_download_is_retried_then_the_checkpoint_is_kept_without_it(server, home, monkeypatch, capsys):
    """The adapter's files are an optional copy of what the service already saved: a transient
    failure is retried, and one that lasts stores the checkpoint without them, never losing the step."""
    from evsys_rules.backends.tinker import training
    from evsys_rules.backends.tinker.training import SAMPLER_FILE, STATE_FILE, TinkerTrainingClient

    monkeypatch.setenv("TINKER_API_KEY", KEY)
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    monkeypatch.setattr(training, "DOWNLOAD_RETRIES", (0.0, 0.0, 0.0))
    client = TinkerTrainingClient(TINY, 1, 0, server.base_url)
    server.fail_next("/files/", 503)
    state, weights, _ = client.save_checkpoint_async("once").result()
    assert "adapter/adapter_config.json" in weights and STATE_FILE in state

    server.fail_next("/files/", 503, times=1 + len(training.DOWNLOAD_RETRIES))
    state, weights, remote = client.save_checkpoint_async("never").result()
    assert set(weights) == {SAMPLER_FILE} and json.loads(state[STATE_FILE])["path"] == remote["state"]
    assert "failed after 4 tries (HTTP 503" in capsys.readouterr().err
    [[completion]] = client.sampling_client().sample([[1, 2, 3]], max_tokens=2)  # the protocol's in-loop sampler
    assert len(completion) <= 2


def test_the_key_tinker_auth_login_stored_is_used_when_none_is_exported(tmp_path, server, monkeypatch):
    """The SDK's own order: TINKER_API_KEY, then TINKER_CREDENTIAL_CMD, then the stored default key."""
    import tinker

    from evsys_build.errors import ConfigError
    from evsys_rules.backends.base import StepFailed
    from evsys_rules.backends.tinker import TinkerBackend
    from evsys_rules.backends.tinker.errors import service_error

    stored = tmp_path / "home" / ".tinker" / "credentials.json"
    stored.parent.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    monkeypatch.delenv("TINKER_CREDENTIAL_CMD", raising=False)
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    backend = TinkerBackend({"base_url": server.base_url})

    def login(key: str) -> None:
        stored.write_text(json.dumps({"version": 1, "default": "main", "keys": {"main": {"type": "manual", "key": key, "name": "main"}}}))

    try:
        login("tml-not-the-key")
        with pytest.raises(ConfigError) as refused:
            backend.check_ready(base_model=TINY, lora_rank=1)
        assert "rejected the key `tinker auth login` stored (HTTP 401" in refused.value.message
        assert "tml-not-the-key" not in refused.value.message
        assert "run `tinker auth login` again or export TINKER_API_KEY" in refused.value.message
        login(KEY)
        backend.check_ready(base_model=TINY, lora_rank=1)
        said = service_error(tinker.PermissionDeniedError(f"no ({KEY})", response=response(403), body={"detail": f"key {KEY} lacks access"}), "sampling", server.base_url)
        assert "key <TINKER_API_KEY> lacks access" in said.message and KEY not in said.message  # the stored key is redacted too

        stored.write_text('{"version": 1, "default": "x", "keys": {"x": {"type": "manual"}}}')  # unreadable, but an exported key is in use
        monkeypatch.setenv("TINKER_API_KEY", KEY)
        transient = service_error(tinker.InternalServerError("boom", response=response(500), body=None), "forward_backward", server.base_url)
        assert isinstance(transient, StepFailed)
        monkeypatch.delenv("TINKER_API_KEY")
        stored.unlink()
        with pytest.raises(ConfigError, match="needs a Tinker API key: export TINKER_API_KEY=tml-... \\(or store one with `tinker auth login`\\)"):
            backend.check_ready(base_model=TINY, lora_rank=1)
    finally:
        stored.unlink(missing_ok=True)  # the canary key may be on disk nowhere


def test_a_model_the_service_cannot_train_or_hold_at_max_length_is_refused_before_any_step(server, monkeypatch):
    from evsys_build.errors import ConfigError
    from evsys_rules.backends.tinker import TinkerBackend

    monkeypatch.setenv("TINKER_API_KEY", KEY)
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    backend = TinkerBackend({"base_url": server.base_url})
    saved = [dict(m) for m in server.models]
    try:
        server.models[0]["max_context_length"] = 1024
        backend.check_ready(base_model=TINY, lora_rank=1, max_length=1024)
        with pytest.raises(ConfigError) as long_rows:
            backend.check_ready(base_model=TINY, lora_rank=1, max_length=2048)
        assert long_rows.value.message == (f"algorithm.params.max_length: 2048 tokens exceed the 1024 that the Tinker service at {server.base_url} "
                                           f"takes for {TINY!r}; set max_length <= 1024")
        server.models[0]["trainable"] = False
        with pytest.raises(ConfigError, match=f"offers {TINY!r} but not as trainable; pick one of: none"):
            backend.check_ready(base_model=TINY, lora_rank=1)
    finally:
        server.models[:] = saved


@pytest.mark.parametrize("status,expected", [
    (429, "still rate-limited forward_backward (HTTP 429) after the SDK's retries"),
    (402, "refused forward_backward for billing or quota (HTTP 402"),
    (403, "refused forward_backward (HTTP 403, permission denied"),
])
def test_service_errors_are_one_line_without_the_key(status, expected, monkeypatch):
    import tinker

    from evsys_rules.backends.tinker.errors import service_error

    monkeypatch.setenv("TINKER_API_KEY", KEY)
    cls = {429: tinker.RateLimitError, 402: tinker.BillingError, 403: tinker.PermissionDeniedError}[status]
    err = service_error(cls(f"Error code: {status} - key {KEY}", response=response(status), body={"detail": f"no ({KEY})"}), "forward_backward", "http://127.0.0.1:1")
    assert expected in err.message and KEY not in err.message and "\n" not in err.message


def test_the_canary_key_is_nowhere_on_disk(tmp_path_factory, home):
    """Run last: every build above used the canary key; no file written since may hold it."""
    needle = KEY.encode()
    roots = {tmp_path_factory.getbasetemp(), home, Path("/tmp"), REPO}
    found = []
    for root in roots:
        for dirpath, dirnames, files in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in (".git", ".venv", "node_modules")]
            for name in files:
                path = Path(dirpath) / name
                try:
                    st = path.stat()
                    if st.st_mtime >= STARTED and st.st_size < 64 << 20 and needle in path.read_bytes():
                        found.append(str(path))
                except OSError:
                    continue
    assert not found
    assert not (home / ".tinker").exists()  # the SDK wrote no credentials or state under HOME


def test_a_checkpoint_that_expires_while_a_process_runs_is_seen_gone_once_its_answer_is_old(walkthrough, server, home, monkeypatch):
    """"Gone" answers are kept for the process; "there" ones only for a minute, so a checkpoint the
    service expires while a notebook or the Python API keeps running is not trusted for ever."""
    from evsys_rules.backends.tinker import remote

    existing = checkpoint_manifests(walkthrough.project)[1]["attachments"]["remote"]["refs"]["sampler"]
    expiring = existing.rsplit("/", 1)[0] + "/expiring-" + uuid.uuid4().hex[:8]
    with server._lock:  # a copy of a real checkpoint under a path no other test uses
        server._checkpoints[expiring] = dict(server._checkpoints[existing])
    for name, value in tinker_env(server, home).items():
        monkeypatch.setenv(name, value)
    clock = [1000.0]
    monkeypatch.setattr(remote, "_clock", lambda: clock[0])
    assert remote.missing_paths([expiring], server.base_url) == {}
    server.delete_checkpoint(expiring)
    clock[0] += remote.EXISTS_FOR_S / 2
    assert remote.missing_paths([expiring], server.base_url) == {}  # asked within the minute: not asked again
    clock[0] += remote.EXISTS_FOR_S
    assert list(remote.missing_paths([expiring], server.base_url)) == [expiring]
    clock[0] += 10 * remote.EXISTS_FOR_S
    asked = len(server.requests)
    assert list(remote.missing_paths([expiring], server.base_url)) == [expiring]  # gone stays gone, unasked
    assert len(server.requests) == asked
