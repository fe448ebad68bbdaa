"""Mistakes in a config or its data: exit code 2 and one line `file:line:col: dotted.path: what (fix)`, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evsys_testkit import BASE_CONFIG, evsys, make_project, tool_rows

BENCH_TASK = {"task_id": "val_0", "instruction": "Query: schedule a meeting\nReply with the tool slug inside <answer></answer>.",
              "verifier": {"kind": "in_process", "fn_name": "contains", "expected": "<answer>GOOGLECALENDAR_CREATE_EVENT</answer>"}}


def project_with(tmp_path: Path, config: str, rows: list[dict] | None = None) -> Path:
    return make_project(tmp_path / "p", tool_rows(20) if rows is None else rows, config)


def line_of(config: str, needle: str) -> int:
    """1-based line of the first line containing `needle`."""
    return next(i for i, line in enumerate(config.splitlines(), 1) if needle in line)


def one_error_line(proc) -> str:
    """Exit 2, no traceback, exactly one line on stderr (the error); returns it without the prefix."""
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("evsys: error: "), lines[0]
    return lines[0].removeprefix("evsys: error: ")


def test_misspelled_algorithm_param_names_line_column_path_and_fix(tmp_path):
    config = BASE_CONFIG.replace("    learning_rate: 1.0e-4", "    lerning_rate: 1.0e-4")
    project = project_with(tmp_path, config)
    line = line_of(config, "lerning_rate")
    expected = f"config.yaml:{line}:5: algorithm.params.lerning_rate: unknown field (did you mean learning_rate?)"
    for args in (["validate"], ["plan", "--cache-dir", "cache"], ["build", "--cache-dir", "cache"]):
        proc = evsys(args[0], "config.yaml", *args[1:], cwd=project)
        assert one_error_line(proc) == expected, args
        assert proc.stdout == ""
    assert not (project / "cache" / "nodes").exists()  # nothing was built


def test_misspelled_top_level_block(tmp_path):
    config = BASE_CONFIG.replace("transforms:\n", "transfroms:\n")
    msg = one_error_line(evsys("validate", "config.yaml", cwd=project_with(tmp_path, config)))
    assert msg == f"config.yaml:{line_of(config, 'transfroms')}:1: transfroms: unknown field (did you mean transforms?)"


def test_duplicate_yaml_key_is_an_error_not_an_overwrite(tmp_path):
    config = BASE_CONFIG + "seed: 1\n"
    msg = one_error_line(evsys("validate", "config.yaml", cwd=project_with(tmp_path, config)))
    assert msg == f"config.yaml:{len(config.splitlines())}:1: seed: duplicate key (remove one of the two)"


def test_duplicate_nested_key(tmp_path):
    config = BASE_CONFIG.replace("    max_steps: 1\n", "    max_steps: 1\n    max_steps: 2\n")
    msg = one_error_line(evsys("validate", "config.yaml", cwd=project_with(tmp_path, config)))
    assert msg == f"config.yaml:{line_of(config, 'max_steps: 2')}:5: algorithm.params.max_steps: duplicate key (remove one of the two)"


def test_unknown_transform_kind_lists_known_kinds_with_did_you_mean(tmp_path):
    config = BASE_CONFIG.replace("  - kind: jsonl_to_chat", "  - kind: jsonl_to_chatt")
    msg = one_error_line(evsys("validate", "config.yaml", cwd=project_with(tmp_path, config)))
    line = line_of(config, "jsonl_to_chatt")
    assert msg.startswith(f"config.yaml:{line}:11: transforms[0].kind: unknown transform kind 'jsonl_to_chatt' (did you mean jsonl_to_chat?); known: ")
    known = msg.split("known: ", 1)[1].split(", ")
    assert {"jsonl_to_chat", "filter", "dedup", "shuffle", "sample"} <= set(known)


STRIP_PII = '''\
from pydantic import BaseModel
from evsys_sdk import register_transform

@register_transform("strip_pii")
class StripPII:
    name = "strip_pii"
    class Config(BaseModel, extra="forbid"):
        field: str = "query"
    def __init__(self, **kw): self.cfg = self.Config(**kw)
    def __call__(self, rows):
        return rows
'''


def test_a_plugin_kind_not_listed_under_plugins_names_the_file_that_registers_it(tmp_path):
    """The walkthrough's order: write the transform, add it to transforms, forget `plugins:`. The
    error names the file and the line to add; the file is read, never run."""
    config = BASE_CONFIG.replace("transforms:\n", "transforms:\n  - {kind: strip_pii, params: {field: query}}\n", 1)
    project = project_with(tmp_path, config)
    (project / "pii").mkdir()
    (project / "pii" / "strip_pii.py").write_text(STRIP_PII + "raise SystemExit('imported')\n")
    msg = one_error_line(evsys("validate", "config.yaml", cwd=project))
    assert msg.startswith(f"config.yaml:{line_of(config, 'strip_pii')}:12: transforms[0].kind: unknown transform kind 'strip_pii'; known: ")
    assert msg.endswith("; pii/strip_pii.py registers it: add plugins: [pii/strip_pii.py] to the config")

    (project / "pii" / "strip_pii.py").write_text(STRIP_PII)
    config = config.replace("transforms:\n", "plugins: [pii/strip_pii.py]\ntransforms:\n", 1)
    (project / "config.yaml").write_text(config)
    proc = evsys("validate", "config.yaml", cwd=project)
    assert proc.returncode == 0, proc.stderr

    (project / "pii" / "strip_pii.py").unlink()
    (project / "config.yaml").write_text(config.replace("plugins: [pii/strip_pii.py]\n", ""))
    msg = one_error_line(evsys("validate", "config.yaml", cwd=project))
    assert msg.endswith("; a transform of your own is found once the file that registers it is listed under plugins: [your_file.py] (see docs/plugins.md)")


def test_unknown_backend_kind_uses_the_same_registry_errors(tmp_path):
    config = BASE_CONFIG.replace("  kind: local", "  kind: locl")
    msg = one_error_line(evsys("validate", "config.yaml", cwd=project_with(tmp_path, config)))
    assert f"config.yaml:{line_of(config, 'locl')}:9: backend.kind: unknown backend kind 'locl' (did you mean local?); known: " in msg
    assert "tinker" in msg


def test_unknown_field_in_transform_params(tmp_path):
    config = BASE_CONFIG.replace("      system_prompt:", "      sytem_prompt:")
    msg = one_error_line(evsys("validate", "config.yaml", cwd=project_with(tmp_path, config)))
    assert msg == f"config.yaml:{line_of(config, 'sytem_prompt')}:7: transforms[0].params.sytem_prompt: unknown field (did you mean system_prompt?)"


def test_missing_required_transform_param(tmp_path):
    config = BASE_CONFIG.replace('      assistant_template: "<answer>{tool_slug}</answer>"\n', "")
    msg = one_error_line(evsys("validate", "config.yaml", cwd=project_with(tmp_path, config)))
    assert msg.startswith(f"config.yaml:{line_of(config, 'system_prompt:')}:7: ")
    assert "transforms[0].params.assistant_template: missing required field" in msg


def test_wrong_type_names_the_value(tmp_path):
    config = BASE_CONFIG.replace("    max_steps: 1", "    max_steps: many")
    msg = one_error_line(evsys("validate", "config.yaml", cwd=project_with(tmp_path, config)))
    assert msg.startswith(f"config.yaml:{line_of(config, 'max_steps: many')}:16: algorithm.params.max_steps: ")
    assert "valid integer" in msg and "(got 'many')" in msg


def test_out_of_range_value(tmp_path):
    config = BASE_CONFIG.replace("    batch_size: 2", "    batch_size: 0")
    msg = one_error_line(evsys("validate", "config.yaml", cwd=project_with(tmp_path, config)))
    assert msg.startswith(f"config.yaml:{line_of(config, 'batch_size: 0')}:17: algorithm.params.batch_size: ")
    assert "(got 0)" in msg


def test_missing_config_file(tmp_path):
    msg = one_error_line(evsys("validate", "nope.yaml", cwd=tmp_path))
    assert msg == "nope.yaml: no such config file"


def test_missing_data_file_points_at_data_path(tmp_path):
    config = BASE_CONFIG.replace("path: data/train.jsonl", "path: data/missing.jsonl")
    project = project_with(tmp_path, config)
    expected = (
        f"config.yaml:{line_of(config, 'missing.jsonl')}:9: data.path: no such file 'data/missing.jsonl' "
        "(paths are relative to the directory you run from)"
    )
    assert one_error_line(evsys("validate", "config.yaml", "--deep", cwd=project)) == expected
    assert one_error_line(evsys("plan", "config.yaml", "--cache-dir", "cache", cwd=project)) == expected


def test_bad_json_line_in_data_names_file_and_line(tmp_path, tiny_model_dir):
    project = project_with(tmp_path, BASE_CONFIG)
    data = project / "data" / "train.jsonl"
    lines = data.read_text().splitlines()
    lines[6] = '{"query": "unterminated", "tool_slug": '
    data.write_text("\n".join(lines) + "\n")
    deep = one_error_line(evsys("validate", "config.yaml", "--deep", cwd=project))
    assert deep.startswith("data/train.jsonl:7: invalid JSON") and "fix or remove the line" in deep
    build = evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project)
    assert one_error_line(build) == deep
    assert "failed  source" in build.stdout


def test_non_object_json_line(tmp_path):
    project = project_with(tmp_path, BASE_CONFIG)
    with open(project / "data" / "train.jsonl", "a") as f:
        f.write("[1, 2]\n")
    msg = one_error_line(evsys("validate", "config.yaml", "--deep", cwd=project))
    assert msg == "data/train.jsonl:21: each line must be a JSON object, got list"


def test_deep_validate_catches_a_template_field_missing_from_a_row(tmp_path):
    rows = tool_rows(20)
    rows[11] = {"query": "no slug in this row"}
    project = project_with(tmp_path, BASE_CONFIG, rows)
    assert evsys("validate", "config.yaml", cwd=project).returncode == 0  # shallow validate reads no data
    msg = one_error_line(evsys("validate", "config.yaml", "--deep", cwd=project))
    assert msg == (  # the build's words: validate runs the same transform on every row
        "data/train.jsonl:12: transform[0] jsonl_to_chat: jsonl_to_chat.params.assistant_template: field 'tool_slug' "
        "is not in this row (row has: query); fix the template or the data"
    )


def test_deep_validate_counts_file_lines_past_blank_lines(tmp_path):
    rows = tool_rows(5)
    rows[3] = {"tool_slug": "X"}
    project = project_with(tmp_path, BASE_CONFIG)
    (project / "data" / "train.jsonl").write_text("\n".join(json.dumps(r) + ("\n" if i == 1 else "") for i, r in enumerate(rows)) + "\n")
    msg = one_error_line(evsys("validate", "config.yaml", "--deep", cwd=project))
    assert msg.startswith("data/train.jsonl:5: transform[0] jsonl_to_chat: jsonl_to_chat.params.user_template: field 'query'")


def test_build_names_the_row_of_a_missing_template_field_across_chunks(tmp_path, tiny_model_dir):
    """At build time (no --deep) the error names the row by its file line (the row's index in the
    whole input, not in its chunk, mapped to the data file)."""
    rows = tool_rows(3000)
    rows[2500] = {"query": "no slug in this row"}
    project = project_with(tmp_path, BASE_CONFIG, rows)
    proc = evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project)
    msg = one_error_line(proc)
    assert msg == (
        "data/train.jsonl:2501: transform[0] jsonl_to_chat: jsonl_to_chat.params.assistant_template: field 'tool_slug' "
        "is not in this row (row has: query); fix the template or the data"
    )
    assert "failed  transform[0] jsonl_to_chat" in proc.stdout


def test_a_row_behind_a_filter_that_drops_rows_is_named_by_its_file_line(tmp_path, tiny_model_dir):
    """A filter keeps no row count: the failing row is traced back through it (the chunk memos,
    then the filter on that chunk's rows one by one), across chunks, by validate --deep and build alike."""
    rows = tool_rows(3000)
    for i in range(0, 2500, 3):
        rows[i]["tool_slug"] = "drop"
    rows[2500] = {"query": "no slug in this row"}
    config = BASE_CONFIG.replace("transforms:\n", "transforms:\n  - kind: filter\n    params: {field: tool_slug, op: not_equals, value: drop}\n")
    project = project_with(tmp_path, config, rows)
    expected = ("data/train.jsonl:2501: transform[1] jsonl_to_chat: jsonl_to_chat.params.assistant_template: field 'tool_slug' "
                "is not in this row (row has: query); fix the template or the data")
    assert one_error_line(evsys("validate", "config.yaml", "--deep", cwd=project)) == expected
    assert one_error_line(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project)) == expected


def test_a_filter_test_that_does_not_fit_the_value_names_the_row(tmp_path):
    """`contains` on a number was a TypeError and a traceback; it is the row's one line."""
    rows = tool_rows(8)
    rows[5]["tool_slug"] = 3
    config = BASE_CONFIG.replace("transforms:\n", "transforms:\n  - kind: filter\n    params: {field: tool_slug, op: contains, value: search}\n")
    msg = one_error_line(evsys("validate", "config.yaml", "--deep", cwd=project_with(tmp_path, config, rows)))
    assert msg == ("data/train.jsonl:6: transform[0] filter: field 'tool_slug' is int 3, but op contains tests a substring of a text "
                   "or an item of a list (use equals or regex, or filter on another field)"), msg


BENCH_CONFIG = BASE_CONFIG + """\
metadata:
  benchmark:
    - name: val
      path: BENCH
      max_tokens: 16
"""


def bench_project(tmp_path: Path, bench_path: str, tasks: list[str] | None) -> Path:
    project = project_with(tmp_path, BENCH_CONFIG.replace("BENCH", bench_path))
    if tasks is not None:
        (project / bench_path).mkdir(parents=True)
        (project / bench_path / "tasks.jsonl").write_text("".join(t + "\n" for t in tasks))
    return project


def test_deep_validate_accepts_a_good_benchmark(tmp_path):
    project = bench_project(tmp_path, "data/val", [json.dumps(BENCH_TASK)])
    proc = evsys("validate", "config.yaml", "--deep", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert "benchmark val (val): data/val: 1 tasks" in proc.stdout
    assert proc.stdout.rstrip().endswith("config.yaml: ok (deep)")


def test_a_stop_that_holds_a_special_token_is_refused_before_anything_runs(tmp_path, tiny_model_dir):
    """Completions are decoded without special tokens: `x<|im_end|>` could never match. validate,
    plan and build refuse it at its line (a build must not train first and fail at its evals)."""
    config = BENCH_CONFIG.replace("BENCH", "data/val").replace("      max_tokens: 16\n", '      max_tokens: 16\n      stop: ["</answer>", "x<|im_end|>"]\n')
    project = project_with(tmp_path, config)
    (project / "data" / "val").mkdir()
    (project / "data" / "val" / "tasks.jsonl").write_text(json.dumps(BENCH_TASK) + "\n")
    line = line_of(config, "stop:")
    expected = (f"config.yaml:{line}:27: metadata.benchmark[0] (val).stop: 'x<|im_end|>' holds the special token '<|im_end|>', which completions "
                "are decoded without, so it could never match; give '<|im_end|>' as a stop of its own (generation then ends at it)")
    for args in (["validate"], ["validate", "--deep"], ["plan", "--cache-dir", "cache"], ["build", "--cache-dir", "cache"]):
        assert one_error_line(evsys(*args, "config.yaml", cwd=project) if args[0] == "validate" else evsys(args[0], "config.yaml", *args[1:], cwd=project)) == expected, args
    assert not (project / "cache" / "nodes").exists() or not any((project / "cache" / "nodes").rglob("*.json"))


def test_deep_validate_benchmark_path_that_is_a_file(tmp_path):
    project = bench_project(tmp_path, "data/train.jsonl", None)
    msg = one_error_line(evsys("validate", "config.yaml", "--deep", cwd=project))
    assert msg == (
        f"config.yaml:{line_of(BENCH_CONFIG, 'path: BENCH')}:13: metadata.benchmark[0] (val): data/train.jsonl: benchmark path is not a directory "
        "(point path at a directory holding tasks.jsonl)"
    )


def test_deep_validate_benchmark_bad_tasks_line(tmp_path):
    project = bench_project(tmp_path, "data/val", [json.dumps(BENCH_TASK), '{"task_id": "val_1", "instruction": "x"'])
    msg = one_error_line(evsys("validate", "config.yaml", "--deep", cwd=project))
    assert msg.startswith("metadata.benchmark[0] (val): data/val/tasks.jsonl:2: invalid JSON")


def test_deep_validate_benchmark_task_missing_a_field(tmp_path):
    task = {k: v for k, v in BENCH_TASK.items() if k != "instruction"}
    project = bench_project(tmp_path, "data/val", [json.dumps(task)])
    msg = one_error_line(evsys("validate", "config.yaml", "--deep", cwd=project))
    assert msg.startswith("metadata.benchmark[0] (val): data/val/tasks.jsonl:1: missing field 'instruction'")


def test_deep_validate_unknown_verifier_name(tmp_path):
    bad = dict(BENCH_TASK, task_id="val_1", verifier=dict(BENCH_TASK["verifier"], fn_name="contians"))
    project = bench_project(tmp_path, "data/val", [json.dumps(BENCH_TASK), json.dumps(bad)])
    msg = one_error_line(evsys("validate", "config.yaml", "--deep", cwd=project))
    assert msg.startswith("metadata.benchmark[0] (val): data/val/tasks.jsonl:2: unknown verifier")
    assert "'contians' (did you mean contains?)" in msg and "exact_match" in msg


def test_a_verifier_of_an_unlisted_plugin_file_names_the_file(tmp_path):
    """As for transforms: the .py file near the config that registers the verifier is named, with the line to add."""
    bad = dict(BENCH_TASK, task_id="val_1", verifier={"kind": "in_process", "fn_name": "is_upper"})
    project = bench_project(tmp_path, "data/val", [json.dumps(BENCH_TASK), json.dumps(bad)])
    (project / "checks").mkdir()
    (project / "checks" / "upper.py").write_text('from evsys_sdk import register_verifier\n\n\n@register_verifier("is_upper")\n'
                                                 "def is_upper(prediction: str) -> bool:\n    return prediction.isupper()\n")
    msg = one_error_line(evsys("validate", "config.yaml", "--deep", cwd=project))
    assert msg.startswith("metadata.benchmark[0] (val): data/val/tasks.jsonl:2: unknown verifier kind 'is_upper'"), msg
    assert msg.endswith("; checks/upper.py registers it: add plugins: [checks/upper.py] to the config"), msg


@pytest.mark.parametrize("command", ["plan", "build"])
def test_unknown_arm_is_a_usage_error(tmp_path, tiny_model_dir, command):
    project = project_with(tmp_path, BASE_CONFIG)
    msg = one_error_line(evsys(command, "config.yaml", "--arm", "r9", "--cache-dir", "cache", cwd=project))
    assert msg == "--arm r9: no such arm; the config has: default"


ARMS_AT_END = BASE_CONFIG + "arms:\n  - {name: base, set: {seed: 1}}\n"

ARM_MISTAKES = {
    # what the arm says -> (the needle on the line the error names, the column, the message)
    "misspelled param": ("  - {name: bad, set: {algorithm.params.lora_rnk: 2}}\n", "lora_rnk", "algorithm.params.lora_rnk: unknown field (did you mean lora_rank?)"),
    "missing data file": ("  - {name: bad, set: {data.path: data/missing.jsonl}}\n", "missing.jsonl", "data.path: no such file 'data/missing.jsonl'"),
    "output_dir": ("  - {name: bad, set: {output_dir: other}}\n", "set: {output_dir", "output_dir: an arm cannot set this"),
    "no such list": ("  - {name: bad, set: {metadata.benchmark.0.max_tokens: 3}}\n", "benchmark.0", "metadata.benchmark.0.max_tokens: cannot set this path (metadata.benchmark is not in the base config, so it has no item 0"),
    "a second data path": ("  - {name: bad, set: {data.params.path: data/other.jsonl}}\n", "data.params.path", "data.params: path given twice, as data.path 'data/train.jsonl' and data.params.path 'data/other.jsonl'; keep one"),
    "steps and epochs": ("  - {name: bad, set: {algorithm.params.num_epochs: 2}}\n", "num_epochs", "algorithm.params: give max_steps or num_epochs, not both"),
    "names stored alike": ("  - {name: 'bad base', set: {seed: 2}}\n  - {name: bad_base, set: {seed: 3}}\n", "bad_base", "arms: arm names 'bad base' and 'bad_base' are stored under one name"),
}


@pytest.mark.parametrize("mistake", list(ARM_MISTAKES))
def test_a_mistake_in_an_arm_names_the_arms_line(tmp_path, tiny_model_dir, mistake):
    """An arm's mistake is reported where the arm writes it, not at the base config's value."""
    arm, needle, message = ARM_MISTAKES[mistake]
    config = ARMS_AT_END + arm
    msg = one_error_line(evsys("plan", "config.yaml", "--cache-dir", "cache", cwd=project_with(tmp_path, config)))
    assert msg.startswith(f"config.yaml:{line_of(config, needle)}:"), msg
    assert message in msg, msg


def test_a_source_path_given_twice_is_refused_not_overridden(tmp_path):
    """data.path would silently win over data.params.path: the rows trained on would not be the ones named."""
    config = BASE_CONFIG.replace("  path: data/train.jsonl\n", "  path: data/train.jsonl\n  params:\n    path: data/other.jsonl\n")
    msg = one_error_line(evsys("validate", "config.yaml", cwd=project_with(tmp_path, config)))
    assert msg == (f"config.yaml:{line_of(config, 'path: data/other')}:5: data.params: path given twice, as data.path 'data/train.jsonl' "
                   "and data.params.path 'data/other.jsonl'; keep one"), msg


def test_an_unknown_benchmark_metric_names_its_line(tmp_path):
    project = bench_project(tmp_path, "data/val", [json.dumps(BENCH_TASK)])
    config = (project / "config.yaml").read_text().replace("      max_tokens: 16\n", "      max_tokens: 16\n      metrics: [pass@one]\n")
    (project / "config.yaml").write_text(config)
    for args in (["validate", "--deep"], ["plan", "--cache-dir", "cache"]):
        msg = one_error_line(evsys(args[0], "config.yaml", *args[1:], cwd=project))
        assert msg.startswith(f"config.yaml:{line_of(config, 'metrics:')}:") and "metadata.benchmark[0].metrics: unknown metric 'pass@one' (use pass@1 or pass@k)" in msg, (args, msg)


def test_a_model_path_that_does_not_exist_says_so(tmp_path):
    config = BASE_CONFIG.replace("name: evsys/tiny-qwen3", "name: /nonexistent/model", 1)
    assert "/nonexistent/model" in config
    project = project_with(tmp_path, config)
    for args in (["validate", "--deep"], ["plan", "--cache-dir", "cache"]):
        msg = one_error_line(evsys(args[0], "config.yaml", *args[1:], cwd=project))
        assert msg.startswith(f"config.yaml:{line_of(config, '/nonexistent/model')}:") and "model.name: '/nonexistent/model': no such model directory" in msg, args


def test_pass_at_k_with_num_samples_set_by_each_arm_is_valid(tmp_path):
    project = bench_project(tmp_path, "data/val", [json.dumps(BENCH_TASK)])
    config = (project / "config.yaml").read_text().replace("      max_tokens: 16\n", "      max_tokens: 16\n      metrics: [pass@1, pass@4]\n      temperature: 1.0\n")
    (project / "config.yaml").write_text(config + "sweep:\n  metadata.benchmark.0.num_samples: [4, 8]\n")
    proc = evsys("validate", "config.yaml", "--deep", cwd=project)
    assert proc.returncode == 0, proc.stderr
    (project / "config.yaml").write_text(config + "sweep:\n  metadata.benchmark.0.num_samples: [2, 8]\n")
    for args in (["validate"], ["validate", "--deep"], ["plan", "--cache-dir", "cache"], ["build", "--cache-dir", "cache"]):  # before anything trains; plain validate too (config alone)
        msg = one_error_line(evsys(args[0], "config.yaml", *args[1:], cwd=project))
        assert "num_samples: 2 is below k=4 of pass@4 (set num_samples >= 4)" in msg, (args, msg)
    assert not (project / "cache" / "nodes").exists()


@pytest.mark.parametrize("old,new,needle,expected", [
    ("learning_rate: 1.0e-4", "learning_rate: .inf", "learning_rate: .inf",
     "algorithm.params.learning_rate: Input should be a finite number"),
    ("seed: 0", "seed: -1", "seed: -1", "seed: Input should be greater than or equal to 0"),
    ("{query}", "{query", "user_template:",
     "transforms[0].params.user_template: not a str.format template ("),
    ("{query}", "{query} }", "user_template:",  # a literal brace is written }}
     "write a literal brace as {{ or }}"),
    ('user_template: "', 'user_template: "{} ', "user_template:",
     "transforms[0].params.user_template: {} is a positional field; name a row field, e.g. {query}"),
])
def test_values_that_would_fail_or_train_garbage_later_are_refused_by_validate(tmp_path, old, new, needle, expected):
    """Each of these used to pass validate: a non-finite learning rate trained NaN weights to a
    "completed" run, a negative seed failed in numpy after the data stages, a broken template
    failed per row with a traceback."""
    config = BASE_CONFIG.replace(old, new, 1)
    assert config != BASE_CONFIG
    msg = one_error_line(evsys("validate", "config.yaml", cwd=project_with(tmp_path, config)))
    assert msg.startswith(f"config.yaml:{line_of(config, needle)}:") and expected in msg, msg


def test_two_benchmarks_with_one_name_are_refused_by_every_command(tmp_path):
    config = BASE_CONFIG + "metadata:\n  benchmark:\n    - {name: val, path: val}\n    - {name: val, path: val2}\n"
    project = project_with(tmp_path, config)
    for command in ("validate", "plan", "build"):
        msg = one_error_line(evsys(command, "config.yaml", cwd=project))
        assert msg == f"config.yaml:{line_of(config, 'path: val2')}:14: metadata.benchmark: two benchmarks are named 'val' (names must be unique)", (command, msg)


def test_an_empty_sweep_list_is_refused(tmp_path):
    config = BASE_CONFIG + "sweep:\n  algorithm.params.learning_rate: []\n"
    msg = one_error_line(evsys("validate", "config.yaml", cwd=project_with(tmp_path, config)))
    assert msg == (f"config.yaml:{line_of(config, 'learning_rate: []')}:35: sweep.algorithm.params.learning_rate: no values, so no arm would run "
                   "(list at least one value, or remove the line)")


def test_an_output_dir_that_is_a_file_is_refused_before_anything_runs(tmp_path):
    project = project_with(tmp_path, BASE_CONFIG)
    (project / "out").write_text("not a folder\n")
    msg = one_error_line(evsys("validate", "config.yaml", cwd=project))
    assert msg == f"config.yaml:{line_of(BASE_CONFIG, 'output_dir: out')}:13: output_dir: out is a file, so the run dir out/first_run cannot be written there; choose another output_dir"


def with_val_tasks(project: Path) -> Path:
    """The project with a one-task benchmark at data/val/tasks.jsonl (fields a training row has too)."""
    (project / "data" / "val").mkdir()
    task = {"task_id": "t0", "instruction": "q", "verifier": {"kind": "in_process", "fn_name": "contains", "expected": "x"}, "query": "q", "tool_slug": "x"}
    (project / "data" / "val" / "tasks.jsonl").write_text(json.dumps(task) + "\n")
    return project


def test_a_data_folder_that_holds_a_benchmark_is_refused(tmp_path):
    """data.path: data (a folder) would read data/val/tasks.jsonl too, and with matching fields
    the benchmark's rows would train the model it scores."""
    config = BASE_CONFIG.replace("path: data/train.jsonl", "path: data") + "metadata:\n  benchmark:\n    - {name: val, path: data/val}\n"
    project = with_val_tasks(project_with(tmp_path, config))
    for command in (["validate", "config.yaml", "--deep"], ["build", "config.yaml"]):
        msg = one_error_line(evsys(*command, cwd=project))
        assert msg == (f"config.yaml:{line_of(config, 'path: data')}:9: data.path: 'data' takes in data/val/tasks.jsonl, which benchmark val scores: "
                       "the model would be evaluated on rows it trained on; point data.path at the training rows only (or name that file itself if you mean it)"), msg


SHARD_LIST_SOURCE = """\
import json
from pathlib import Path

from pydantic import BaseModel

from evsys_sdk import register_source


@register_source("shard_list")
class ShardList:
    class Config(BaseModel, extra="forbid"):
        paths: list[str]

    def __init__(self, **params):
        self.cfg = self.Config(**params)

    def files(self):
        return [Path(p) for p in self.cfg.paths]

    def check(self):
        pass

    def read(self):
        return [json.loads(line) for f in self.files() for line in f.read_text().splitlines() if line.strip()]
"""


def test_a_plugin_source_reading_a_benchmark_file_is_refused(tmp_path):
    """A source kind with no data.path (it names its files in its own params) is checked on every
    file it reads: none is taken as meant."""
    config = BASE_CONFIG.replace("  source_kind: jsonl\n  path: data/train.jsonl\n",
                                 "  source_kind: shard_list\n  params:\n    paths: [data/train.jsonl, data/val/tasks.jsonl]\n")
    config = config.replace("seed: 0\n", "seed: 0\nplugins: [shard_list.py]\n") + "metadata:\n  benchmark:\n    - {name: val, path: data/val}\n"
    project = with_val_tasks(project_with(tmp_path, config))
    (project / "shard_list.py").write_text(SHARD_LIST_SOURCE)
    for command in (["validate", "config.yaml", "--deep"], ["build", "config.yaml"]):
        msg = one_error_line(evsys(*command, cwd=project))
        assert msg == (f"config.yaml:{line_of(config, 'paths:')}:5: data: the source reads data/val/tasks.jsonl, which benchmark val scores: "
                       "the model would be evaluated on rows it trained on; give the source the training rows only"), msg


@pytest.mark.parametrize("old,new,needle,field", [
    ("max_steps: 1", "max_steps: true", "max_steps: true", "algorithm.params.max_steps"),
    ("seed: 0", "seed: false", "seed: false", "seed"),
])
def test_true_or_false_where_a_number_is_asked_for_is_refused(tmp_path, old, new, needle, field):
    """pydantic would read `max_steps: true` as 1 step."""
    config = BASE_CONFIG.replace(old, new, 1)
    msg = one_error_line(evsys("validate", "config.yaml", cwd=project_with(tmp_path, config)))
    assert msg.startswith(f"config.yaml:{line_of(config, needle)}:") and f"{field}: {new.split(': ')[1]} is not a number; give a number" in msg, msg


@pytest.mark.parametrize("right, typo, column", [("model:", "modle:", 1), ("assistant_template:", "asistant_template:", 7), ("  path: data/train.jsonl", "  pth: data/train.jsonl", 3)])
def test_a_typo_in_a_required_key_names_the_typo_and_the_key_it_means(tmp_path, right, typo, column):
    """A misspelt required key is both an unknown key and a missing one: the line names the typo
    where it is, with the key it means, not "missing" at the block above."""
    config = BASE_CONFIG.replace(right, typo, 1)
    msg = one_error_line(evsys("validate", "config.yaml", cwd=project_with(tmp_path, config)))
    key = typo.split(":")[0].strip()
    assert msg.startswith(f"config.yaml:{line_of(config, typo.strip())}:{column}: "), msg
    assert msg.endswith(f"{key}: unknown field (did you mean {right.split(':')[0].strip()}?)"), msg


def test_a_backend_setting_refused_when_training_starts_names_its_config_line(tmp_path, tiny_model_dir):
    """Settings a backend can only check on the machine that trains (compile needs CUDA) are refused
    when training starts, with the config line as every other config error has it: here where
    the arm sets the value, since that is the line to fix."""
    config = BASE_CONFIG.replace("  kind: local\n", "  kind: local\n  params: {device: cpu}\n") + (
        "arms:\n"
        "  - name: compiled\n"
        "    set: {backend.params.compile: true}\n"
    )
    project = project_with(tmp_path, config, tool_rows(4))
    proc = evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project)
    line = config.splitlines().index("    set: {backend.params.compile: true}") + 1
    msg = one_error_line(proc)
    assert msg.startswith(f"config.yaml:{line}:"), msg
    assert ": backend.params.compile: needs the varlen attention kernel" in msg and msg.endswith("set compile: false")
