"""What reruns and why, through the real CLI on a copy of one built project.

Caching is asserted by counting executions (`ran` lines, manifests' creation), never by timing.
"""

from __future__ import annotations

import json
import shutil

import pytest

from evsys_build.store import Store
from evsys_testkit import (
    EXPERIMENT,
    RULES,
    USER_TEMPLATE,
    edit_config,
    evsys,
    linked_model_copy,
    ok,
    plan_json,
    ran_lines,
    ran_names,
    ref_keys,
)

DATA_NODES = ["source", "transform[0] jsonl_to_chat", "transform[1] dedup", "tokenize"]
MODEL_NODES = ["train", "checkpoint@1", "report"]


def build(project, *extra, env=None) -> str:
    return ok(evsys("build", "config.yaml", "--cache-dir", "cache", *extra, cwd=project, env=env)).stdout


def statuses(plan: dict) -> dict[str, str]:
    return {name: entry["status"] for name, entry in plan.items()}


def test_first_build_ran_every_node_once(built_project):
    out = (built_project / "first-build.txt").read_text()
    assert ran_names(out) == {"source", "transform[0] jsonl_to_chat", "transform[1] dedup", "tokenize", "train", "report"}
    # the checkpoint is written by train while it runs, so it is never run on its own
    assert sum(line.split()[1:2] == ["checkpoint@1"] for line in out.splitlines()) == 1
    assert out.rstrip().splitlines()[-1] == "run dir: out/first_run"
    assert (built_project / "out" / "first_run" / "metrics.jsonl").is_file()


def test_rebuild_runs_nothing(project_copy):
    before = {k: Store(project_copy / "cache").read_manifest(k)["created"] for k in ref_keys(project_copy / "cache").values()}
    out = build(project_copy)
    assert ran_lines(out) == []
    cached = [line for line in out.splitlines() if line.startswith("cached  ")]
    assert len(cached) == len(DATA_NODES) + len(MODEL_NODES)
    after = {k: Store(project_copy / "cache").read_manifest(k)["created"] for k in ref_keys(project_copy / "cache").values()}
    assert after == before  # no manifest rewritten
    assert all(e["status"] == "cached" and e["reasons"] == [] for e in plan_json(project_copy).values())


def test_plan_json_shape_and_rule_values(built_project, tmp_path):
    proc = ok(evsys("plan", "config.yaml", "--json", "--cache-dir", str(tmp_path / "empty"), cwd=built_project))
    nodes = json.loads(proc.stdout)["nodes"]
    assert [n["name"] for n in nodes] == DATA_NODES + MODEL_NODES
    for n in nodes:
        assert set(n) >= {"key", "id", "rule", "name", "arm", "status", "reasons"}
        assert n["rule"] in RULES and n["arm"] == "default" and len(n["id"]) == 32
        assert n["status"] == "run"
    # only the source's key is known before anything is built: every other key needs its inputs' outputs
    assert len(nodes[0]["key"]) == 32 and all(n["key"] is None for n in nodes[1:])
    assert {n["rule"] for n in nodes} == {"source", "transform", "tokenize", "train", "checkpoint", "report"}
    reasons = {n["name"]: n["reasons"] for n in nodes}
    assert reasons["source"] == ["never built"]
    assert reasons["checkpoint@1"] == ["produced by train"]


def test_changing_a_transform_param_reruns_it_and_downstream_only(project_copy):
    new_template = USER_TEMPLATE.replace("Query:", "User query:")
    edit_config(project_copy, f'user_template: "{USER_TEMPLATE}"', f'user_template: "{new_template}"')
    plan = plan_json(project_copy)
    assert statuses(plan) == {"source": "cached", "transform[0] jsonl_to_chat": "run", **{n: "maybe" for n in DATA_NODES[2:] + MODEL_NODES}}
    (reason,) = plan["transform[0] jsonl_to_chat"]["reasons"]
    assert reason.startswith("transforms[0].params.user_template: Query: {query}")
    assert " → User query: {query}" in reason
    assert plan["transform[1] dedup"]["reasons"] == ["runs if transform[0] jsonl_to_chat changes"]
    assert plan["tokenize"]["reasons"] == ["runs if transform[1] dedup changes"]
    assert plan["train"]["reasons"] == ["runs if tokenize changes"]

    out = build(project_copy)
    assert ran_names(out) == {"transform[0] jsonl_to_chat", "transform[1] dedup", "tokenize", "train", "report"}
    assert "cached  source" in out
    # and then it is all cached again
    assert ran_lines(build(project_copy)) == []


def test_an_edit_at_the_end_of_a_long_value_is_shown_where_it_is_and_on_one_line(project_copy):
    """Cut from its start, a long template would read the same on both sides of the arrow."""
    new_template = USER_TEMPLATE.replace("</answer>.", "</answer>. Be brief.")
    edit_config(project_copy, f'user_template: "{USER_TEMPLATE}"', f'user_template: "{new_template}"')
    (reason,) = plan_json(project_copy)["transform[0] jsonl_to_chat"]["reasons"]
    assert reason == "transforms[0].params.user_template: ...e <answer></answer>. → ...e <answer></answer>. Be brief."
    text_plan = evsys("plan", "config.yaml", "--cache-dir", "cache", cwd=project_copy).stdout
    assert "user_template: ...e <answer></answer>. → ...e <answer></answer>. Be brief." in text_plan
    from evsys_build.change_text import change_pair

    assert change_pair("Query: {q}\nReply", "Query: {q}\nAnswer") == ("Query: {q}\\nReply", "Query: {q}\\nAnswer")  # one line per node


def test_changing_supervise_reruns_tokenize_with_its_reason(project_copy):
    edit_config(project_copy, "supervise: all_assistant", "supervise: all")
    plan = plan_json(project_copy)
    assert statuses(plan) == {**{n: "cached" for n in DATA_NODES[:3]}, "tokenize": "run", **{n: "maybe" for n in MODEL_NODES}}
    assert plan["tokenize"]["reasons"] == ["algorithm.params.supervise: all_assistant → all"]
    assert plan["train"]["reasons"] == ["runs if tokenize changes"]
    out = build(project_copy)
    assert {"tokenize", "train"} <= ran_names(out)  # all_assistant → all trains other tokens: new bytes


def test_changing_a_training_param_reruns_only_training(project_copy):
    edit_config(project_copy, "learning_rate: 1.0e-4", "learning_rate: 3.0e-4")
    plan = plan_json(project_copy)
    assert statuses(plan) == {**{n: "cached" for n in DATA_NODES}, "train": "run", "checkpoint@1": "run", "report": "maybe"}
    # 1.0e-4 is sft's default, so it is not part of the old key (defaults are dropped)
    assert plan["train"]["reasons"] == ["algorithm.params.learning_rate: (default) → 0.0003"]


def test_changing_the_data_file_reruns_from_the_source(project_copy):
    data = project_copy / "data" / "train.jsonl"
    lines = data.read_text().splitlines()
    lines[3] = json.dumps({"query": "an edited row", "tool_slug": "GMAIL_SEND_EMAIL"})
    data.write_text("\n".join(lines) + "\n")
    plan = plan_json(project_copy)
    assert plan["source"]["status"] == "run" and all(e["status"] == "maybe" for n, e in plan.items() if n != "source")
    assert plan["source"]["reasons"] == ["data file content changed"]
    assert plan["transform[0] jsonl_to_chat"]["reasons"] == ["runs if source changes"]
    assert {"source", "transform[0] jsonl_to_chat", "tokenize", "train"} <= ran_names(build(project_copy))


def test_touching_or_moving_the_data_file_reruns_nothing(project_copy):
    """Keys come from the bytes: a new mtime, a new inode or a new path with the same content is cached."""
    data = project_copy / "data" / "train.jsonl"
    moved = project_copy / "elsewhere" / "renamed.jsonl"
    moved.parent.mkdir()
    shutil.copyfile(data, moved)
    edit_config(project_copy, "path: data/train.jsonl", "path: elsewhere/renamed.jsonl")
    assert all(e["status"] == "cached" for e in plan_json(project_copy).values())
    assert ran_lines(build(project_copy)) == []


@pytest.mark.parametrize(
    "old, new, run_dir",
    [
        ("      print_every: 1\n", "      print_every: 5\n", "out/first_run"),
        ("callbacks:\n  - kind: local_logger\n    params:\n      print_every: 1\n", "", "out/first_run"),
        ("output_dir: out\n", "output_dir: elsewhere/outputs\n", "elsewhere/outputs/first_run"),
        ("run_name: first_run\n", "run_name: second_run\n", "out/second_run"),
    ],
    ids=["print_every", "no_callbacks", "output_dir", "run_name"],
)
def test_observer_and_location_settings_rerun_nothing(project_copy, old, new, run_dir):
    edit_config(project_copy, old, new)
    assert all(e["status"] == "cached" for e in plan_json(project_copy).values())
    out = build(project_copy)
    assert ran_lines(out) == []
    assert out.rstrip().splitlines()[-1] == f"run dir: {run_dir}"
    assert (project_copy / run_dir / "metrics.jsonl").is_file()


def test_same_model_in_another_directory_keeps_tokenize_and_a_new_chat_template_reruns_it(project_copy, tiny_model_dir):
    model = linked_model_copy(tiny_model_dir, project_copy / "my-model")
    edit_config(project_copy, "name: evsys/tiny-qwen3", "name: my-model")
    plan = plan_json(project_copy)
    assert plan["tokenize"]["status"] == "cached"  # the tokenizer's bytes, not its location
    assert all(plan[n]["status"] == "cached" for n in DATA_NODES)

    config_file = model / "tokenizer_config.json"
    tok_config = json.loads(config_file.read_text())
    tok_config["chat_template"] += "{#- an edited template -#}"
    config_file.write_text(json.dumps(tok_config, indent=2))
    plan = plan_json(project_copy)
    assert statuses(plan) == {**{n: "cached" for n in DATA_NODES[:3]}, "tokenize": "run", **{n: "maybe" for n in MODEL_NODES}}
    assert plan["tokenize"]["reasons"] == ["tokenizer file tokenizer_config.json changed"]
    # a template edit that renders the same text gives the same tokens: training stays cached
    assert ran_names(build(project_copy)) == {"tokenize"}


def test_a_removed_manifest_is_reported_and_only_that_node_reruns(project_copy):
    cache = project_copy / "cache"
    name = "transform[1] dedup"
    key = ref_keys(cache)[name]
    (cache / "nodes" / key[:2] / f"{key}.json").unlink()
    plan = plan_json(project_copy)
    assert plan[name]["status"] == "run"
    assert plan[name]["reasons"] == ["not in store (interrupted, removed by gc, or quarantined)"]
    assert [n for n, e in plan.items() if e["status"] == "run"] == [name]
    assert plan["tokenize"]["status"] == "maybe"  # its key needs dedup's output, which is gone
    out = build(project_copy)  # dedup reruns to the same bytes: everything below stays cached
    assert ran_names(out) == {name}
    assert ref_keys(cache)[name] == key and Store(cache).has_manifest(key)


def test_a_rule_code_change_is_a_reason(project_copy, monkeypatch):
    """Plan in-process as if run_transform's code had changed (its code identity differs)."""
    import evsys_rules.nodes.transform as transform_rule
    from evsys_build.plans import plan_entries

    real = transform_rule.code_identity
    monkeypatch.setattr(transform_rule, "code_identity", lambda obj: real(obj) + ("-edited" if obj is transform_rule.run_transform else ""))
    monkeypatch.chdir(project_copy)
    entries = {e.node.name: e for e in plan_entries(project_copy / "config.yaml", Store(project_copy / "cache"))}
    assert entries["source"].status == "cached"
    assert entries["transform[0] jsonl_to_chat"].reasons == ["transform code changed"]
    assert entries["transform[1] dedup"].status == "run" and entries["transform[1] dedup"].reasons == ["transform code changed"]
    assert entries["tokenize"].status == "maybe"


def test_plan_text_output_says_why(project_copy):
    edit_config(project_copy, "supervise: all_assistant", "supervise: last_assistant")
    proc = ok(evsys("plan", "config.yaml", "--cache-dir", "cache", cwd=project_copy))
    lines = proc.stdout.splitlines()
    tokenize = next(line for line in lines if line.split()[2:3] == ["tokenize"])
    assert tokenize.startswith("run ") and tokenize.endswith("(algorithm.params.supervise: all_assistant → last_assistant)")
    assert lines[-1] == "1 to run, 3 may run, 3 cached"


def test_default_store_is_in_the_run_dir_and_env_moves_it(project_copy):
    (project_copy / "cache").rename(project_copy / ".evsys-cache")
    proc = ok(evsys("plan", "config.yaml", "--json", cwd=project_copy))
    assert all(n["status"] == "cached" for n in json.loads(proc.stdout)["nodes"])
    moved = project_copy.parent / "shared-store"
    (project_copy / ".evsys-cache").rename(moved)
    proc = ok(evsys("plan", "config.yaml", "--json", cwd=project_copy, env={"EVSYS_CACHE": str(moved)}))
    assert all(n["status"] == "cached" for n in json.loads(proc.stdout)["nodes"])
    assert not (project_copy / ".evsys-cache" / "nodes").exists()


def test_refs_record_the_last_build(project_copy):
    refs = Store(project_copy / "cache").read_ref(EXPERIMENT, "default")
    assert refs["experiment"] == EXPERIMENT and refs["arm"] == "default"
    assert set(refs["nodes"]) == set(DATA_NODES + MODEL_NODES)
    tokenize = refs["nodes"]["tokenize"]
    assert tokenize["inputs"]["rows"]["name"] == "transform[1] dedup"
    assert tokenize["params"]["supervise"] == "all_assistant"


@pytest.mark.parametrize("fmt, head", [("mermaid", "graph TD"), ("dot", "digraph evsys {")])
def test_dag_export(built_project, fmt, head):
    proc = ok(evsys("dag", "config.yaml", "--format", fmt, "--cache-dir", "cache", cwd=built_project))
    text = proc.stdout
    assert text.startswith(head)
    for name in DATA_NODES + MODEL_NODES:
        assert name in text
    keys = {name: entry["id"] for name, entry in Store(built_project / "cache").read_ref(EXPERIMENT, "default")["nodes"].items()}
    arrow = "-->" if fmt == "mermaid" else "->"
    edges = [line for line in text.splitlines() if arrow in line]
    assert len(edges) == 6  # source → t0 → t1 → tokenize → train → {checkpoint@1, report}
    assert any(keys["source"][:10] in e and keys["transform[0] jsonl_to_chat"][:10] in e for e in edges)


def test_an_eval_cost_counts_sampled_tasks_locally_and_on_a_remote_store_only_for_a_small_benchmark():
    """Counting memoised tasks on S3/GCS would list memo folders per eval node: done there only
    for a benchmark small enough for a few concurrent HEADs."""
    from types import SimpleNamespace

    from evsys_rules.evals.benchmarks import Task
    from evsys_rules.nodes.eval import REMOTE_TASKS_COUNTED, estimate_eval, task_memo_keys

    def node(n: int):
        tasks = [Task(task_id=f"t{i}", instruction=f"q{i}", verifier={"kind": "in_process", "fn_name": "contains", "expected": "x"}) for i in range(n)]
        return SimpleNamespace(rule="eval", version="v", params={"sampler": {}, "model": "m", "tokenizer_libraries": {}, "sampling": {"max_tokens": 8}},
                               payload={"tasks": tasks, "bench": SimpleNamespace(num_samples=1, max_tokens=8), "arm": SimpleNamespace(config=SimpleNamespace(seed=0)), "system_prompt": None})

    class Store:
        def __init__(self, location):
            self.location, self.asked = location, []

        def stored_memos(self, keys):
            self.asked.append(len(keys))
            return set(list(keys)[:2])  # two tasks were sampled before

    checkpoint = {"output_digest": "c" * 32}
    for location, n, asked, todo in [("/tmp/store", 40, [40], 38), ("s3://b/p", REMOTE_TASKS_COUNTED, [REMOTE_TASKS_COUNTED], REMOTE_TASKS_COUNTED - 2), ("s3://b/p", 40, [], 40)]:
        store, eval_node = Store(location), node(n)
        cost = estimate_eval(store, eval_node, {"checkpoint": checkpoint})
        assert (store.asked, cost["sampling_requests"]) == (asked, todo), location
    assert len(set(task_memo_keys(node(3), "c" * 32))) == 3


def test_plan_with_a_remote_store_counts_its_nodes_as_cached_and_copies_nothing(built_project, tmp_path):
    """`plan --remote` (or $EVSYS_REMOTE) says what `build --remote` would do: every node the team
    store holds is cached (a build copies it), and the plan itself copies nothing."""
    teammate = tmp_path / "teammate"
    teammate.mkdir()
    shutil.copy(built_project / "config.yaml", teammate / "config.yaml")
    shutil.copytree(built_project / "data", teammate / "data")
    remote = str(built_project / "cache")
    alone = ok(evsys("plan", "config.yaml", "--cache-dir", "cache", cwd=teammate)).stdout
    assert "0 cached" in alone and "of the cached nodes" not in alone
    for args, env in ((["--remote", remote], None), ([], {"EVSYS_REMOTE": remote})):
        out = ok(evsys("plan", "config.yaml", "--cache-dir", "cache", *args, cwd=teammate, env=env)).stdout
        cached = sum(line.startswith("cached") for line in out.splitlines())
        assert "0 to run, 0 may run" in out and cached > 0, out
        assert f"note: {cached} of the cached nodes are in {remote} only: `evsys build --remote` copies them here" in out, out
    assert not list((teammate / "cache").glob("nodes/*/*.json")) and not list((teammate / "cache").glob("objects/*/*"))
    built = ok(evsys("build", "config.yaml", "--cache-dir", "cache", "--remote", remote, cwd=teammate)).stdout
    assert "ran " not in built
    assert "of the cached nodes" not in ok(evsys("plan", "config.yaml", "--cache-dir", "cache", "--remote", remote, cwd=teammate)).stdout


def test_a_param_block_that_gains_its_first_entry_names_only_the_entry():
    """`data.params: {} → (default)` beside the entry itself was noise."""
    from evsys_build.graph import Node
    from evsys_build.planner import _param_reasons

    def source(params: dict) -> Node:
        return Node(rule="source", name="source", version="1", params={"params": params}, inputs=[], run=None, param_paths={"params": "data.params"})

    assert _param_reasons(source({"delimiter": ";"}), {"params": {}}) == ["data.params.delimiter: (default) → ;"]
    assert _param_reasons(source({}), {"params": {"delimiter": ";"}}) == ["data.params.delimiter: ; → (default)"]


def test_a_node_another_config_built_is_named_by_what_it_lacks_not_never_built(project_copy):
    """A copy of the config under a new experiment name has no build record of its own, but its
    training is in the store, short of a checkpoint: plan says that, as it does for its own."""
    cache = project_copy / "cache"
    checkpoint = ref_keys(cache)["checkpoint@1"]
    (cache / "nodes" / checkpoint[:2] / f"{checkpoint}.json").unlink()
    edit_config(project_copy, f"name: {EXPERIMENT}", "name: renamed_copy")
    plan = plan_json(project_copy)
    assert plan["train"]["status"] == "run" and plan["train"]["reasons"] == ["not stored: checkpoint@1"]
    assert all(plan[name]["status"] == "cached" for name in DATA_NODES)
