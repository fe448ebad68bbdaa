"""Load torch/transformers/peft once, under a lock: nodes run in threads, and transformers'
lazy module attributes are not safe to resolve from two threads at once. Two threads importing
transformers' modules in different orders can each get the other's half-initialised module
(Python breaks the import deadlock that way): a train node's `AutoTokenizer` then read as
missing while a tokenize node compiled its chat template. So every first import of transformers
goes through here, and a tokenizer's first load (which imports its class's module) holds the lock."""

from __future__ import annotations

import os
import threading

_lock = threading.RLock()
_loaded = False
_tokenizers_loaded = False


def preload_tokenizers() -> None:
    """What tokenizing needs (transformers' AutoTokenizer), once, in one thread: a tokenize node
    that reruns one chunk does not pay for peft or the model classes."""
    global _tokenizers_loaded
    with _lock:
        if _tokenizers_loaded:
            return
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        import transformers
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        getattr(transformers, "AutoTokenizer")
        _tokenizers_loaded = True


def import_lock() -> threading.RLock:
    """The lock every first import of transformers' modules holds (`with import_lock(): ...`)."""
    return _lock


def preload_chat_templates() -> None:
    """What rendering chat templates needs (transformers' tokenizer base and chat template code,
    which import no torch), once, in one thread."""
    with _lock:
        if _tokenizers_loaded:
            return
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        import transformers.tokenization_utils_base  # noqa: F401
        import transformers.utils.chat_template_utils  # noqa: F401
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()


def preload_ml() -> None:
    """Import the ML stack (and resolve the names rules use) exactly once, in one thread."""
    global _loaded
    with _lock:
        if _loaded:
            return
        preload_tokenizers()
        import torch  # noqa: F401
        import transformers

        for name in ("AutoModelForCausalLM", "AutoConfig", "Qwen3Config", "Qwen3ForCausalLM", "AttentionInterface", "StaticCache", "GenerationConfig"):
            getattr(transformers, name, None)
        import transformers.cache_utils  # noqa: F401  (what the samplers import later, outside the lock)
        import transformers.integrations.sdpa_attention  # noqa: F401
        import transformers.masking_utils  # noqa: F401
        import peft  # noqa: F401

        _loaded = True
