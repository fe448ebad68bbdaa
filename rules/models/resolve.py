"""A model name → its local folder (a directory, evsys/tiny-qwen3, or the offline Hugging Face
cache), and a model's identity for keys: the bytes of its files, never its name alone."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from evsys_build.errors import ConfigError
from evsys_build.statcache import StatCache
from evsys_build.tree import files_under
from evsys_build.watch import unwatchable, watch, watch_tree

from ..data.template_clock import template_clock
from .tiny import TINY_MODEL_NAME, ensure_tiny_model


def resolve_model(name: str, revision: str | None = None, need: str = "model", config_path: str = "CONFIG") -> Path:
    """A local folder for `name`: a directory, evsys/tiny-qwen3, or a snapshot in the local Hugging
    Face cache holding what the backend needs ("model": weights and tokenizer; "tokenizer": the
    tokenizer, chat template and config, for a service that holds the weights). Never downloads:
    `evsys fetch` and `evsys build` do that (`fetch_model`)."""
    path = local_model_folder(name)
    if path is not None:
        return path
    if name == TINY_MODEL_NAME:
        return ensure_tiny_model()
    found = cached_snapshot(name, revision, need)
    if found is None:
        raise ConfigError(
            f"model.name: {name!r}: {_what(need)} not in the local Hugging Face cache ({hf_cache_dir()}); "
            f"run `evsys fetch {config_path}` with network access (HF_TOKEN for gated models)"
        )
    return found


def local_model_folder(name: str) -> Path | None:
    """The folder `name` names when it is a path (checked: it exists and holds a config.json);
    None for a hub id or the tiny model. Reads no cache and no network."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.name: {name!r} has no config.json; is it a model directory?")
        return path
    if path.is_file():
        raise ConfigError(f"model.name: {name!r} is a file; give a model directory or a hub id")
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or "\\" in name:  # a path: hub ids are owner/name
        raise ConfigError(f"model.name: {name!r}: no such model directory; give an existing folder (config.json, weights, tokenizer) or a hub id such as Qwen/Qwen3-0.6B")
    return None


def hub_model(name: str) -> bool:
    """A name that is neither a local directory nor the built-in tiny model: a Hub repo id."""
    return not Path(name).expanduser().is_dir() and name != TINY_MODEL_NAME


TOKENIZER_PATTERNS = ["*.json", "*.txt", "*.jinja", "*.model", "*.tiktoken", "*.py"]  # everything but weights


def _first_line(exc: BaseException, limit: int = 240) -> str:
    """An exception's first non-empty line, whole when short (a cut one ends with an ellipsis)."""
    line = next((part.strip() for part in str(exc).splitlines() if part.strip()), type(exc).__name__)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _what(need: str) -> str:
    return "its tokenizer and chat template are" if need == "tokenizer" else "its weights and tokenizer are"


def hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it (at import) or as the environment says now."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cached_snapshot(name: str, revision: str | None, need: str) -> Path | None:
    """The cached snapshot folder of `name` when it holds what `need` asks for, else None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    patterns = TOKENIZER_PATTERNS if need == "tokenizer" else None
    try:
        folder = Path(snapshot_download(name, revision=revision, local_files_only=True, allow_patterns=patterns))
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError, OSError):
        return None
    return folder if _complete(folder, need) else None


def fetch_model(name: str, revision: str | None, need: str) -> Path:
    """Download what `need` asks for of `name` into the Hugging Face cache (HF_HOME, HF_TOKEN and
    HF_HUB_OFFLINE are huggingface_hub's own); one ConfigError line when that is not possible."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    if hub_offline():
        raise ConfigError(f"model.name: {name!r}: cannot download {_what(need).split(' are')[0]} while HF_HUB_OFFLINE is set; unset it on a machine with network access")
    patterns = TOKENIZER_PATTERNS if need == "tokenizer" else None
    try:
        folder = Path(snapshot_download(name, revision=revision, allow_patterns=patterns))
    except GatedRepoError:
        raise ConfigError(f"model.name: {name!r} is gated on the Hugging Face Hub; accept its license there and export HF_TOKEN") from None
    except (RepositoryNotFoundError, HFValidationError):
        raise ConfigError(f"model.name: {name!r} is not a model on the Hugging Face Hub (or HF_TOKEN cannot see it)") from None
    except RevisionNotFoundError:
        raise ConfigError(f"model.revision: {revision!r} is not a revision of {name!r}") from None
    except LocalEntryNotFoundError as exc:  # the Hub could not be reached, and the cache lacks it
        raise ConfigError(f"model.name: {name!r}: cannot reach the Hugging Face Hub to download {_what(need).split(' are')[0]} ({_first_line(exc)}); "
                          "check the network (or HF_ENDPOINT), or set model.name to a local model folder") from None
    except Exception as exc:  # noqa: BLE001 - network and HTTP errors: one line, no traceback
        raise ConfigError(f"model.name: {name!r}: downloading from the Hugging Face Hub failed ({type(exc).__name__}: {_first_line(exc)})") from None
    if not _complete(folder, need):
        raise ConfigError(f"model.name: {name!r}: the Hub snapshot has no tokenizer (tokenizer_config.json with tokenizer.json or vocab files)")
    return folder


def _complete(folder: Path, need: str) -> bool:
    names = {f.name for f in folder.iterdir()} if folder.is_dir() else set()
    tokenizer = "tokenizer_config.json" in names and bool(names & {"tokenizer.json", "vocab.json", "tokenizer.model"})
    if need == "tokenizer":
        return tokenizer
    return tokenizer and any(n.endswith(WEIGHT_SUFFIXES) for n in names)


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


@dataclass(frozen=True)
class ResolvedModel:
    """A model as the nodes key and load it: its folder, the identity of its network (weights
    and config, or its name for a service that trains it by name) and the digests of its
    tokenizer files."""

    name: str
    revision: str | None
    dir: Path
    identity: dict
    tokenizer: dict[str, str]
    clock: dict | None = None  # what its chat templates render from the clock (template_clock.py)


def resolve(name: str, revision: str | None, statcache: StatCache, need: str = "model", by_name: bool = False, config_path: str = "CONFIG") -> ResolvedModel:
    """Resolve `name` (see resolve_model) and key it; every path that decided the answer is
    watched, so the no-op fast path notices a folder or a Hub snapshot that appears later."""
    watch(Path(name).expanduser())  # a folder of that name appearing later changes what `name` means
    model_dir = resolve_model(name, revision, need, config_path)
    watch_tree(model_dir)
    refs = Path(model_dir).resolve().parent.parent / "refs"
    if refs.is_dir():  # a Hugging Face cache: which snapshot a name means is in refs/
        watch_tree(refs)
        for ref in files_under(refs):
            watch(ref)
    tokenizer = file_digests(tokenizer_files(model_dir), model_dir, statcache)
    clock = template_clock(model_dir, tokenizer)
    if clock is not None:  # tomorrow's plan keys another date: no snapshot of this one is reused
        unwatchable("the chat template renders the clock (strftime_now)")
    return ResolvedModel(name, revision, model_dir, model_identity(name, revision, model_dir, statcache, by_name=by_name), tokenizer, clock)


def model_identity(name: str, revision: str | None, model_dir: Path, statcache: StatCache, by_name: bool = False) -> dict:
    """A model is its bytes when its weights are here: the digests of its weights and config, so
    the same model under another name or folder keeps its keys. A model whose weights live
    elsewhere (a hosted service trains it by name: `by_name`) is its name and revision.
    Tokenizer files are keyed where they are used (tokenize, eval), so a template edit that
    renders the same tokens leaves training cached."""
    if by_name:
        return {"name": name, "revision": revision}
    files = file_digests(network_files(model_dir), model_dir, statcache)
    if any(f.endswith(WEIGHT_SUFFIXES) for f in files):
        return {"files": files}
    return {"name": name, "revision": revision, "files": files}


def _files(model_dir: Path) -> list[Path]:
    return files_under(model_dir, skip_hidden=True)  # through links to folders, as AutoTokenizer reads them
