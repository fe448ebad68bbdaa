"""Helpers shared by the engine/data tests: run the real CLI, write data and configs, read a store."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

from evsys_build.store import Store

EXPERIMENT = "evsys_test"
SYSTEM_PROMPT = "You select the single best tool for the user's query."
USER_TEMPLATE = "Query: {query}\\nReply with the tool slug inside <answer></answer>."
ASSISTANT_TEMPLATE = "<answer>{tool_slug}</answer>"
USER_TEMPLATE_TEXT = USER_TEMPLATE.replace("\\n", "\n")  # the template after YAML reads it
RULES = {"source", "transform", "tokenize", "train", "checkpoint", "eval", "report"}

# Block style on purpose: tests edit it with str.replace and check line:col in errors.
BASE_CONFIG = f"""\
experiment:
  name: {EXPERIMENT}
  hypothesis: "the engine caches what did not change"
run_name: first_run
output_dir: out
seed: 0
data:
  source_kind: jsonl
  path: data/train.jsonl
transforms:
  - kind: jsonl_to_chat
    params:
      system_prompt: "{SYSTEM_PROMPT}"
      user_template: "{USER_TEMPLATE}"
      assistant_template: "{ASSISTANT_TEMPLATE}"
  - kind: dedup
model:
  name: evsys/tiny-qwen3
backend:
  kind: local
algorithm:
  kind: sft
  params:
    learning_rate: 1.0e-4
    max_steps: 1
    batch_size: 2
    lora_rank: 1
    supervise: all_assistant
callbacks:
  - kind: local_logger
    params:
      print_every: 1
"""

SLUGS = [
    "OUTLOOK_CREATE_CONTACT",
    "SLACK_UPDATES_A_SLACK_MESSAGE",
    "GOOGLECALENDAR_CREATE_EVENT",
    "GMAIL_SEND_EMAIL",
    "GITHUB_CREATE_ISSUE",
    "NOTION_CREATE_PAGE",
    "JIRA_CREATE_TICKET",
]


def tool_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` distinct {query, tool_slug} rows, deterministic per seed."""
    rng = random.Random(seed)
    return [{"query": f"request {i}: please handle item {rng.randrange(10**6)}", "tool_slug": SLUGS[i % len(SLUGS)]} for i in range(n)]


def runs(ids, weights, trained=True) -> list[list[int]]:
    """Maximal runs of consecutive tokens whose weight is (or is not) positive."""
    out, current = [], []
    for t, w in zip(ids, weights):
        if (w > 0) == trained:
            current.append(t)
        elif current:
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def evsys(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (`python -m evsys_build.cli`)."""
    full_env = dict(os.environ)
    full_env.pop("EVSYS_CACHE", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "evsys_build.cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def ran_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("ran ")]


def ran_names(stdout: str) -> set[str]:
    """Node names of the `ran     <name>  <secs>s  <key12>` lines."""
    return {line[len("ran") :].strip().rsplit("  ", 2)[0] for line in ran_lines(stdout)}


def plan_json(project: Path, *extra: str, env: dict | None = None) -> dict[str, dict]:
    """`evsys plan --json` as {node name: entry}."""
    proc = ok(evsys("plan", "config.yaml", "--json", "--cache-dir", "cache", *extra, cwd=project, env=env))
    return {n["name"]: n for n in json.loads(proc.stdout)["nodes"]}


def make_project(root: Path, rows: list[dict], config: str = BASE_CONFIG) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_jsonl(root / "data" / "train.jsonl", rows)
    (root / "config.yaml").write_text(config)
    return root


def copy_project(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def edit_config(project: Path, old: str, new: str) -> None:
    path = project / "config.yaml"
    text = path.read_text()
    assert old in text, f"{old!r} not in config"
    path.write_text(text.replace(old, new, 1))


def ref_keys(cache: Path, experiment: str = EXPERIMENT, arm: str = "default") -> dict[str, str]:
    """Node name -> key of the last build, from the store's ref."""
    return {name: entry["key"] for name, entry in Store(cache).read_ref(experiment, arm)["nodes"].items()}


def data_graph(config: Path, store: Store):
    """The config's source, transform and tokenize nodes (no training), opened on `store`."""
    from evsys_build.graph import Graph
    from evsys_rules.frontend import open_project

    data = Graph()
    for node in open_project(config, store).graph.nodes():
        if node.rule in ("source", "transform", "tokenize"):
            data.add(node)
    return data


def manifest(cache: Path, key: str) -> dict:
    m = Store(cache).read_manifest(key)
    assert m is not None, f"no manifest for {key}"
    return m


def linked_model_copy(model_dir: Path, dest: Path) -> Path:
    """A copy of a model dir whose tokenizer files are real copies (editable) and weights are symlinks."""
    dest.mkdir(parents=True)
    for f in model_dir.iterdir():
        if f.name.startswith("token") or f.suffix in (".txt", ".jinja") or f.name == "vocab.json":
            shutil.copyfile(f, dest / f.name)
        else:
            (dest / f.name).symlink_to(f.resolve())
    return dest


# A project with a row-local plugin, a filter and an in-loop benchmark: what the early-cutoff and
# corruption tests build once (conftest `built_evals`) and copy.
EVALS_CONFIG = """\
experiment: {name: cutoff}
output_dir: out
plugins: [tag.py]
data: {source_kind: jsonl, path: data/train.jsonl}
transforms:
  - kind: tag_rows
  - kind: filter
    params: {field: query, op: min_len, value: 1}
  - kind: jsonl_to_chat
    params: {user_template: "{query}", assistant_template: "<answer>{tool_slug}</answer>"}
model: {name: evsys/tiny-qwen3}
backend: {kind: local}
algorithm:
  kind: sft
  params: {learning_rate: 1.0e-3, max_steps: 2, batch_size: 2, lora_rank: 1}
metadata:
  benchmark:
    - {name: val, path: val, max_tokens: 4, run_every: 1}
"""

EVALS_PLUGIN = '''\
from evsys_sdk import register_transform


def shout(text):
    return text.upper()


@register_transform("tag_rows")
class TagRows:
    row_local = True

    def __init__(self, **kw):
        pass

    def __call__(self, rows):
        return [dict(r, query=shout(r["query"])) for r in rows]
'''


def make_evals_project(root: Path) -> Path:
    project = make_project(root, tool_rows(30), EVALS_CONFIG)
    (project / "tag.py").write_text(EVALS_PLUGIN)
    tasks = [{"task_id": f"t{i}", "instruction": f"query {i}", "verifier": {"kind": "in_process", "fn_name": "contains", "expected": "A"}} for i in range(3)]
    write_jsonl(project / "val" / "tasks.jsonl", tasks)
    return project
