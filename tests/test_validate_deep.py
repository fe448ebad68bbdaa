"""`validate --deep` catches what the build would reject, with the build's own words: an
unresolvable model (config file:line:col), rows without a usable conversation after the
transforms (every row streamed and tokenized: special-token text, nothing trained after
max_length), an empty dataset, a benchmark path that is not a directory with
tasks.jsonl (config file:line:col)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evsys_build.store import Store
from evsys_testkit import BASE_CONFIG, evsys, make_project, tool_rows, write_jsonl

CHAT_CONFIG = """\
experiment: {name: deep}
output_dir: out
data: {source_kind: jsonl, path: data/train.jsonl}
transforms:
  - kind: filter
    params: {field: keep, op: equals, value: true}
model:
  name: MODEL
algorithm:
  kind: sft
  params: {max_steps: 1, batch_size: 2, lora_rank: 1, supervise: SUPERVISE}
"""


def chat(i: int, **extra) -> dict:
    return {"keep": True, "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}], **extra}


def one_error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and lines, proc.stdout + proc.stderr
    assert lines[-1].startswith("evsys: error: "), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return lines[-1].removeprefix("evsys: error: ")


def chat_project(root: Path, rows: list[dict], model: str = "evsys/tiny-qwen3", supervise: str = "all_assistant", config: str = CHAT_CONFIG) -> Path:
    project = make_project(root, [], config.replace("MODEL", model).replace("SUPERVISE", supervise))
    write_jsonl(project / "data" / "train.jsonl", rows)
    return project


def same_error(project: Path, plain: bool = False) -> str:
    """validate --deep's one line, asserted equal to the build's (and to plain validate's, for a
    file the config names that is not there: no row needs reading to see that)."""
    deep = one_error_line(evsys("validate", "config.yaml", "--deep", cwd=project))
    build = one_error_line(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project))
    assert deep == build
    if plain:
        assert one_error_line(evsys("validate", "config.yaml", cwd=project)) == deep
    return deep


def bad_rows(case: str) -> tuple[list[dict], str, str]:
    rows = [chat(i) for i in range(8)]
    if case == "no messages":
        rows[5] = {"keep": True, "text": "not a conversation"}
        return rows, "all_assistant", "data/train.jsonl:6: tokenize: has no `messages` list; add a transform such as jsonl_to_chat or sharegpt_to_messages before training"
    if case == "unknown role":
        rows[3]["messages"][0]["role"] = "bot"
        return rows, "all_assistant", "data/train.jsonl:4: tokenize: messages[0].role 'bot' is not system, user, assistant or tool"
    if case == "no assistant turn":
        rows[7]["messages"] = rows[7]["messages"][:1]
        return rows, "last_assistant", "data/train.jsonl:8: tokenize: conversation has no assistant turn to train on (supervise: last_assistant)"
    if case == "after a filter that drops rows":
        rows[0]["keep"] = False
        rows[6]["messages"][1]["content"] = 7
        return rows, "all_assistant", "data/train.jsonl:7: tokenize: messages[1].content must be a string or a list of text parts, got a number"
    if case == "special token as text":
        rows[4]["messages"][1]["content"] = "a4<|im_end|>"
        return rows, "all_assistant", "data/train.jsonl:5: tokenize: messages[1].content contains the special token '<|im_end|>' as text; the tokenizer would read it as a control token, not text; remove or escape it (e.g. with a transform)"
    if case == "nothing trained after max_length":
        rows[2]["messages"][0]["content"] = "word " * 60
        return rows, "all_assistant", "data/train.jsonl:3: tokenize: no trained tokens left after truncation to max_length=24; raise algorithm.params.max_length or drop long rows with a filter transform"
    if case == "after a filter and a dedup":
        rows[0]["keep"] = False
        rows[6]["messages"][1]["content"] = 7
        return rows, "all_assistant", "row 5 of transform[1] dedup: tokenize: messages[1].content must be a string or a list of text parts, got a number"
    raise AssertionError(case)


@pytest.mark.parametrize("case,against_build", [
    ("no messages", True),  # a file line: every transform before tokenize kept rows one for one
    ("after a filter that drops rows", True),  # still the file line: a row-local transform is traced back row by row
    ("after a filter and a dedup", True),  # `row N of <node>`: a transform that reads every row cannot be traced
    ("special token as text", True),  # needs the model's tokenizer: --deep tokenizes as the build does
    ("nothing trained after max_length", True),
    ("unknown role", False),  # the build's words (tokenize's own checks), without paying for a build each
    ("no assistant turn", False),
])
def test_rows_without_a_usable_conversation(tmp_path, tiny_model_dir, case, against_build):
    rows, supervise, expected = bad_rows(case)
    config = CHAT_CONFIG.replace("value: true}\n", "value: true}\n  - kind: dedup\n") if "dedup" in case else CHAT_CONFIG
    config = config.replace("lora_rank: 1", "lora_rank: 1, max_length: 24") if "max_length" in case else config
    project = chat_project(tmp_path / "p", rows, supervise=supervise, config=config)
    if against_build:
        assert same_error(project) == expected
    else:
        assert one_error_line(evsys("validate", "config.yaml", "--deep", cwd=project)) == expected


def test_every_row_is_checked_not_a_sample(tmp_path):
    rows = [chat(i) for i in range(5000)]
    rows[4321]["messages"][1]["role"] = "robot"
    msg = one_error_line(evsys("validate", "config.yaml", "--deep", cwd=chat_project(tmp_path / "p", rows)))
    assert msg.startswith("data/train.jsonl:4322: tokenize: messages[1].role 'robot'")


def test_an_empty_dataset(tmp_path, tiny_model_dir):
    project = chat_project(tmp_path / "p", [dict(chat(i), keep=False) for i in range(4)])
    msg = same_error(project)
    assert msg == "config.yaml:5:5: no training rows left after the transforms; check data.path and the transforms that drop rows (filter, sample, dedup)"


def test_an_unresolvable_model_name(tmp_path):
    project = chat_project(tmp_path / "p", [chat(i) for i in range(4)], model="nobody/no-such-model")
    msg = same_error(project)
    assert msg.startswith("config.yaml:8:9: model.name: 'nobody/no-such-model': its weights and tokenizer are not in the local Hugging Face cache (")
    assert msg.endswith("run `evsys fetch config.yaml` with network access (HF_TOKEN for gated models)")


def test_a_model_folder_without_config_json(tmp_path):
    project = chat_project(tmp_path / "p", [chat(i) for i in range(4)], model="models/empty")
    (project / "models" / "empty").mkdir(parents=True)
    assert same_error(project, plain=True) == "config.yaml:8:9: model.name: 'models/empty' has no config.json; is it a model directory?"


@pytest.mark.parametrize("bench_path,problem", [
    ("data/train.jsonl", "data/train.jsonl: benchmark path is not a directory (point path at a directory holding tasks.jsonl)"),
    ("data/nowhere", "data/nowhere: benchmark path does not exist (point path at a directory holding tasks.jsonl)"),
    ("data", "data/tasks.jsonl: missing (a benchmark directory must hold tasks.jsonl, one task per line)"),
])
def test_a_benchmark_path_that_is_not_a_task_folder(tmp_path, tiny_model_dir, bench_path, problem):
    config = BASE_CONFIG + f"metadata:\n  benchmark:\n    - name: val\n      path: {bench_path}\n"
    project = make_project(tmp_path / "p", tool_rows(8), config)
    line = config.splitlines().index(f"      path: {bench_path}") + 1
    assert same_error(project, plain="nowhere" in bench_path) == f"config.yaml:{line}:13: metadata.benchmark[0] (val): {problem}"


def test_a_missing_data_file_or_held_out_file_is_caught_without_deep(tmp_path, tiny_model_dir):
    project = chat_project(tmp_path / "p", [chat(i) for i in range(4)])
    (project / "data" / "train.jsonl").unlink()
    assert same_error(project, plain=True) == "config.yaml:3:34: data.path: no such file 'data/train.jsonl' (paths are relative to the directory you run from)"
    config = BASE_CONFIG + "metadata:\n  benchmark:\n    - {name: ho, kind: nll, path: data/heldout.jsonl}\n"
    project = make_project(tmp_path / "q", tool_rows(8), config)
    line = len(config.splitlines())
    assert same_error(project, plain=True) == f"config.yaml:{line}:35: metadata.benchmark[0] (ho): data/heldout.jsonl: does not exist (kind nll reads a JSONL file of chat rows with messages)"


def test_deep_validate_reports_what_it_read(tmp_path):
    rows = [chat(i) for i in range(10)] + [dict(chat(10), keep=False)]
    config = CHAT_CONFIG.replace("max_steps: 1", "num_epochs: 2").replace("MODEL", "evsys/tiny-qwen3").replace("SUPERVISE", "all_assistant")
    config += "metadata:\n  benchmark:\n    - {name: held, kind: nll, path: held.jsonl}\n"
    project = make_project(tmp_path / "p", [], config)
    write_jsonl(project / "data" / "train.jsonl", rows)
    write_jsonl(project / "held.jsonl", [chat(i) for i in range(3)])
    out = evsys("validate", "config.yaml", "--deep", cwd=project)
    assert out.returncode == 0, out.stderr
    assert "data: data/train.jsonl: 11 rows, 10 after the transforms" in out.stdout
    assert "longest row " in out.stdout and "none longer than max_length 2048" in out.stdout
    assert "num_epochs 2 over 10 rows: max_steps 10" in out.stdout
    assert "benchmark held (val, nll): held.jsonl: 3 rows" in out.stdout
    (project / "held.jsonl").write_text(json.dumps({"messages": [{"role": "narrator", "content": "x"}]}) + "\n")
    msg = one_error_line(evsys("validate", "config.yaml", "--deep", cwd=project))
    assert msg == "held.jsonl:1: messages[0].role 'narrator' is not system, user, assistant or tool"


NO_SCORER = '''\
from evsys_sdk import register_backend
from evsys_rules.backends.local import LocalBackend


@register_backend("unscored")
class Unscored:
    """Trains and samples as the local backend does, but cannot score held-out loss."""
    Config = LocalBackend.Config

    def __init__(self, config=None):
        self.local = LocalBackend(config)

    def create_training_client(self, model_dir, lora_rank, seed):
        return self.local.create_training_client(model_dir, lora_rank, seed)

    def sampling_client_from_weights(self, model_dir, blobs):
        return self.local.sampling_client_from_weights(model_dir, blobs)
'''


def test_held_out_loss_on_a_backend_that_cannot_score_it_is_refused_before_training(tmp_path):
    """Found by validate --deep and by the build's compile step, with the same line: never after
    the (paid) training has run."""
    config = CHAT_CONFIG.replace("MODEL", "evsys/tiny-qwen3").replace("SUPERVISE", "all_assistant")
    config += "plugins: [unscored.py]\nbackend: {kind: unscored}\nmetadata:\n  benchmark:\n    - {name: held, kind: nll, path: held.jsonl}\n"
    project = make_project(tmp_path / "p", [], config)
    write_jsonl(project / "data" / "train.jsonl", [chat(i) for i in range(4)])
    write_jsonl(project / "held.jsonl", [chat(i) for i in range(2)])
    (project / "unscored.py").write_text(NO_SCORER)
    line = config.splitlines().index("    - {name: held, kind: nll, path: held.jsonl}") + 1
    assert same_error(project) == (f"config.yaml:{line}:26: metadata.benchmark[0] (held): backend unscored cannot score held-out loss "
                                   "(kind: nll; it has no score_from_weights); use a backend that does, such as local or tinker")
    assert not (project / "cache").exists() or not list(Store(project / "cache").iter_manifests()), "no node ran"
