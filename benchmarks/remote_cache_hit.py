"""What a cache hit costs over the network: a fully cached build against the local store, against an
S3 store directly (`--cache-dir s3://…`), and reading through S3 into an empty local store.

It starts moto (the S3-protocol server the tests use) on loopback, builds a small experiment once,
pushes it, then times fully cached rebuilds and counts the S3 requests and bytes each one makes.
Loopback hides network latency, so the request counts are the portable result: over a real network a
cached build costs about (requests x round trip) + (bytes / bandwidth).

    pip install -e '.[local,dev]'
    python benchmarks/remote_cache_hit.py [--rows 200] [--arms 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the moto fixture and the test data helpers

CONFIG = """\
experiment: {name: cachehit}
output_dir: out
data: {source_kind: jsonl, path: data/train.jsonl}
transforms:
  - kind: jsonl_to_chat
    params: {user_template: "{query}", assistant_template: "<answer>{tool_slug}</answer>"}
model: {name: evsys/tiny-qwen3}
backend: {kind: local}
algorithm:
  kind: sft
  params: {learning_rate: 1.0e-3, max_steps: 4, batch_size: 4, lora_rank: 4}
metadata:
  benchmark:
    - {name: val, path: val, max_tokens: 4, run_every: 2}
sweep:
  seed: [SEEDS]
"""


class Requests:
    """Counts the S3 calls (by API method) and the bytes moved, by wrapping s3fs's one entry point."""

    def __init__(self):
        self.calls: collections.Counter = collections.Counter()
        self.bytes_in = self.bytes_out = 0

    def wrap(self, fs) -> None:
        inner = fs._call_s3

        async def counted(method, *args, **kwargs):
            self.calls[method] += 1
            self.bytes_out += len(kwargs.get("Body") or b"")
            out = await inner(method, *args, **kwargs)
            if method == "get_object":
                body = out["Body"]
                read = body.read

                async def counting_read(*a, **k):
                    data = await read(*a, **k)
                    self.bytes_in += len(data)
                    return data

                body.read = counting_read
            return out

        fs._call_s3 = counted

    def reset(self) -> dict:
        out = {"requests": sum(self.calls.values()), "by_method": dict(self.calls), "mb_in": self.bytes_in / 1e6, "mb_out": self.bytes_out / 1e6}
        self.calls.clear()
        self.bytes_in = self.bytes_out = 0
        return out


def build(project_dir: Path, store) -> float:
    from evsys_build.build import build_project
    from evsys_rules.frontend import open_project

    started = time.perf_counter()
    code = build_project(open_project(project_dir / "config.yaml", store), store, echo=lambda line: None)
    if code != 0:
        raise SystemExit(f"build failed with exit {code}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--arms", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="evsys-cachehit-"))
    os.environ.setdefault("EVSYS_MODELS", str(work / "models"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    from evsys_testkit import tool_rows, write_jsonl
    from moto_server import MotoS3

    server = MotoS3().start()
    os.environ.update(server.env)
    os.environ.pop("AWS_PROFILE", None)
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    server.create_bucket(bucket)
    url = f"s3://{bucket}/team"

    from evsys_build.store import Store, open_store
    from evsys_build.sync import sync_nodes
    from evsys_build.planner import resolve_keys
    from evsys_rules.frontend import open_project

    project = work / "project"
    write_jsonl(project / "data" / "train.jsonl", tool_rows(args.rows))
    write_jsonl(project / "val" / "tasks.jsonl", [{"task_id": f"t{i}", "instruction": f"query {i}", "verifier": {"kind": "in_process", "fn_name": "contains", "expected": "A"}} for i in range(8)])
    (project / "config.yaml").write_text(CONFIG.replace("SEEDS", ", ".join(str(i) for i in range(args.arms))))
    os.chdir(project)

    local = Store(work / "local")
    cold = build(project, local)
    remote = open_store(url)
    counter = Requests()
    counter.wrap(remote.bucket.api.fs)
    keys = [m["key"] for m in resolve_keys(local, open_project(project / "config.yaml", local).graph).values()]
    started = time.perf_counter()
    pushed = sync_nodes(local, remote, keys, list(local.iter_runs()))
    push_s, push_requests = time.perf_counter() - started, counter.reset()

    rows = []
    times = [build(project, local) for _ in range(args.repeat)]
    rows.append(("cached build, local store", statistics.median(times), {"requests": 0, "mb_in": 0.0, "mb_out": 0.0}))
    times, requests = [], None
    for _ in range(args.repeat):
        times.append(build(project, open_store(url)))
        requests = counter.reset()
    rows.append(("cached build, --cache-dir s3://", statistics.median(times), requests))
    fresh = Store(work / "fresh", upstream=open_store(url))
    first = build(project, fresh)
    rows.append(("read-through into an empty local store (pulls)", first, counter.reset()))
    again = statistics.median(build(project, fresh) for _ in range(args.repeat))
    rows.append(("read-through, second build (local hits)", again, counter.reset()))

    nodes = len(keys)
    print(f"{nodes} nodes ({args.arms} arms, {args.rows} rows); cold build {cold:.1f}s; push {pushed.nodes_copied} nodes, "
          f"{pushed.objects_copied} objects, {pushed.bytes_copied / 1e6:.2f} MB in {push_s:.2f}s, {push_requests['requests']} requests")
    print(f"{'':<50} {'seconds':>8} {'requests':>9} {'req/node':>9} {'MB in':>7} {'MB out':>7}")
    for label, seconds, req in rows:
        print(f"{label:<50} {seconds:8.2f} {req['requests']:9d} {req['requests'] / nodes:9.1f} {req['mb_in']:7.2f} {req['mb_out']:7.2f}")
    print("requests of a cached build on s3:", json.dumps(rows[1][2]["by_method"], sort_keys=True))
    server.stop()


if __name__ == "__main__":
    main()
