"""A file the keys were made of, edited while a build runs: no node is run or stored under a key
that holds content other than what it read. The build fails naming the file; the next build keys
the new content."""

from __future__ import annotations

import json
import shutil

from evsys_testkit import BASE_CONFIG, edit_config, evsys, make_project, ok, ran_names, tool_rows

# A transform that, the first time it runs, edits a file of the build's inputs (as a user saving
# the data or the model's config in an editor while the build runs), then carries on.
EDITOR = '''\
import os

from evsys_sdk import register_transform


@register_transform("edit_while_running")
class EditWhileRunning:
    row_local = True

    def __init__(self, path, text):
        self.path, self.text = path, text

    def __call__(self, rows):
        if os.path.exists("edit-once"):
            os.remove("edit-once")
            with open(self.path, "a") as f:
                f.write(self.text)
        return rows
'''


def project_editing(tmp_path, path: str, text: str):
    project = make_project(tmp_path / "p", tool_rows(12))
    (project / "editor.py").write_text(EDITOR)
    step = f"  - kind: edit_while_running\n    params: {{path: {path}, text: {json.dumps(text)}}}\n"
    config = BASE_CONFIG.replace("transforms:\n", "plugins: [editor.py]\ntransforms:\n" + step, 1)
    (project / "config.yaml").write_text(config)
    (project / "edit-once").touch()
    return project


def test_a_data_file_edited_during_the_build_fails_the_node_that_read_around_it(tmp_path, tiny_model_dir):
    row = json.dumps(tool_rows(13)[-1]) + "\n"
    project = project_editing(tmp_path, "data/train.jsonl", row)
    failed = evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "data/train.jsonl changed while this build ran" in failed.stdout + failed.stderr
    again = ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project)).stdout
    assert {"source", "train"} <= ran_names(again)  # the new content, under its own keys


def test_a_model_file_edited_during_the_build_is_never_trained_on_under_the_old_key(tmp_path, tiny_model_dir):
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    project = project_editing(tmp_path, str(model / "config.json"), " ")  # whitespace: the model still loads, the bytes differ
    edit_config(project, "name: evsys/tiny-qwen3", f"name: {model}")
    failed = evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project)
    assert failed.returncode == 1 and "config.json changed while this build ran" in failed.stdout + failed.stderr
    assert "train" not in ran_names(failed.stdout)
    again = ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project)).stdout
    assert "train" in ran_names(again)


ANSWERS_VERIFIER = '''
from pathlib import Path

from evsys_sdk import register_verifier

ANSWERS = Path("answers.txt").resolve()


@register_verifier("in_answer_list")
def in_answer_list(prediction: str) -> bool:
    return prediction.strip() in ANSWERS.read_text().split()


in_answer_list.files = lambda: [ANSWERS]
'''


def test_a_file_a_verifier_declares_edited_during_the_build_is_never_scored_under_the_old_key(tmp_path, tiny_model_dir):
    project = project_editing(tmp_path, "answers.txt", "x\n")
    (project / "editor.py").write_text(EDITOR + ANSWERS_VERIFIER)
    (project / "answers.txt").write_text("A\n")
    task = {"task_id": "t", "instruction": "q", "verifier": {"kind": "in_process", "fn_name": "in_answer_list"}}
    (project / "val").mkdir()
    (project / "val" / "tasks.jsonl").write_text(json.dumps(task) + "\n")
    edit_config(project, "callbacks:", "metadata:\n  benchmark:\n    - {name: val, path: val, max_tokens: 2}\ncallbacks:")
    failed = evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project)
    assert failed.returncode == 1 and "answers.txt changed while this build ran" in failed.stdout + failed.stderr
    assert not any(name.startswith("eval") for name in ran_names(failed.stdout))
    again = ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project)).stdout
    assert "eval val@1" in ran_names(again)
