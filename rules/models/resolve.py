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


def model_identity(name: str, revision: str | None, model_dir: Path, statcache: StatCache) -> dict:
    """A model is its bytes: the digest of every file in its directory (plus the name it was asked by)."""
    files = {f.name: statcache.file_digest(f) for f in sorted(model_dir.iterdir()) if f.is_file() and not f.name.startswith(".")}
    return {"files": files} if Path(name).is_dir() else {"name": name, "revision": revision, "files": files}
