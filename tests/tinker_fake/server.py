"""In-process fake of the Tinker HTTP API that the unmodified `tinker` SDK (0.38) can drive.

Stdlib only (http.server, json; protobuf codec in tinker_wire.py). Usage in a test:

    srv = TinkerProtocolServer(compute, models=["evsys/bigram-32"], api_key="tml-test")
    base_url = srv.start()                        # http://127.0.0.1:<ephemeral port>
    sc = tinker.ServiceClient(base_url=base_url, api_key="tml-test")  # key MUST start "tml-"
    ...; srv.stop()

Wire protocol: the SDK's REST calls (tinker/resources/), protobuf bodies in wire.py. The math is delegated to `compute`, which is only ever called
from ONE worker thread, in request-arrival order (so it needs no locking):

  create(base_model, lora_rank, seed) -> handle                      (any object)
  forward_backward(handle, datums, *, loss_fn, forward_only) -> dict
      datums: list of (input_ids, target_tokens, weights|None). The dict must have "loss"
      (float; becomes metric "loss:sum"), may have "logprobs" (per-datum target logprobs ->
      loss_fn_outputs) and extra metrics ("name:sum"/":mean"...; a key without ":" gets ":sum",
      because the SDK splits every metric key on ":").
  optim_step(handle, adam: dict) -> dict of metrics | None
  save_state(handle) -> bytes;   load_state(handle, blob, *, optimizer: bool) -> None
  sampler_weights(handle) -> bytes
  sample(weights|None, prompt_ids, max_tokens, temperature, stop, num_samples, seed, *,
         base_model) -> list (len num_samples) of token lists or (tokens, logprobs) pairs
      weights=None: sample the base model. `stop` is SamplingParams.stop as sent.
  export_files(handle) -> {filename: bytes}   OPTIONAL, for save_weights_external
      (default: {"adapter_weights.bin": sampler_weights(handle)})
  prompt_logprobs(weights, prompt_ids, *, base_model) -> list (len prompt) of float|None
      OPTIONAL, for compute_logprobs (a sample request with prompt_logprobs); the first is None.

`create_model` takes only LoRA on attention and MLP without the unembedding (what evsys asks for,
as its local backend trains); the SDK's default (train_unembed true) is answered 400.

A compute exception fails that future (ValueError -> category "user", else "server"), which the
SDK raises as tinker.RequestFailedError from .result().

  sample_batch(weights, prompts, max_tokens, temperature, stop, num_samples, seeds, *, base_model)
      OPTIONAL: sampling requests that wait in the queue together (same weights and params) are
      computed in one call, as a real sampler batches them.

Test hooks: `requests` [(path, body, time.monotonic())] (forward_backward bodies are decoded
from protobuf into dicts), `deliveries` [(request_id, origin path, time.monotonic())] (when a
finished result was handed to the client), `errors` (tracebacks of bugs in this fake),
`fail_next()` (HTTP errors), `fail_jobs()` (failed futures), `delete_checkpoint()`,
`compute_delay` (sleep before each job) and `job_delays` (per path), so pipelining is
observable, and `gates` (a job on that path waits for the event).
"""

from __future__ import annotations

import datetime as dt
import json
import queue
from collections import deque
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from . import wire

API = "/api/v1"


class HTTPError(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def _iso(delta_s: float = 0.0) -> str:
    return (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=delta_s)).isoformat()


def _page(key: str, items: list) -> dict:
    return {key: items, "cursor": {"offset": 0, "limit": len(items), "total_count": len(items)}}


class _Future:
    def __init__(self, request_id: str, path: str):
        self.request_id, self.path, self.done = request_id, path, threading.Event()
        self.kind, self.payload = "", None  # ("json", dict) or ("proto", bytes)


class TinkerProtocolServer:
    def __init__(self, compute, models, api_key: str = "tml-test", *, poll_timeout: float = 2.0,
                 compute_delay: float = 0.0, use_pyqwest: bool = False):
        self.compute, self.api_key = compute, api_key
        self.models = [m if isinstance(m, dict) else {"model_name": m} for m in models]
        self.poll_timeout = poll_timeout  # retrieve_future long-poll before answering try_again
        self.compute_delay = compute_delay
        self.job_delays: dict[str, float] = {}  # path substring -> sleep before such a job
        self.gates: dict[str, list] = {}  # path substring -> [jobs to let through, threading.Event]
        self._job_faults: list[list] = []  # [path substring, remaining, message]
        self._held: deque = deque()  # jobs taken from the queue while batching samples, not yet run
        self.use_pyqwest = use_pyqwest  # ClientConfigResponse.use_pyqwest_transport (SDK: True)
        self.requests: list[tuple[str, object, float]] = []
        self.deliveries: list[tuple[str, str, float]] = []
        self.errors: list[str] = []
        self._faults: list[list] = []  # [path substring, status, remaining, headers]
        self._lock = threading.RLock()
        self._futures: dict[str, _Future] = {}
        self._models: dict[str, dict] = {}  # model_id -> {handle, base_model, lora_rank, ...}
        self._checkpoints: dict[str, dict] = {}  # tinker path -> record
        self._samplers: dict[str, dict] = {}  # sampling_session_id -> record
        self._files: dict[str, bytes] = {}  # "signed URL" token -> bytes
        self._jobs: queue.Queue = queue.Queue()
        self._counter = 0
        self._httpd: ThreadingHTTPServer | None = None
        self.base_url = ""

    def start(self) -> str:
        handler = type("Handler", (_Handler,), {"srv": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        threading.Thread(target=self._worker, daemon=True).start()
        return self.base_url

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
            self._jobs.put(None)

    # ---- test hooks -------------------------------------------------------------------------
    def fail_next(self, path_substring: str, status: int, times: int = 1,
                  retry_after_ms: int | None = 1) -> None:
        """Answer the next `times` requests whose path contains `path_substring` with `status`.
        `retry-after-ms` (honoured by the SDK's HTTP-level retry when 0 < x <= 60 s) keeps
        429/5xx retries fast; None gives the SDK's default 0.5 s, 1 s, 2 s... backoff."""
        headers = {"retry-after-ms": str(retry_after_ms)} if retry_after_ms else {}
        with self._lock:
            self._faults.append([path_substring, status, times, headers])

    def fail_jobs(self, path_substring: str, times: int = 1, message: str = "worker lost", skip: int = 0) -> None:
        """Fail `times` jobs (futures) of that path, after `skip` that succeed, with a server-category error."""
        with self._lock:
            self._job_faults.append([path_substring, times, message, skip])

    def delete_checkpoint(self, tinker_path: str) -> None:
        with self._lock:
            self._checkpoints.pop(tinker_path, None)

    def checkpoint_paths(self) -> list[str]:
        with self._lock:
            return list(self._checkpoints)

    # ---- plumbing ---------------------------------------------------------------------------
    def _next_id(self, prefix: str) -> str:
        with self._lock:
            self._counter += 1
            return f"{prefix}-{self._counter}"

    def _take_fault(self, path: str):
        with self._lock:
            for f in self._faults:
                if f[0] in path and f[2] > 0:
                    f[2] -= 1
                    return f[1], f[3]
        return None

    def _submit(self, path: str, job, **extra) -> dict:
        """Queue `job` for the worker thread; answer with an UntypedAPIFuture."""
        fut = _Future(self._next_id("req"), path)
        with self._lock:
            self._futures[fut.request_id] = fut
        self._jobs.put((fut, job))
        return {"request_id": fut.request_id, **extra}

    def _next_job(self, block: bool = True):
        if self._held:
            return self._held.popleft()
        return self._jobs.get() if block else self._jobs.get(timeout=0.05)

    def _worker(self) -> None:
        while (item := self._next_job()) is not None:
            fut, job = item
            time.sleep(self.compute_delay + sum(d for p, d in self.job_delays.items() if p in fut.path))
            for p, gate in list(self.gates.items()):
                if p in fut.path:
                    if gate[0] > 0:
                        gate[0] -= 1
                    else:
                        gate[1].wait()
            if getattr(job, "sample_args", None) is not None and hasattr(self.compute, "sample_batch"):
                self._run_samples(fut, job)
                continue
            self._run(fut, job)

    def _run(self, fut, job) -> None:
        try:
            fault = self._take_job_fault(fut.path)
            if fault:
                raise RuntimeError(fault)
            fut.kind, fut.payload = job()
        except Exception as e:  # noqa: BLE001 - any compute failure fails the future
            user = isinstance(e, (ValueError, HTTPError))
            fut.kind, fut.payload = "json", {"error": f"{type(e).__name__}: {e}",
                                             "category": "user" if user else "server"}
        fut.done.set()

    def _take_job_fault(self, path: str) -> str:
        with self._lock:
            for f in self._job_faults:
                if f[0] in path and f[3] > 0:
                    f[3] -= 1
                elif f[0] in path and f[1] > 0:
                    f[1] -= 1
                    return f[2]
        return ""

    def _run_samples(self, fut, job) -> None:
        """Every sampling request waiting now, grouped by weights and params: one compute call per
        group. Other jobs taken meanwhile run afterwards, in their order."""
        groups: dict = {job.sample_args[0]: [(fut, job)]}
        others: deque = deque()
        while True:
            try:
                item = self._jobs.get(timeout=0.05)
            except queue.Empty:
                break
            if item is not None and getattr(item[1], "sample_args", None) is not None:
                groups.setdefault(item[1].sample_args[0], []).append(item)
            else:
                others.append(item)
                if item is None:
                    break
        self._held.extend(others)
        for group in groups.values():
            _, _, rest, weights = group[0][1].sample_args
            try:
                outs = self.compute.sample_batch(weights, [j.sample_args[1] for _, j in group], *rest[:4],
                                                 [j.sample_args[2][4] for _, j in group], base_model=rest[5])
                if len(outs) != len(group):
                    raise RuntimeError("compute.sample_batch returned the wrong number of results")
                for (f, j), seqs in zip(group, outs):
                    f.kind, f.payload = j.encode(seqs)
                    f.done.set()
            except Exception:  # noqa: BLE001 - one request at a time, each with its own error
                for f, j in group:
                    self._run(f, j)

    def _get(self, table: dict, key: str, what: str) -> dict:
        with self._lock:
            if key not in table:
                raise HTTPError(404, f"{what} not found: {key}")
            return table[key]

    def _check_base_model(self, name: str) -> None:
        names = [m["model_name"] for m in self.models]
        if name not in names:
            raise HTTPError(400, f"Base model {name!r} is not supported. "
                                 f"Supported models: {', '.join(names)}")

    def _new_model(self, model_id: str, base_model: str, rank: int, seed, layers: dict) -> dict:
        rec = {"handle": None, "base_model": base_model, "lora_rank": rank, "seed": seed,
               "layers": layers, "created": _iso()}
        with self._lock:
            self._models[model_id] = rec
        return rec

    def _save(self, model_id: str, kind: str, name: str, data: bytes, files=None) -> str:
        segment = {"training": "weights", "sampler": "sampler_weights",
                   "external": "external_weights"}[kind]
        path, rec = f"tinker://{model_id}/{segment}/{name}", self._models[model_id]
        with self._lock:
            self._checkpoints[path] = {
                "path": path, "run": model_id, "kind": kind, "id": f"{segment}/{name}",
                "data": data, "files": files, "time": _iso(), "base_model": rec["base_model"],
                "lora_rank": rec["lora_rank"], "layers": rec["layers"]}
        return path

    @staticmethod
    def _ck_json(c: dict) -> dict:
        return {"checkpoint_id": c["id"], "checkpoint_type": c["kind"], "time": c["time"],
                "tinker_path": c["path"], "size_bytes": len(c["data"]), "public": False}

    def _run_json(self, model_id: str) -> dict:
        rec = self._get(self._models, model_id, "Training run")
        return {"training_run_id": model_id, "base_model": rec["base_model"], "is_lora": True,
                "model_owner": "evsys-test", "lora_rank": rec["lora_rank"],
                "last_request_time": rec["created"]}

    # ---- endpoints --------------------------------------------------------------------------
    def handle(self, method: str, path: str, body) -> object:
        """Return a JSON-able object (None -> null) or (status, content_type, bytes)."""
        p = path[len(API):] if path.startswith(API) else path
        exact = {
            ("GET", "/healthz"): lambda: {"status": "ok"},
            ("POST", "/client/config"): lambda: {
                "pjwt_auth_enabled": False, "use_pyqwest_transport": self.use_pyqwest,
                "proto_compress_fwdbwd": False, "sample_use_retrieve_futures": False,
                "sample_join_sampling_session": False, "custom_loss_server_side": False},
            ("POST", "/client/dynamic_config"): lambda: {"refresh_interval_sec": 300},
            ("POST", "/telemetry"): lambda: {"status": "accepted"},
            ("POST", "/create_session"): lambda: {"type": "create_session",
                                                  "session_id": str(uuid.uuid4())},
            ("POST", "/session_heartbeat"): lambda: {"type": "session_heartbeat"},
            ("GET", "/get_server_capabilities"): lambda: {"supported_models": [
                {"trainable": True, "sampleable": True, **m} for m in self.models]},
            ("POST", "/create_model"): lambda: self._create_model(body),
            ("POST", "/get_info"): lambda: self._get_info(body["model_id"]),
            ("POST", "/forward_backward"): lambda: self._forward_backward(body),
            ("POST", "/optim_step"): lambda: self._optim_step(body),
            **{("POST", f"/save_weights{s}"): lambda: self._save_weights(p, body)
               for s in ("", "_for_sampler", "_external")},
            ("POST", "/load_weights"): lambda: self._load_weights(body),
            ("POST", "/create_sampling_session"): lambda: self._create_sampling_session(body),
            ("POST", "/asample"): lambda: self._asample(body),
            ("POST", "/retrieve_future"): lambda: self._retrieve(body),
            ("POST", "/cancel_future"): lambda: None,
            ("POST", "/weights_info"): lambda: self._weights_info(body["tinker_path"]),
            ("GET", "/checkpoints"): lambda: _page("checkpoints", [  # list_user_checkpoints
                self._ck_json(c) for c in list(self._checkpoints.values())]),
            ("GET", "/training_runs"): lambda: _page("training_runs", [
                self._run_json(m) for m in list(self._models)]),
        }
        if (method, p) in exact:
            return exact[(method, p)]()
        if method == "POST" and p.startswith("/sessions/") and p.endswith("/finish"):
            return None  # ServiceClient.close()
        if method == "GET" and p.startswith("/samplers/"):
            s = self._get(self._samplers, p[len("/samplers/"):], "Sampler")
            return {"sampler_id": p[len("/samplers/"):], "base_model": s["base_model"],
                    "model_path": s["model_path"]}
        if p.startswith("/training_runs/"):
            return self._training_runs(method, unquote(p[len("/training_runs/"):]))
        if method == "GET" and path.startswith("/files/"):  # "signed" download URL, no auth
            return 200, "application/octet-stream", self._get(self._files, path[7:], "File")
        raise HTTPError(404, "Not Found")

    def _create_model(self, body: dict) -> dict:
        self._check_base_model(body["base_model"])
        model_id = f"{body['session_id']}:train:{body['model_seq_id']}"
        lora = body.get("lora_config") or {}
        layers = {k: lora.get(k, True) for k in ("train_mlp", "train_attn", "train_unembed")}  # the service's defaults
        if layers != {"train_mlp": True, "train_attn": True, "train_unembed": False}:
            raise HTTPError(400, f"this test server's compute adapts attention and MLP only, not {layers}")
        rec = self._new_model(model_id, body["base_model"], lora.get("rank", 32), lora.get("seed"), layers)

        def job():
            rec["handle"] = self.compute.create(rec["base_model"], rec["lora_rank"], rec["seed"])
            return "json", {"type": "create_model", "model_id": model_id}
        return self._submit(API + "/create_model", job, model_id=model_id)

    def _get_info(self, model_id: str) -> dict:
        rec = self._get(self._models, model_id, "Model")
        return {"type": "get_info", "model_id": model_id, "is_lora": True,
                "lora_rank": rec["lora_rank"], "model_name": rec["base_model"],
                "optimizer_config": {"type": "adamw"},
                "model_data": {"arch": "fake", "model_name": rec["base_model"]}}

    def _forward_backward(self, req: dict) -> dict:
        rec = self._get(self._models, req["model_id"], "Model")
        datums = [(d["model_input"], [int(t) for t in d["loss_fn_inputs"].get("target_tokens", [])],
                   d["loss_fn_inputs"].get("weights")) for d in req["data"]]

        def job():
            out = dict(self.compute.forward_backward(rec["handle"], datums, loss_fn=req["loss_fn"],
                                                     forward_only=req["forward_only"]))
            per_datum = {}
            if out.get("logprobs") is not None:
                per_datum["logprobs"] = lps = out.pop("logprobs")
                per_datum["elementwise_loss"] = [
                    [-x * (w[i] if w else 1.0) for i, x in enumerate(row)]
                    for row, (_, _, w) in zip(lps, datums)]
            metrics = {("loss:sum" if k == "loss" else k if ":" in k else f"{k}:sum"): v
                       for k, v in out.items()}
            return "proto", wire.encode_forward_backward_output(metrics, per_datum, len(datums))
        return self._submit(API + "/forward_backward", job, model_id=req["model_id"])

    def _optim_step(self, body: dict) -> dict:
        rec = self._get(self._models, body["model_id"], "Model")
        adam = body.get("adam_params") or body.get("optimizer_params") or {}
        return self._submit(API + "/optim_step", lambda: (
            "json", {"metrics": self.compute.optim_step(rec["handle"], adam) or {}}),
            model_id=body["model_id"])

    def _save_weights(self, p: str, body: dict) -> dict:
        model_id, name = body["model_id"], body.get("path")
        h = self._get(self._models, model_id, "Model")
        typ = p.lstrip("/")

        def job():
            if typ == "save_weights":
                return "json", {"type": typ, "path": self._save(
                    model_id, "training", name or self._next_id("state"),
                    self.compute.save_state(h["handle"]))}
            if typ == "save_weights_external":
                export = getattr(self.compute, "export_files", None)
                files = export(h["handle"]) if export else {
                    "adapter_weights.bin": self.compute.sampler_weights(h["handle"])}
                path = self._save(model_id, "external", name, json.dumps(sorted(files)).encode(),
                                  files=files)
                return "json", {"type": typ, "path": path,
                                "size_bytes": sum(len(v) for v in files.values())}
            weights = self.compute.sampler_weights(h["handle"])
            if name is not None:
                return "json", {"type": typ, "path": self._save(model_id, "sampler", name, weights)}
            # save_weights_and_get_sampling_client(): ephemeral weights -> new sampling session
            sid = f"{model_id.split(':train:')[0]}:sample:{body['sampling_session_seq_id']}"
            with self._lock:
                self._samplers[sid] = {"base_model": h["base_model"], "model_path": None,
                                       "weights": weights}
            return "json", {"type": typ, "sampling_session_id": sid}
        return self._submit(API + p, job, model_id=model_id)

    def _load_weights(self, body: dict) -> dict:
        ck = self._get(self._checkpoints, body["path"], "Checkpoint")  # 404 if unknown/deleted
        if ck["kind"] != "training":
            raise HTTPError(400, f"Not a training checkpoint (tinker://<run>/weights/<name>): "
                                 f"{body['path']}")
        if body.get("model_id"):  # legacy TrainingClient.load_state*(): existing model
            model_id = body["model_id"]
            rec = self._get(self._models, model_id, "Model")
        else:  # ServiceClient.create_training_client_from_state*(): create-via-load
            model_id = f"{body['session_id']}:train:{body['model_seq_id']}"
            self._check_base_model(body.get("base_model") or ck["base_model"])
            rec = self._new_model(model_id, body.get("base_model") or ck["base_model"],
                                  ck["lora_rank"], None, ck["layers"])

        def job():
            if rec["handle"] is None:
                rec["handle"] = self.compute.create(rec["base_model"], rec["lora_rank"], None)
            self.compute.load_state(rec["handle"], ck["data"], optimizer=bool(body["optimizer"]))
            return "json", {"type": "load_weights", "path": body["path"], "model_id": model_id}
        return self._submit(API + "/load_weights", job, model_id=model_id)

    def _create_sampling_session(self, body: dict) -> dict:
        sid = f"{body['session_id']}:sample:{body['sampling_session_seq_id']}"
        if body.get("model_path"):
            ck = self._get(self._checkpoints, body["model_path"], "Checkpoint")
            if ck["kind"] != "sampler":
                raise HTTPError(400, "model_path must be a sampler checkpoint "
                                     f"(tinker://<run>/sampler_weights/<name>): {ck['path']}")
            rec = {"base_model": ck["base_model"], "model_path": ck["path"], "weights": ck["data"]}
        else:
            self._check_base_model(body.get("base_model") or "")
            rec = {"base_model": body["base_model"], "model_path": None, "weights": None}
        with self._lock:
            self._samplers[sid] = rec
        return {"type": "create_sampling_session", "sampling_session_id": sid}

    def _asample(self, body: dict) -> dict:
        s = self._get(self._samplers, body.get("sampling_session_id") or "", "Sampling session")
        prompt = [t for c in body["prompt"]["chunks"] for t in c.get("tokens", [])]
        sp, n = body["sampling_params"], body.get("num_samples", 1)
        stops = sp.get("stop") if isinstance(sp.get("stop"), list) else []

        def encode(outs):
            if len(outs) != n:
                raise RuntimeError(f"compute.sample returned {len(outs)} sequences, wanted {n}")
            seqs = []
            for o in outs:
                toks, lps = (list(o[0]), o[1]) if isinstance(o, tuple) else (list(o), None)
                full = sp.get("max_tokens") is not None and len(toks) >= sp["max_tokens"]
                seqs.append((toks, lps, "stop" if (toks and toks[-1] in stops) or not full
                             else "length"))
            return "proto", wire.encode_sample_response(seqs)

        if body.get("prompt_logprobs"):  # compute_logprobs: scored one request at a time
            last_n = body.get("prompt_logprobs_last_n")

            def scored():
                lps = self.compute.prompt_logprobs(s["weights"], prompt, base_model=s["base_model"])
                if last_n:
                    lps = [None] * (len(lps) - last_n) + lps[-last_n:]
                _, out = encode(self.compute.sample(s["weights"], prompt, sp.get("max_tokens"), sp.get("temperature", 1.0),
                                                    sp.get("stop"), n, sp.get("seed"), base_model=s["base_model"]))
                return "proto", out + wire.encode_sample_response([], lps)
            return self._submit(API + "/asample (prompt logprobs)", scored, sample_sequence_ids=[self._next_id("seq") for _ in range(n)])

        def job():
            return encode(self.compute.sample(s["weights"], prompt, sp.get("max_tokens"),
                                              sp.get("temperature", 1.0), sp.get("stop"), n,
                                              sp.get("seed"), base_model=s["base_model"]))
        rest = (sp.get("max_tokens"), sp.get("temperature", 1.0), sp.get("stop"), n, sp.get("seed"),
                s["base_model"])
        job.encode = encode
        group_key = (id(s["weights"]), json.dumps(rest[:4]))  # same weights and params: batchable
        job.sample_args = (group_key, prompt, rest, s["weights"])
        ids = [self._next_id("seq") for _ in range(n)]  # -> SampledSequence.sequence_id
        return self._submit(API + "/asample", job, sample_sequence_ids=ids)

    def _retrieve(self, body: dict) -> object:
        fut = self._get(self._futures, body["request_id"], "Future")
        if not fut.done.wait(self.poll_timeout):  # long poll; the SDK re-polls at once
            return {"type": "try_again", "request_id": fut.request_id, "queue_state": "active"}
        with self._lock:
            self.deliveries.append((fut.request_id, fut.path, time.monotonic()))
        return (200, "application/x-protobuf", fut.payload) if fut.kind == "proto" else fut.payload

    def _weights_info(self, tinker_path: str) -> dict:
        c = self._get(self._checkpoints, tinker_path, "Checkpoint")
        return {"base_model": c["base_model"], "is_lora": True, "lora_rank": c["lora_rank"],
                "optimizer_config": {"type": "adamw"}, **c["layers"]}

    def _training_runs(self, method: str, rest: str) -> object:
        run, _, sub = rest.partition("/")  # run ids contain ':' but no '/'
        if method == "GET" and not sub:
            return self._run_json(run)
        if method == "GET" and sub == "checkpoints":
            return {"checkpoints": [self._ck_json(c) for c in list(self._checkpoints.values())
                                    if c["run"] == run]}
        parts = sub.split("/")  # checkpoints/<weights|sampler_weights|external_weights>/<name>/..
        if parts[0] != "checkpoints" or len(parts) < 3:
            raise HTTPError(404, "Not Found")
        ck = self._get(self._checkpoints, f"tinker://{run}/{parts[1]}/{parts[2]}", "Checkpoint")
        action = "/".join(parts[3:])
        if method == "DELETE" and not action:
            return self.delete_checkpoint(ck["path"])
        if method in ("PUT", "POST", "DELETE") and action in ("ttl", "publish"):
            return None
        if method == "GET" and action in ("external_weights_urls", "archive"):
            urls = {}
            for fname, data in (ck["files"] or {"checkpoint.bin": ck["data"]}).items():
                token = uuid.uuid4().hex
                with self._lock:
                    self._files[token] = data
                urls[fname] = f"{self.base_url}/files/{token}"
            if action == "archive":  # SDK <= 0.35 get_checkpoint_archive_url (gone in 0.36)
                return {"url": next(iter(urls.values())), "expires": _iso(3600)}
            return {"urls": urls, "expires": _iso(3600)}
        raise HTTPError(404, "Not Found")


class _Handler(BaseHTTPRequestHandler):
    srv: TinkerProtocolServer
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries Content-Length
    disable_nagle_algorithm = True  # else header/body in 2 writes cost ~40 ms (delayed ACK)

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, ctype: str, data: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in {"Content-Type": ctype, "Content-Length": str(len(data)),
                     **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, detail: str, headers: dict | None = None) -> None:
        self._send(status, "application/json", json.dumps({"detail": detail}).encode(), headers)

    def _dispatch(self) -> None:
        srv, path = self.srv, urlsplit(self.path).path
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))  # SDK never chunks
        try:
            body = (wire.decode_forward_backward(raw) if path == API + "/forward_backward"
                    else json.loads(raw) if raw else None)
        except Exception as e:  # noqa: BLE001
            return self._error(400, f"Malformed request body: {e}")
        with srv._lock:
            srv.requests.append((path, body, time.monotonic()))
        try:
            if not path.startswith("/files/") and self.headers.get("X-API-Key") != srv.api_key:
                raise HTTPError(401, "Invalid API key")
            if (fault := srv._take_fault(path)) is not None:
                return self._error(fault[0], f"Injected HTTP {fault[0]}", fault[1])
            result = srv.handle(self.command, path, body)
        except HTTPError as e:
            return self._error(e.status, e.detail)
        except (KeyError, TypeError, ValueError) as e:
            return self._error(400, f"Bad request: {type(e).__name__}: {e}")
        except Exception as e:  # noqa: BLE001 - a bug in this fake: record it, don't retry-storm
            srv.errors.append(traceback.format_exc())
            return self._error(500, f"fake server bug: {e!r}", {"x-should-retry": "false"})
        if isinstance(result, tuple):
            return self._send(*result)
        self._send(200, "application/json", json.dumps(result).encode())

    do_GET = do_POST = do_PUT = do_DELETE = _dispatch
