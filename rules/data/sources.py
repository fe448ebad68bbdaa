"""Sources: raw data files → row datasets. Keys come from file bytes, never the path."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from evsys_build.errors import ConfigError

from ..plugins.registry import register_source


@register_source("jsonl")
class JsonlSource:
    """One JSON object per line; blank lines skipped; errors name file:line."""

    class Config(BaseModel, extra="forbid"):
        path: str  # relative to the directory you run from, or absolute

    def __init__(self, **kw):
        self.cfg = self.Config(**kw)

    def files(self) -> list[Path]:
        return [Path(self.cfg.path)]

    def check(self) -> None:
        """Fail early, naming the field, when the file is missing."""
        path = Path(self.cfg.path)
        if not path.is_file():
            raise ConfigError(f"data.path: no such file {str(path)!r} (paths are relative to the directory you run from)")

    def read(self) -> list[dict]:
        self.check()
        return list(read_jsonl(Path(self.cfg.path)))

    def location(self, index: int) -> str | None:
        """`file:line` of the row at `index` (0-based, blank lines skipped), for error messages."""
        return jsonl_location(Path(self.cfg.path), index)


def jsonl_location(path: Path, index: int) -> str | None:
    seen = -1
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                seen += 1
                if seen == index:
                    return f"{path}:{lineno}"
    return None


def read_jsonl(path: Path):
    """Yield the rows of a JSONL file; a bad line is a ConfigError naming file:line."""
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{path}:{lineno}: invalid JSON ({exc.msg if hasattr(exc, 'msg') else exc}); fix or remove the line") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}:{lineno}: each line must be a JSON object, got {type(row).__name__}")
            yield row
