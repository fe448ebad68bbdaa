"""The built-in `sft` algorithm: tokenize chat rows (loss on assistant turns) and train on them."""

from __future__ import annotations

from ..registry import register_algorithm
from .sft_config import SFTConfig


@register_algorithm("sft")
class SFT:
    """Supervised fine-tuning with Tinker's cross-entropy (sum of -logprob * weight)."""

    version = "1"
    Config = SFTConfig
    needs_tokenized_chat = True
