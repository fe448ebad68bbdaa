"""A model name → its local folder (a directory, evsys/tiny-qwen3, or the offline Hugging Face
cache), and a model's identity for keys: the bytes of its files, never its name alone."""

from __future__ import annotations

from pathlib import Path

from evsys_build.errors import ConfigError
from evsys_build.statcache import StatCache

from .tiny import TINY_MODEL_NAME, ensure_tiny_model


def resolve_model(name: str, revision: str | None = None) -> Path:
    """A model folder for `name`: a local directory, evsys/tiny-qwen3, or the offline HF cache."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.name: {name!r} has no config.json; is it a model directory?")
        return path
    if path.is_file():
        raise ConfigError(f"model.name: {name!r} is a file; give a model directory or a hub id")
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


def local_model_dir(name: str, model_dir: Path) -> str | None:
    """The absolute folder of a model that lives here by name or path (a directory, the tiny
    model); None for a hub id found in the Hugging Face cache (its name is what others load)."""
    if name == TINY_MODEL_NAME or Path(name).expanduser().is_dir():
        return str(Path(model_dir).resolve())
    return None


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
