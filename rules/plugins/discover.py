"""Where an unknown kind is registered: the .py files near the config that call
`register_<kind>("<name>")`, so the error for a kind nobody loaded names the one-line fix
(`plugins: [that_file.py]`). The files are read as text, never imported: loading code is
what `plugins:` says, not what happens to lie around."""

from __future__ import annotations

import os
import re
from pathlib import Path

MAX_FILES = 2000  # .py files read at most: a hint must not turn a typo into a long wait
MAX_FOLDERS = 2000  # folders listed at most, for the same reason
MAX_DEPTH = 4  # folders below each root
MAX_BYTES = 1 << 20
SKIPPED = {"__pycache__", "node_modules", "site-packages", "venv", "env", "build", "dist"}


def plugin_hint(kind: str, name: str, config_path: Path, known_close: bool) -> str:
    """Text to append to an unknown-kind error: the files that register `name`, or, when nothing
    close to it is registered either, how a kind of your own is found."""
    files = files_registering(kind, name, [Path.cwd(), config_path.parent])
    if files:
        shown = [_as_plugin_path(f, config_path) for f in files[:3]]
        return f"; {shown[0]} registers it: add plugins: [{shown[0]}] to the config" + (
            f" (also registered in {', '.join(shown[1:])})" if len(shown) > 1 else "")
    if known_close:
        return ""
    return f"; a {kind} of your own is found once the file that registers it is listed under plugins: [your_file.py] (see docs/plugins.md)"


def files_registering(kind: str, name: str, roots: list[Path]) -> list[Path]:
    """The .py files under `roots` (hidden and environment folders skipped) whose text calls
    `register_<kind>` with `name` as a literal."""
    pattern = re.compile(rb"register_" + kind.encode() + rb"\(\s*(['\"])" + re.escape(name.encode()) + rb"\1")
    found, seen, read, listed = [], set(), 0, 0
    for root in roots:
        root = root.resolve()
        for folder, dirs, files in os.walk(root):
            listed += 1
            if listed > MAX_FOLDERS:
                return found
            depth = len(Path(folder).relative_to(root).parts)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED and depth < MAX_DEPTH)
            for file in sorted(f for f in files if f.endswith(".py")):
                path = Path(folder) / file
                if path in seen:
                    continue
                seen.add(path)
                read += 1
                if read > MAX_FILES:
                    return found
                try:
                    if path.stat().st_size <= MAX_BYTES and pattern.search(path.read_bytes()):
                        found.append(path)
                except OSError:
                    continue
    return found


def _as_plugin_path(file: Path, config_path: Path) -> str:
    """How `plugins:` would name the file: relative to the working directory, else beside the config."""
    for base in (Path.cwd(), config_path.resolve().parent):
        try:
            return file.relative_to(base.resolve()).as_posix()
        except ValueError:
            continue
    return str(file)
