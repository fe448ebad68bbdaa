"""Load torch/transformers/peft once, under a lock: nodes run in threads, and transformers'
lazy module attributes are not safe to resolve from two threads at once."""

from __future__ import annotations

import os
import threading

_lock = threading.Lock()
_loaded = False


def preload_ml() -> None:
    """Import the ML stack (and resolve the names rules use) exactly once, in one thread."""
    global _loaded
    with _lock:
        if _loaded:
            return
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        import torch  # noqa: F401
        import transformers
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        for name in ("AutoTokenizer", "AutoModelForCausalLM", "AutoConfig", "Qwen3Config", "Qwen3ForCausalLM", "AttentionInterface"):
            getattr(transformers, name, None)
        import peft  # noqa: F401

        _loaded = True
