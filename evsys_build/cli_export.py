"""`evsys export node:<checkpoint> DIR [--merge]`: a checkpoint as a PEFT adapter folder, or with
--merge as a full Hugging Face model folder (the frontend writes it)."""

from __future__ import annotations

from pathlib import Path

import click

from .project import frontend
from .store import cache_location, open_built_store


def register(main: click.Group, cache_option) -> None:
    @main.command()
    @click.argument("ref")
    @click.argument("dest", type=click.Path(file_okay=False))
    @click.option("--merge", is_flag=True, help="merge the adapter into the base model: a full model folder (transformers, vLLM)")
    @click.option("--base-model", default=None, help="the base model's folder, when the one it was trained on is elsewhere now")
    @click.option("--dtype", default="auto", show_default=True, help="merged weights' dtype: auto (the base model's), float32, bfloat16, float16")
    @cache_option
    def export(ref, dest, merge, base_model, dtype, cache_dir):
        """Write checkpoint REF (node:<key prefix> of a checkpoint, or of a train node: its final
        checkpoint) into the new folder DEST: a PEFT adapter (LoRA) whose adapter_config.json names
        the base model, or with --merge (and for full fine-tunes) a Hugging Face model folder."""
        store = open_built_store(cache_location(cache_dir))
        key = store.resolve_prefix(ref.split("#", 1)[0])
        written = frontend().export_node(store, key, Path(dest), merge=merge, base_model=base_model, dtype=dtype)
        click.echo(f"wrote {len(written)} files into {dest}: {', '.join(p.name for p in written)}")
