"""`evsys export node:<checkpoint> DIR [--merge]`: a trained checkpoint out of the store, as the
folders other tools load.

- LoRA, default: a PEFT adapter folder (adapter_model.safetensors, adapter_config.json naming the
  base model, the tokenizer files), loadable by `PeftModel.from_pretrained(base, DIR)`.
- `--merge`, or a full fine-tune: a Hugging Face model folder (model.safetensors, config.json with
  its dtype, generation_config.json, tokenizer files), loadable by
  `AutoModelForCausalLM.from_pretrained(DIR)` and laid out as vLLM expects.
- A checkpoint trained on a service (Tinker) with `download_weights`: the adapter files the
  service exported, as it wrote them (no --merge: its base weights are not keyed here).

The base model is the folder the checkpoint was trained on (recorded in the checkpoint), else
`--base-model`, else its name resolved as a build would; its weights must be the ones the
training was keyed on. The folder is written beside DIR and renamed into place: never half-written.
torch, transformers and peft are imported inside functions (the engine loads this module lazily).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from evsys_build.errors import ConfigError, UsageError
from evsys_build.statcache import StatCache
from evsys_build.store import Store

from ..models.resolve import local_model_dir, model_identity, resolve_model
from ..nodes.views import Checkpoint, TrainResult

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json", "tokenizer.model", "chat_template.jinja", "chat_template.json")
PROVENANCE = "evsys_export.json"
WEIGHTS_META = "evsys_weights.json"  # among a checkpoint trained here: its format, rank and target modules
SERVICE_ADAPTER = "adapter/"  # among a service's checkpoint: the adapter files it exported (Tinker's download_weights)
DTYPES = ("auto", "float32", "bfloat16", "float16")


def export_node(store: Store, key: str, dest: Path, merge: bool = False, base_model: str | None = None, dtype: str = "auto") -> list[Path]:
    """Write the checkpoint `key` (or a train node's final checkpoint) into `dest`; returns the files written."""
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype}: use one of {', '.join(DTYPES)}")
    key, manifest = _checkpoint_manifest(store, key)
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UsageError(f"{dest}: exists and is not an empty folder; export into a new folder")
    checkpoint = Checkpoint.of(manifest)
    blobs = {name: store.get_bytes(obj) for name, obj in checkpoint.weights.items()}
    stats = manifest.get("stats", {})
    service_files = _service_adapter(key, manifest, blobs, merge) if WEIGHTS_META not in blobs else None
    if service_files is not None:
        meta, full = {"format": "lora", "lora_rank": stats.get("lora_rank")}, False
        base_dir, base_ref = _service_base(store, manifest, base_model)
    else:
        meta = json.loads(blobs[WEIGHTS_META])
        base_dir, base_ref = _base_model(store, manifest, base_model)
        full = merge or meta["format"] == "full"
    staging = dest.parent / f".{dest.name}.evsys-export-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if service_files is not None:
            for name, data in service_files.items():
                (staging / name).write_bytes(data)
        elif full:
            _write_full(staging, base_dir, blobs, meta, dtype)
        else:
            _write_adapter(staging, blobs, meta, base_ref, stats.get("base_model_revision"))
        for name in TOKENIZER_FILES if base_dir is not None else ():
            if (base_dir / name).is_file() and not (staging / name).exists():
                shutil.copyfile(base_dir / name, staging / name)
        mode = 0o666 & ~_umask()
        for f in staging.iterdir():
            os.chmod(f, mode)  # some writers create 0600 files; a model folder is for others to read
        provenance = {"checkpoint": key, "step": stats.get("step"), "base_model": base_ref, "format": "merged" if full else "peft-lora", "lora_rank": meta.get("lora_rank")}
        (staging / PROVENANCE).write_text(json.dumps(provenance, indent=1, sort_keys=True) + "\n")
        os.chmod(staging, 0o777 & ~_umask())
        if dest.exists():
            dest.rmdir()
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(p for p in dest.iterdir() if p.is_file())


def _service_adapter(key: str, manifest: dict, blobs: dict[str, bytes], merge: bool) -> dict[str, bytes]:
    """The adapter files a service (Tinker) exported for this checkpoint, by file name, as it
    wrote them (a PEFT adapter: adapter_model.safetensors, adapter_config.json)."""
    files = {name.removeprefix(SERVICE_ADAPTER): data for name, data in blobs.items() if name.startswith(SERVICE_ADAPTER)}
    refs = ((manifest.get("attachments") or {}).get("remote") or {}).get("refs", {})
    if not files:
        # download_weights is out of the train key, so turning it on later does not refetch these
        # checkpoints: the service still holds them, and its own CLI downloads them
        state = refs.get("state") or refs.get("sampler") or "<its tinker:// path>"
        raise UsageError(f"node:{key[:12]}: trained with backend.params.download_weights: false, its weights live on the service, not in the store; download them with `tinker checkpoint download {state}` (checkpoints trained with download_weights: true export here)")
    if merge:
        raise UsageError(f"node:{key[:12]}: trained on a service, it exports as the adapter the service wrote; --merge takes checkpoints trained here (backend local)")
    bad = [name for name in files if "/" in name or name in ("", ".", "..") or name == PROVENANCE]
    if bad:
        raise UsageError(f"node:{key[:12]}: the service's adapter has a file named {bad[0]!r}, which export will not write")
    return files


def _service_base(store: Store, manifest: dict, override: str | None) -> tuple[Path | None, str]:
    """Where the tokenizer files come from for a service's adapter: the base model when it
    resolves here (else the adapter goes without them), and how it is named."""
    try:
        return _base_model(store, manifest, override)
    except (UsageError, ConfigError):
        if override:
            raise
        return None, manifest.get("stats", {}).get("base_model") or "?"


def _checkpoint_manifest(store: Store, key: str) -> tuple[str, dict]:
    manifest = store.read_manifest(key)
    if manifest is None:
        raise UsageError(f"node:{key[:12]}: not in the store")
    if manifest.get("rule") == "train":
        key = TrainResult.of(manifest).checkpoint_final
        manifest = store.read_manifest(key)
        if manifest is None:
            raise UsageError(f"node:{key[:12]}: the final checkpoint of that training is not in the store; rebuild it")
    if manifest.get("rule") != "checkpoint":
        raise UsageError(f"node:{key[:12]} is a {manifest.get('rule')} node ({manifest.get('name')}); export takes a checkpoint or a train node (`evsys plan` lists them)")
    return key, manifest


def _base_model(store: Store, manifest: dict, override: str | None) -> tuple[Path, str]:
    """(the base model's folder, how adapter_config.json names it), checked against the model
    identity the training was keyed on."""
    stats = manifest.get("stats", {})
    name, revision = stats.get("base_model"), stats.get("base_model_revision")
    recorded = stats.get("base_model_dir")  # set when the base is a local folder (or the tiny model)
    if override:
        base_dir = Path(override).expanduser()
        if not (base_dir / "config.json").is_file():
            raise UsageError(f"--base-model {override}: not a model folder (no config.json)")
        ref = str(base_dir.resolve())
    elif recorded and Path(recorded).is_dir():
        base_dir = Path(recorded)
        ref = str(base_dir.resolve())
    elif name:
        base_dir = resolve_model(name, revision)  # as a build resolves it (a hub id: the local Hugging Face cache)
        ref = name if local_model_dir(name, base_dir) is None else str(base_dir.resolve())
    else:
        raise UsageError("the checkpoint does not name its base model; pass --base-model FOLDER")
    _check_identity(store, manifest, name, revision, base_dir)
    return base_dir.resolve(), ref


def _check_identity(store: Store, manifest: dict, name, revision, base_dir: Path) -> None:
    expected = manifest.get("stats", {}).get("base_model_identity") or _trained_on(store, manifest)
    if expected is None:
        return  # a checkpoint from before checkpoints recorded it, whose training's manifest is gone
    if "files" not in expected:
        return  # trained by name on a service (tinker): its base weights were never here to key
    found = model_identity(name, revision, base_dir, StatCache(store.local_dir / "stat-cache.json"))
    if found.get("files") != expected.get("files"):
        raise ConfigError(f"{base_dir}: not the base model this checkpoint was trained on (its weights or config differ); pass --base-model with the right folder")


def _trained_on(store: Store, manifest: dict) -> dict | None:
    """The model identity the checkpoint's training was keyed on, from the train node's manifest."""
    producer = next((i for i in manifest.get("inputs", []) if i.get("label") == "producer"), None)
    train = store.read_manifest(producer["key"]) if producer and producer.get("key") else None
    return (train or {}).get("params", {}).get("model")


def _write_adapter(folder: Path, blobs: dict[str, bytes], meta: dict, base_ref: str, revision: str | None) -> None:
    from peft import LoraConfig  # lazily: only an export loads peft

    config = LoraConfig(
        r=meta["lora_rank"], lora_alpha=meta["lora_alpha"], target_modules=list(meta["target_modules"]),
        lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", base_model_name_or_path=base_ref, revision=revision,
    )
    config.inference_mode = True
    config.save_pretrained(str(folder))
    (folder / "adapter_model.safetensors").write_bytes(blobs["adapter_model.safetensors"])


def _write_full(folder: Path, base_dir: Path, blobs: dict[str, bytes], meta: dict, dtype: str) -> None:
    import torch

    from ..backends.local.model_io import bytes_to_tensors, load_model, lora_config, with_lora

    model = load_model(base_dir, torch.float32, torch.device("cpu"))
    if meta["format"] == "lora":
        from peft import set_peft_model_state_dict

        peft_model = with_lora(model, lora_config(meta["lora_rank"], meta["target_modules"], meta["lora_alpha"]))
        result = set_peft_model_state_dict(peft_model, bytes_to_tensors(blobs["adapter_model.safetensors"]))
        if getattr(result, "unexpected_keys", None):
            raise ConfigError(f"the adapter does not fit {base_dir}: unexpected {result.unexpected_keys[:3]}")
        model = peft_model.merge_and_unload()
    else:
        missing, unexpected = model.load_state_dict(bytes_to_tensors(blobs["model.safetensors"]), strict=False)
        missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_word_embeddings)]
        if missing or unexpected:
            raise ConfigError(f"the weights do not fit {base_dir}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    target = _target_dtype(base_dir, dtype)
    model.to(getattr(torch, target))
    model.config.dtype = target
    model.save_pretrained(str(folder), safe_serialization=True)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["torch_dtype"] = target  # the key vLLM and older transformers read
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if not (folder / "generation_config.json").is_file():
        model.generation_config.save_pretrained(str(folder))


def _target_dtype(base_dir: Path, dtype: str) -> str:
    """`auto`: the base model's own dtype (float32 when it names none)."""
    if dtype != "auto":
        return dtype
    config = json.loads((base_dir / "config.json").read_text())
    found = config.get("dtype") or config.get("torch_dtype") or "float32"
    return found if found in DTYPES else "float32"


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
