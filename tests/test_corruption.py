"""Corruption is never served and the store heals: each class of bad entry is caught when it is
read (objects by their digest, manifests and memos by their checksums), the owning node is
rebuilt with a one-line warning naming it, the build succeeds with the same results, and
`verify` names the owner of each bad object without changing anything unless `--repair`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evsys_build.store import Store
from evsys_testkit import copy_project, edit_config, evsys, ok

EXPERIMENT = "cutoff"


def ref(project: Path) -> dict[str, dict]:
    return Store(project / "cache").read_ref(EXPERIMENT, "default")["nodes"]


def manifest(project: Path, name: str) -> dict:
    return Store(project / "cache").read_manifest(ref(project)[name]["key"])


def flip_object(project: Path, name: str) -> None:
    path = Store(project / "cache").object_path(name)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def tamper_json(path: Path, change) -> None:
    """Rewrite a JSON entry (manifest, memo) as valid JSON with one value changed: only its
    checksum can tell."""
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def results(project: Path) -> tuple:
    """What a user reads: predictions of every eval and the final weights."""
    final = Store(project / "cache").read_manifest(manifest(project, "train")["outputs"]["checkpoint-final"])
    run_dir = project / "out" / EXPERIMENT
    return (run_dir / "predictions" / "val.jsonl").read_text(), final["outputs"]["weights"]["blobs"]


def eval_memo_keys(project: Path) -> list[str]:
    keys = []
    for f in (project / "cache" / "memo").glob("*/*.json"):
        if "samples" in json.loads(f.read_text())["value"]:
            keys.append(f.stem)
    return keys


# (class, how to corrupt it, what makes a build read it, the node the warning names)
def _row_chunk(p):
    flip_object(p, manifest(p, "transform[2] jsonl_to_chat")["outputs"]["dataset"]["chunks"][0]["blob"])
    edit_config(p, "lora_rank: 1}", "lora_rank: 1, max_length: 512}")  # tokenize reruns and reads its rows
    return "transform[2] jsonl_to_chat"


def _token_chunk(p):
    flip_object(p, manifest(p, "tokenize")["outputs"]["dataset"]["chunks"][0]["blob"])
    edit_config(p, "learning_rate: 1.0e-3", "learning_rate: 2.0e-3")  # training reruns and reads its tokens
    return "tokenize"


def _checkpoint_weights(p):
    flip_object(p, manifest(p, "checkpoint@1")["outputs"]["weights"]["blobs"]["adapter_model.safetensors"])
    edit_config(p, "max_tokens: 4", "max_tokens: 5")  # evals rerun and load the weights
    return "checkpoint@1"


def _resume_state(p):
    flip_object(p, manifest(p, "checkpoint@1")["outputs"]["state"]["blobs"]["trainable.safetensors"])
    Store(p / "cache").delete_manifest(ref(p)["checkpoint@2"]["key"])  # training must resume from step 1
    return "checkpoint@1"


def _predictions(p):
    flip_object(p, manifest(p, "eval val@2")["outputs"]["predictions"]["blob"])
    Store(p / "cache").delete_manifest(ref(p)["report"]["key"])  # the report reruns and reads them
    return "eval val@2"


def _report_file(p):
    flip_object(p, manifest(p, "report")["outputs"]["files"]["blobs"]["metrics.jsonl"])
    (p / "out" / EXPERIMENT / "metrics.jsonl").unlink()  # the build rewrites the run dir from the store
    return "report"


def _eval_memo(p):
    for key in eval_memo_keys(p):
        tamper_json(p / "cache" / "memo" / key[:2] / f"{key}.json", lambda doc: doc["value"]["samples"].__setitem__(0, "!!!!"))
    tasks = p / "val" / "tasks.jsonl"
    tasks.write_text(tasks.read_text().replace('"expected": "A"', '"expected": "B"', 1))  # evals rerun with the same prompts
    return "memo"


def _manifest(p):
    key = ref(p)["tokenize"]["key"]
    tamper_json(p / "cache" / "nodes" / key[:2] / f"{key}.json", lambda doc: doc["outputs"]["dataset"]["chunks"][0].__setitem__("rows", 1))
    return "tokenize"


def _deleted_object(p):
    Store(p / "cache").object_path(manifest(p, "checkpoint@2")["outputs"]["weights"]["blobs"]["adapter_model.safetensors"]).unlink()
    return "checkpoint@2"


CLASSES = {
    "row chunk": _row_chunk,
    "token chunk": _token_chunk,
    "checkpoint weights": _checkpoint_weights,
    "resume state": _resume_state,
    "eval predictions": _predictions,
    "report blob": _report_file,
    "eval memo": _eval_memo,
    "manifest": _manifest,
    "deleted object": _deleted_object,
}


@pytest.mark.parametrize("kind", list(CLASSES))
def test_corruption_is_caught_rebuilt_and_never_served(built_evals, tmp_path, kind):
    project = copy_project(built_evals, tmp_path / "p")
    before = results(project)
    owner = CLASSES[kind](project)
    proc = ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project))
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert warnings, proc.stderr
    assert owner in proc.stderr or owner == "memo"
    assert "!!!!" not in results(project)[0]  # a tampered memo's samples never reach the predictions
    assert "Traceback" not in proc.stderr
    after = results(project)
    if kind in ("token chunk", "checkpoint weights", "eval memo", "row chunk"):
        assert after[1] == before[1] or kind == "token chunk"  # the recipe changed for some; the weights never come from bad bytes
    else:
        assert after == before  # rebuilt to the same bytes (CPU training is deterministic)
    ok(evsys("verify", "--cache-dir", "cache", cwd=project))  # healed: nothing bad left behind
    again = ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project))
    assert "warning" not in again.stderr


def test_verify_names_the_owner_and_changes_nothing_without_repair(built_evals, tmp_path):
    project = copy_project(built_evals, tmp_path / "p")
    blob = manifest(project, "tokenize")["outputs"]["dataset"]["chunks"][0]["blob"]
    flip_object(project, blob)
    proc = evsys("verify", "--cache-dir", "cache", cwd=project)
    assert proc.returncode == 1
    line = next(line for line in proc.stdout.splitlines() if blob in line)
    assert "corrupt" in line and "tokenize node:" in line
    assert Store(project / "cache").object_path(blob).exists()  # reported, not touched
    repaired = ok(evsys("verify", "--repair", "--cache-dir", "cache", cwd=project))
    assert "(repaired)" in repaired.stdout and not Store(project / "cache").object_path(blob).exists()
    plan = json.loads(ok(evsys("plan", "config.yaml", "--json", "--cache-dir", "cache", cwd=project)).stdout)["nodes"]
    tokenize = next(n for n in plan if n["name"] == "tokenize")
    assert tokenize["status"] == "run" and "missing or were quarantined" in tokenize["reasons"][0]
    ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project))
    assert ok(evsys("verify", "--cache-dir", "cache", cwd=project)).stdout.rstrip().endswith("0 problem(s)")


def test_staging_files_a_killed_build_left_are_removed(built_evals, tmp_path):
    project = copy_project(built_evals, tmp_path / "p")
    tmp = project / "cache" / "tmp"
    tmp.mkdir(exist_ok=True)
    dead = tmp / ".evsys-999999999-leftover"
    dead.write_bytes(b"half a checkpoint")
    proc = evsys("verify", "--cache-dir", "cache", cwd=project)
    assert proc.returncode == 1 and "a staging file a killed build left behind" in proc.stdout
    ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project))
    assert not dead.exists()


def test_a_corrupt_object_in_the_upstream_store_is_rebuilt_not_fatal(built_evals, tmp_path):
    """Reading through a team store (--remote): a bad object there is quarantined there, and
    the node is rebuilt here from its inputs; the build succeeds with the same results."""
    project = copy_project(built_evals, tmp_path / "p")
    before = results(project)
    blob = manifest(project, "tokenize")["outputs"]["dataset"]["chunks"][0]["blob"]
    flip_object(project, blob)
    upstream = tmp_path / "team-store"
    (project / "cache").rename(upstream)
    proc = ok(evsys("build", "config.yaml", "--cache-dir", "cache", "--remote", str(upstream), cwd=project))
    assert blob in proc.stderr and "quarantine" in proc.stderr and "Traceback" not in proc.stderr
    assert any(line.startswith("ran ") and "tokenize" in line for line in proc.stdout.splitlines())
    assert results(project) == before
    assert not Store(upstream).object_path(blob).exists()  # quarantined where it was found
