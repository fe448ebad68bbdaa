"""The tokenizer a tokenize node encodes with, loaded without AutoTokenizer.

AutoTokenizer imports torch (through transformers' configuration classes) and rebuilds the
tokenizer's pipeline in Python: about 2.5 s before the first chunk, which a one-row edit pays in
full for one chunk. What tokenizing reads from a tokenizer is small and plain: the `tokenizers`
pipeline, the chat template and the special tokens. The first load takes exactly those from
AutoTokenizer's own tokenizer and stores them (a memo keyed by the bytes of every file in the
model folder but the weights, the versions of the libraries the tokenize node's key names, and
this module's code); later loads rebuild the pipeline from its serialization with `tokenizers` alone
and render the template with transformers' own `apply_chat_template` (called unbound, which
imports no torch).

Nothing is re-derived from the files: transformers v5 rewrites some pipelines as it loads them
(Qwen2's byte-level offsets are trimmed), which `Tokenizer.from_file` would miss and which would
move loss-mask boundaries. A snapshot is only stored when the rebuilt pipeline serializes
exactly as AutoTokenizer's does and renders a probe conversation identically; otherwise every
load uses AutoTokenizer.

Each snapshot is also kept once per machine (machine_snapshots.py): a new store copies it from
there instead of taking it again.
"""

from __future__ import annotations

import functools
import gc
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import xxhash

from evsys_build.hashing import digest

from ..ml_stack import preload_chat_templates
from ..models.resolve import tokenizer_files
from ..plugins.code_identity import code_identity
from ..plugins.installed import library_versions
from . import machine_snapshots
from .chat_tokens import load_tokenizer, load_tokenizer_uncached, racy, stat_stamp, template_turn_end
from .saved_recipes import recipes_path, save_recipes, seed_recipes
from .template_clock import pinned

TOKENIZER_LIBRARIES = ("transformers", "tokenizers", "jinja2")  # rendering and encoding
CONVERTER_LIBRARIES = ("sentencepiece", "protobuf", "tiktoken")  # what builds a fast tokenizer from a folder without tokenizer.json


def tokenizer_library_versions(file_names) -> dict[str, str | None]:
    """The versions of what renders and encodes with a tokenizer of these files; without a
    `tokenizer.json`, also of what converts its `tokenizer.model` or tiktoken file to one."""
    converts = not any(str(name).replace("\\", "/").rsplit("/", 1)[-1] == "tokenizer.json" for name in file_names)
    return library_versions(*TOKENIZER_LIBRARIES, *(CONVERTER_LIBRARIES if converts else ()))

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

    def __init__(self, snapshot: dict, backend: str):
        from tokenizers import Tokenizer

        self.backend_tokenizer = Tokenizer.from_str(backend)
        self.chat_template = snapshot["chat_template"]
        self.eos_token = snapshot["eos_token"]
        self.eos_token_id = snapshot["eos_token_id"]
        self.pad_token_id = snapshot["pad_token_id"]
        self.split_special_tokens = snapshot["split_special_tokens"]
        self.added_tokens_decoder = {int(i): AddedToken(content, special) for i, content, special in snapshot["added_tokens"]}
        self._special_tokens_map = dict(snapshot["special_tokens_map"])
        self._length = snapshot["length"]
        self.template_turn_end = (self.chat_template, snapshot["turn_end"])  # what this template closes a turn with, found at capture (no render here)

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


def load_chat_tokenizer(model_dir: str, store, code: str | None = None):
    """The model's tokenizer for tokenizing rows: from its snapshot in `store` when there is
    one (no torch, no AutoTokenizer); else a snapshot of AutoTokenizer's is taken, stored and
    used; AutoTokenizer's own only for a tokenizer a snapshot cannot reproduce. Its
    renderer starts with the recipes earlier processes saved (`saved_recipes`). `code` is
    `tokenizer_code()`, when the caller has it (a node computes it while compiling)."""
    key = snapshot_key(model_dir, code)
    tok = _snapshot_tokenizer(store, key) or _capture_snapshot(model_dir, store, key) or load_tokenizer(model_dir)
    seed_recipes(tok, recipes_path(store.local_dir, key))
    return tok


def load_machine_tokenizer(model_dir: str):
    """The tokenizer for a check that has no store (`validate --deep`): this machine's snapshot
    (machine_snapshots.py) when it keeps one, else AutoTokenizer's, whose snapshot is then kept
    for the next check and the machine's stores."""
    key = snapshot_key(model_dir)
    with _lock:
        if key in _loaded:
            return _loaded[key]
        kept = _machine_snapshot(key)
        if kept is not None:
            _loaded[key] = kept[0]
            return kept[0]
        captured, tok = _take_snapshot(model_dir)
        if tok is None:
            return load_tokenizer(model_dir)
        machine_snapshots.write(key, captured["snapshot"], captured["backend"])
        _loaded[key] = tok
        return tok


def save_chat_recipes(tok, model_dir: str, store, code: str | None = None) -> None:
    """Keep the recipes `tok`'s renderer learned for the next process (`saved_recipes`)."""
    save_recipes(tok, recipes_path(store.local_dir, snapshot_key(model_dir, code)))


@functools.lru_cache(maxsize=1)
def tokenizer_code() -> str:
    """The code a snapshot and its saved recipes are made and read by: a change to any of it
    takes a new snapshot and learns recipes anew."""
    from . import saved_recipes
    from .chat_render import ChatRenderer

    return digest([code_identity(obj) for obj in (SnapshotTokenizer, capture, ChatRenderer, saved_recipes.save_recipes, saved_recipes._read)])


def snapshot_key(model_dir: str, code: str | None = None) -> str:
    """The memo key of a model folder's snapshot (cached while the files' stats are unchanged)."""
    stamp = stat_stamp(tokenizer_files(Path(model_dir)))
    compute = _snapshot_key.__wrapped__ if racy(stamp) else _snapshot_key  # a racy stat vouches for nothing
    return compute(str(model_dir), stamp, code or tokenizer_code())


@functools.lru_cache(maxsize=8)
def _snapshot_key(model_dir: str, stamp: tuple, code: str) -> str:
    root = Path(model_dir)
    files = {f.relative_to(root).as_posix(): xxhash.xxh3_128_hexdigest(f.read_bytes()) for f in tokenizer_files(root)}
    return digest({"code": code, "files": files, "libraries": tokenizer_library_versions(files)})


def _snapshot_tokenizer(store, key: str) -> SnapshotTokenizer | None:
    with _lock:
        if key in _loaded:
            return _loaded[key]
        found = store.memo_get(key)
        if found is None:
            return _adopt_machine_snapshot(store, key)
        try:
            backend = store.get_bytes(found["blob"]).decode()
            tok = SnapshotTokenizer(found["snapshot"], backend)
        except Exception:  # collected, damaged or unreadable: capture it again
            store.delete_memo(key)
            return _adopt_machine_snapshot(store, key)
        _loaded[key] = tok
        return tok


def _adopt_machine_snapshot(store, key: str) -> SnapshotTokenizer | None:
    """The snapshot this machine keeps under `key` (machine_snapshots.py), copied into `store`
    (the store stays whole without this machine); None when there is none. Caller holds _lock."""
    kept = _machine_snapshot(key)
    if kept is None:
        return None
    tok, snapshot, backend = kept
    store.memo_put(key, {"blob": store.put_bytes(backend.encode()), "snapshot": snapshot})
    _loaded[key] = tok
    return tok


def _machine_snapshot(key: str) -> tuple[SnapshotTokenizer, dict, str] | None:
    """(the tokenizer, its snapshot, its serialized pipeline) this machine keeps under `key`;
    None when there is none or this version of `tokenizers` cannot read it (take it again)."""
    kept = machine_snapshots.read(key)
    if kept is None:
        return None
    try:
        return SnapshotTokenizer(*kept), *kept
    except Exception:
        return None


def _take_snapshot(model_dir: str) -> tuple[dict | None, SnapshotTokenizer | None]:
    """What `capture` takes of AutoTokenizer's tokenizer (let go before the snapshot one is
    built, so the process never holds two: about 100 MB each for Qwen3's), and the snapshot
    tokenizer rebuilt from it (None when it cannot have one). Caller holds _lock."""
    from ..ml_stack import preload_tokenizers

    preload_tokenizers()
    captured = capture(load_tokenizer_uncached(model_dir))
    gc.collect()  # AutoTokenizer's tokenizer holds reference cycles
    return captured, (rebuild(captured) if captured is not None else None)


_loaded: dict[str, SnapshotTokenizer] = {}


def _capture_snapshot(model_dir: str, store, key: str) -> SnapshotTokenizer | None:
    """Load AutoTokenizer's tokenizer, store its snapshot and return the snapshot tokenizer
    (None when it cannot have one). AutoTokenizer's is let go before the snapshot one is built,
    so the process never holds two (about 100 MB each for Qwen3's)."""
    with _lock:
        if key in _loaded:
            return _loaded[key]
    with store.lock(key):  # one process captures; the others (a build's workers) wait, then load its snapshot
        found = _snapshot_tokenizer(store, key)
        if found is not None:
            return found
        with _lock:
            captured, tok = _take_snapshot(model_dir)
            if tok is None:
                return None
            store.memo_put(key, {"blob": store.put_bytes(captured["backend"].encode()), "snapshot": captured["snapshot"]})
            machine_snapshots.write(key, captured["snapshot"], captured["backend"])  # for this machine's other stores
            _loaded[key] = tok
            return tok


PROBE_CLOCK = {"at": "2001-02-03T04:05:06"}  # the probes render any date in a template as this one


def capture(tok) -> dict | None:
    """What a snapshot holds of an AutoTokenizer tokenizer ("snapshot": the plain attributes,
    "backend": the serialized pipeline), and its renders of the probes; None when it has no fast
    pipeline or no chat template. `rebuild` checks a snapshot tokenizer against them."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None or not getattr(tok, "chat_template", None):
        return None
    renders = []
    with pinned(PROBE_CLOCK):  # a template that renders the date: the probes' renders hold one date
        for i, probe in enumerate(PROBES):
            for prompt in (False, True):
                try:
                    renders.append([i, prompt, tok.apply_chat_template(probe, tokenize=False, add_generation_prompt=prompt, enable_thinking=False)])
                except Exception:  # a template that refuses this probe (no system role, ...)
                    continue
    snapshot = {
        "class": type(tok).__name__,
        "chat_template": tok.chat_template,
        "special_tokens_map": dict(tok.special_tokens_map),
        "eos_token": tok.eos_token,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "split_special_tokens": bool(getattr(tok, "split_special_tokens", False)),
        "added_tokens": [[i, t.content, bool(t.special)] for i, t in sorted(tok.added_tokens_decoder.items())],
        "length": len(tok),
        "turn_end": template_turn_end(tok),
    }
    return {"snapshot": snapshot, "backend": backend.to_str(), "renders": renders}


def rebuild(captured: dict) -> SnapshotTokenizer | None:
    """The snapshot tokenizer of `capture`'s result, or None when it would not be the same
    tokenizer: its pipeline serializes otherwise, or it renders a probe otherwise."""
    if not captured["renders"]:
        return None
    try:
        rebuilt = SnapshotTokenizer(json.loads(json.dumps(captured["snapshot"])), captured["backend"])
        if rebuilt.backend_tokenizer.to_str() != captured["backend"]:
            return None
        with pinned(PROBE_CLOCK):
            for i, prompt, theirs in captured["renders"]:
                if rebuilt.apply_chat_template(PROBES[i], tokenize=False, add_generation_prompt=prompt, enable_thinking=False) != theirs:
                    return None
    except Exception:  # anything this tokenizer does that a snapshot cannot: always load it whole
        return None
    return rebuilt


def _tokenizer_base():
    """transformers' tokenizer base class (imported on the first render that needs it: about 0.7 s, no torch)."""
    preload_chat_templates()
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    return PreTrainedTokenizerBase
