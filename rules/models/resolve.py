"""A model name → its local folder (a directory, evsys/tiny-qwen3, or the offline Hugging Face
cache), and a model's identity for keys: the bytes of its files, never its name alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evsys_build.errors import ConfigError
from evsys_build.watch import watch, watch_tree
from evsys_build.statcache import StatCache

from .tiny import TINY_MODEL_NAME, ensure_tiny_model


def resolve_model(name: str, revision: str | None = None) -> Path:
    """A model folder for `name`: a local directory, evsys/tiny-qwen3, or the offline HF cache."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if name == TINY_MODEL_NAME:
        return ensure_tiny_model()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError) as err:
        raise ConfigError(
            f"model.name: {name!r} is not a local directory and is not in the local Hugging Face cache; "
            "download it first or use evsys/tiny-qwen3"
        ) from err


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx", ".npz")


MODEL_CONFIG_FILES = ("config.json",)  # with the weights, what the network computes


def tokenizer_files(model_dir: Path) -> list[Path]:
    """Every file in a model folder that is not weights: whatever the tokenizer loads
    (tokenizer.json, tokenizer.model, added_tokens.json, chat templates, config.json, ...) is among them."""
    return [f for f in _files(model_dir) if not f.name.endswith(WEIGHT_SUFFIXES)]


def network_files(model_dir: Path) -> list[Path]:
    """The weights and the architecture config: what training and sampling compute with."""
    return [f for f in _files(model_dir) if f.name.endswith(WEIGHT_SUFFIXES) or f.name in MODEL_CONFIG_FILES]


def file_digests(files: list[Path], model_dir: Path, statcache: StatCache) -> dict[str, str]:
    return {f.relative_to(model_dir).as_posix(): statcache.file_digest(f) for f in files}


@dataclass(frozen=True)
class ResolvedModel:
    """A model as the nodes key and load it: its folder, the identity of its network (weights
    and config) and the digests of its tokenizer files."""

    name: str
    revision: str | None
    dir: Path
    identity: dict
    tokenizer: dict[str, str]


def resolve(name: str, revision: str | None, statcache: StatCache) -> ResolvedModel:
    watch(Path(name).expanduser())  # a folder of that name appearing later changes what `name` means
    model_dir = resolve_model(name, revision)
    watch_tree(model_dir)
    refs = Path(model_dir).resolve().parent.parent / "refs"
    if refs.is_dir():  # a Hugging Face cache: which snapshot a name means is in refs/
        watch_tree(refs)
        for ref in refs.rglob("*"):
            watch(ref)
    return ResolvedModel(
        name, revision, model_dir,
        model_identity(name, revision, model_dir, statcache),
        file_digests(tokenizer_files(model_dir), model_dir, statcache),
    )


def model_identity(name: str, revision: str | None, model_dir: Path, statcache: StatCache) -> dict:
    """A model is its bytes when its weights are here: the digests of its weights and config, so
    the same model under another name or folder keeps its keys. A model whose weights live
    elsewhere (a hosted service trains it by name) is its name and revision, plus what is here.
    Tokenizer files are keyed where they are used (tokenize, eval), so a template edit that
    renders the same tokens leaves training cached."""
    files = file_digests(network_files(model_dir), model_dir, statcache)
    if any(f.endswith(WEIGHT_SUFFIXES) for f in files):
        return {"files": files}
    return {"name": name, "revision": revision, "files": files}


def _files(model_dir: Path) -> list[Path]:
    model_dir = Path(model_dir)
    return sorted(
        f for f in model_dir.rglob("*")
        if f.is_file() and not any(part.startswith(".") for part in f.relative_to(model_dir).parts)
    )
