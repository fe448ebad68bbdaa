"""Installed versions of the libraries whose behaviour shapes a node's output (a tokenizer
library, torch): part of the keys of what they compute, so upgrading one reruns it."""

from __future__ import annotations

import functools
import importlib.metadata

from evsys_build.watch import unwatchable, watch


@functools.lru_cache(maxsize=None)
def library_versions(*names: str) -> dict[str, str | None]:
    """{name: installed version, or None when it is not installed}, read from each
    distribution's metadata, never by importing the library."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
            continue
        out[name] = header_version(dist)
        folder = getattr(dist, "_path", None)  # the .dist-info folder: an upgrade replaces it
        if folder is None:
            unwatchable(f"where {name} is installed")
        else:
            watch(folder)
    return out


def header_version(dist) -> str | None:
    """The `Version:` header of a distribution's metadata: what `dist.version` returns, read from
    the header lines only (`dist.version` has the email parser read all of torch's long
    description first: 5 ms of every `plan`)."""
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    for line in text.splitlines():
        if not line:
            break
        if line.startswith("Version:"):
            return line[len("Version:"):].strip()
    return dist.version
