"""`evsys export`: a stored checkpoint as a PEFT adapter folder (loaded back with
PeftModel.from_pretrained) or, with --merge, as a Hugging Face model folder (loaded back with
AutoModelForCausalLM.from_pretrained); both give the checkpoint's logits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from evsys_build.store import Store
from evsys_testkit import evsys, linked_model_copy, ok, plan_json


@pytest.fixture(scope="module")
def checkpoint(built_project) -> str:
    return plan_json(built_project)["checkpoint@1"]["key"]


@pytest.fixture(scope="module")
def reference(built_project, checkpoint, tiny_model_dir):
    """What evsys itself computes with the checkpoint (the evals' model): logits on a chat prompt."""
    import torch

    from evsys_rules.backends.local import LocalBackend
    from evsys_rules.nodes.views import Checkpoint

    store = Store(built_project / "cache")
    blobs = {n: store.get_bytes(b) for n, b in Checkpoint.of(store.read_manifest(checkpoint)).weights.items()}
    model, _ = LocalBackend({"device": "cpu", "dtype": "float32"})._model_from_weights(tiny_model_dir, blobs)
    ids = torch.tensor([[151644, 872, 198, 2859, 25, 1681, 220, 16, 151645, 198, 151644, 77091, 198]])
    with torch.no_grad():
        return ids, model(input_ids=ids).logits


def other_base_model(model_dir: Path, dest: Path) -> Path:
    """A copy of the tiny model whose config differs (other numbers, same shapes): not the base
    any checkpoint here was trained on."""
    other = linked_model_copy(model_dir, dest)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").unlink()  # a symlink into the shared model: replace, never write through
    (other / "config.json").write_text(json.dumps({**config, "rope_theta": 12345.0}))
    return other


def export(project: Path, ref: str, dest: Path, *extra: str):
    return evsys("export", ref, str(dest), "--cache-dir", "cache", *extra, cwd=project)


def export_here(project: Path, key: str, dest: Path, **kw) -> list[Path]:
    """What `evsys export` runs, in this process (torch is loaded here already)."""
    from evsys_rules.frontend import export_node

    return export_node(Store(project / "cache"), key, dest, **kw)


def test_adapter_folder_loads_with_peft(built_project, checkpoint, reference, tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest = tmp_path / "adapter"
    out = ok(export(built_project, "node:" + checkpoint[:10], dest)).stdout
    assert out.startswith("wrote ") and "adapter_model.safetensors" in out
    config = json.loads((dest / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir.resolve())
    assert config["peft_type"] == "LORA" and config["r"] == 1 and config["inference_mode"] is True
    assert json.loads((dest / "evsys_export.json").read_text())["checkpoint"] == checkpoint
    ids, want = reference
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    with torch.no_grad():
        got = PeftModel.from_pretrained(base, dest)(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert AutoTokenizer.from_pretrained(dest).chat_template  # the tokenizer travels with it


def test_merged_folder_loads_with_transformers(built_project, checkpoint, reference, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest = tmp_path / "merged"
    export_here(built_project, checkpoint, dest, merge=True)
    names = {p.name for p in dest.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    config = json.loads((dest / "config.json").read_text())
    assert config["torch_dtype"] == "float32" and config["architectures"] == ["Qwen3ForCausalLM"]  # what vLLM reads
    ids, want = reference
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(dest)(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert AutoTokenizer.from_pretrained(dest).chat_template
    bf16 = tmp_path / "merged-bf16"
    export_here(built_project, checkpoint, bf16, merge=True, dtype="bfloat16")
    assert json.loads((bf16 / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert (bf16 / "model.safetensors").stat().st_size < 0.6 * (dest / "model.safetensors").stat().st_size


def test_a_train_node_exports_its_final_checkpoint(built_project, checkpoint, tmp_path):
    train = plan_json(built_project)["train"]["key"]
    export_here(built_project, train, tmp_path / "a")
    assert json.loads((tmp_path / "a" / "evsys_export.json").read_text())["checkpoint"] == checkpoint


def test_export_refuses_what_it_cannot_do_in_one_line(built_project, checkpoint, tiny_model_dir, tmp_path):
    tokenize = plan_json(built_project)["tokenize"]["key"]
    proc = export(built_project, "node:" + tokenize[:10], tmp_path / "x")
    assert proc.returncode == 2 and "is a tokenize node (tokenize); export takes a checkpoint or a train node" in proc.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    proc = export(built_project, "node:" + checkpoint[:10], tmp_path / "full")
    assert proc.returncode == 2 and "exists and is not an empty folder" in proc.stderr
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    other = other_base_model(tiny_model_dir, tmp_path / "other-model")
    proc = export(built_project, "node:" + checkpoint[:10], tmp_path / "y", "--merge", "--base-model", str(other))
    assert proc.returncode == 2 and "not the base model this checkpoint was trained on" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "y").exists()
    assert not list(tmp_path.glob(".y.evsys-export-*"))  # nothing half-written
    shutil.rmtree(other)


def test_a_checkpoint_of_an_unfinished_training_still_checks_its_base_model(project_copy, tiny_model_dir, tmp_path):
    """An interrupted training publishes its checkpoints but never writes its own manifest: the
    checkpoint itself records the model identity, so a merge into other weights is refused."""
    plan = plan_json(project_copy)
    checkpoint, train = plan["checkpoint@1"]["key"], plan["train"]["key"]
    Store(project_copy / "cache").delete_manifest(train)  # as after Ctrl-C or SIGKILL mid-training
    other = other_base_model(tiny_model_dir, tmp_path / "other-model")
    proc = export(project_copy, "node:" + checkpoint[:10], tmp_path / "y", "--merge", "--base-model", str(other))
    assert proc.returncode == 2 and "not the base model this checkpoint was trained on" in proc.stderr
    ok(export(project_copy, "node:" + checkpoint[:10], tmp_path / "z", "--merge"))  # its own base still merges
    shutil.rmtree(other)
