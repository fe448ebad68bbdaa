"""The tokenizer a tokenize node encodes with, loaded without AutoTokenizer.

AutoTokenizer imports torch (through transformers' configuration classes) and rebuilds the
tokenizer's pipeline in Python: about 2.5 s before the first chunk, which a one-row edit pays in
full for one chunk. What tokenizing reads from a tokenizer is small and plain: the `tokenizers`
pipeline, the chat template and the special tokens. The first load takes exactly those from
AutoTokenizer's own tokenizer and stores them (a memo keyed by the bytes of every file in the
model folder but the weights, the versions of transformers, tokenizers and jinja2, and this
module's code); later loads rebuild the pipeline from its serialization with `tokenizers` alone
and render the template with transformers' own `apply_chat_template` (called unbound, which
imports no torch).

Nothing is re-derived from the files: transformers v5 rewrites some pipelines as it loads them
(Qwen2's byte-level offsets are trimmed), which `Tokenizer.from_file` would miss and which would
move loss-mask boundaries. A snapshot is only stored when the rebuilt pipeline serializes
exactly as AutoTokenizer's does and renders a probe conversation identically; otherwise every
load uses AutoTokenizer.
"""

from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import xxhash

from evsys_build.errors import CorruptObject
from evsys_build.hashing import digest

from ..ml_stack import preload_chat_templates
from ..models.resolve import tokenizer_files
from ..plugins.code_identity import code_identity, library_versions
from .saved_recipes import recipes_path, save_recipes, seed_recipes

SNAPSHOT_LIBRARIES = ("transformers", "tokenizers", "jinja2")
PROBES = (  # rendered by both tokenizers before a snapshot is kept (those AutoTokenizer's renders)
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi <there>\n"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Again?"},
    ],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " Hello.\n"}],
)
_lock = threading.Lock()


@dataclass(frozen=True)
class AddedToken:
    """What chat_tokens reads of an added token."""

    content: str
    special: bool


class SnapshotTokenizer:
    """A tokenizer rebuilt from a snapshot: the fast pipeline, the chat template and the special
    tokens, with the attributes and methods the chat pipeline uses, named as transformers names them."""

    def __init__(self, snapshot: dict):
        from tokenizers import Tokenizer

        self.backend_tokenizer = Tokenizer.from_str(snapshot["backend"])
        self.chat_template = snapshot["chat_template"]
        self.eos_token = snapshot["eos_token"]
        self.eos_token_id = snapshot["eos_token_id"]
        self.pad_token_id = snapshot["pad_token_id"]
        self.split_special_tokens = snapshot["split_special_tokens"]
        self.added_tokens_decoder = {int(i): AddedToken(content, special) for i, content, special in snapshot["added_tokens"]}
        self._special_tokens_map = dict(snapshot["special_tokens_map"])
        self._length = snapshot["length"]

    @property
    def special_tokens_map(self) -> dict[str, str]:
        return dict(self._special_tokens_map)

    def __len__(self) -> int:
        return self._length

    def get_chat_template(self, chat_template=None, tools=None) -> str:
        if chat_template is None and tools is None and isinstance(self.chat_template, str):
            return self.chat_template  # what transformers returns here, without importing it
        return _tokenizer_base().get_chat_template(self, chat_template, tools)

    def apply_chat_template(self, conversation, **kwargs):
        """transformers' own `apply_chat_template`, rendering text only."""
        if kwargs.get("tokenize", True):
            raise TypeError("a snapshot tokenizer renders text only: pass tokenize=False and encode the text")
        return _tokenizer_base().apply_chat_template(self, conversation, **kwargs)


def load_chat_tokenizer(model_dir: str, store):
    """The model's tokenizer for tokenizing rows: from its snapshot in `store` when there is
    one (no torch, no AutoTokenizer), else AutoTokenizer's, whose snapshot is then stored. Its
    renderer starts with the recipes earlier processes saved (`saved_recipes`)."""
    from .chat_tokens import load_tokenizer

    key = snapshot_key(model_dir)
    tok = _snapshot_tokenizer(store, key)
    if tok is None:
        from ..ml_stack import preload_tokenizers

        preload_tokenizers()
        tok = load_tokenizer(model_dir)
        snapshot = capture(tok)
        if snapshot is not None:
            store.memo_put(key, {"blob": store.put_bytes(json.dumps(snapshot, sort_keys=True).encode())})
    seed_recipes(tok, recipes_path(store.local_dir, key))
    return tok


def save_chat_recipes(tok, model_dir: str, store) -> None:
    """Keep the recipes `tok`'s renderer learned for the next process (`saved_recipes`)."""
    save_recipes(tok, recipes_path(store.local_dir, snapshot_key(model_dir)))


def snapshot_key(model_dir: str) -> str:
    """The memo key of a model folder's snapshot (cached while the files' stats are unchanged)."""
    files = tokenizer_files(Path(model_dir))
    stamp = tuple((f.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) for f in files for st in [f.stat()])
    return _snapshot_key(str(model_dir), stamp)


@functools.lru_cache(maxsize=8)
def _snapshot_key(model_dir: str, stamp: tuple) -> str:
    root = Path(model_dir)
    files = {f.relative_to(root).as_posix(): xxhash.xxh3_128_hexdigest(f.read_bytes()) for f in tokenizer_files(root)}
    return digest({
        "tokenizer_snapshot": code_identity(SnapshotTokenizer),
        "capture": code_identity(capture),
        "files": files,
        "libraries": library_versions(*SNAPSHOT_LIBRARIES),
    })


def _snapshot_tokenizer(store, key: str) -> SnapshotTokenizer | None:
    with _lock:
        if key in _loaded:
            return _loaded[key]
        found = store.memo_get(key)
        if found is None:
            return None
        try:
            snapshot = json.loads(store.get_bytes(found["blob"]))
        except (CorruptObject, KeyError, TypeError, ValueError):  # collected or damaged: capture it again
            store.delete_memo(key)
            return None
        tok = _loaded[key] = SnapshotTokenizer(snapshot)
        return tok


_loaded: dict[str, SnapshotTokenizer] = {}


def capture(tok) -> dict | None:
    """The snapshot of an AutoTokenizer tokenizer, or None when a rebuilt one would not match it."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None or not getattr(tok, "chat_template", None):
        return None
    snapshot = {
        "class": type(tok).__name__,
        "backend": backend.to_str(),
        "chat_template": tok.chat_template,
        "special_tokens_map": dict(tok.special_tokens_map),
        "eos_token": tok.eos_token,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "split_special_tokens": bool(getattr(tok, "split_special_tokens", False)),
        "added_tokens": [[i, t.content, bool(t.special)] for i, t in sorted(tok.added_tokens_decoder.items())],
        "length": len(tok),
    }
    try:
        rebuilt = SnapshotTokenizer(json.loads(json.dumps(snapshot)))
        if rebuilt.backend_tokenizer.to_str() != snapshot["backend"]:
            return None
    except Exception:  # anything this tokenizer does that a snapshot cannot: always load it whole
        return None
    compared = 0
    for probe in PROBES:
        for prompt in (False, True):
            try:
                theirs = tok.apply_chat_template(probe, tokenize=False, add_generation_prompt=prompt, enable_thinking=False)
            except Exception:  # a template that refuses this probe (no system role, ...)
                continue
            try:
                ours = rebuilt.apply_chat_template(probe, tokenize=False, add_generation_prompt=prompt, enable_thinking=False)
            except Exception:
                return None
            if ours != theirs:
                return None
            compared += 1
    return snapshot if compared else None


def _tokenizer_base():
    """transformers' tokenizer base class (imported on the first render that needs it: about 0.7 s, no torch)."""
    preload_chat_templates()
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    return PreTrainedTokenizerBase
