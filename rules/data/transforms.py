"""Built-in transforms (rows -> rows). `row_local = True` lets a transform run per chunk."""

from __future__ import annotations

import random
import re
import string
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field, model_validator

from evsys_build.errors import ConfigError
from evsys_build.hashing import canonical_json

from ..plugins.registry import register_transform


def template_fields(template: str) -> set[str]:
    """The `{field}` names a str.format template uses."""
    names = set()
    for _, name, _, _ in string.Formatter().parse(template):
        if name:
            names.add(re.split(r"[.\[]", name, maxsplit=1)[0])
    return names


@register_transform("jsonl_to_chat")
class JsonlToChat:
    """Render each raw dict into a system/user/assistant conversation with str.format templates."""

    name = "jsonl_to_chat"
    row_local = True

    class Config(BaseModel, extra="forbid"):
        system_prompt: Optional[str] = None  # a system turn first (a template too); evals reuse it
        user_template: str  # str.format template over the row's fields
        assistant_template: str  # str.format template over the row's fields: what trains

    def __init__(self, **kw):
        self.cfg = self.Config(**kw)

    def required_fields(self) -> set[str]:
        return template_fields(self.cfg.user_template) | template_fields(self.cfg.assistant_template) | (
            template_fields(self.cfg.system_prompt) if self.cfg.system_prompt else set()
        )

    def __call__(self, rows):
        out = []
        for row in rows:
            messages = []
            if self.cfg.system_prompt is not None:
                messages.append({"role": "system", "content": self._fill(self.cfg.system_prompt, row, "system_prompt")})
            messages.append({"role": "user", "content": self._fill(self.cfg.user_template, row, "user_template")})
            messages.append({"role": "assistant", "content": self._fill(self.cfg.assistant_template, row, "assistant_template")})
            out.append({"messages": messages})
        return out

    @staticmethod
    def _fill(template: str, row: dict, field: str) -> str:
        """The filled template; a missing field names the template (the runner adds which row)."""
        try:
            return template.format_map(row)
        except KeyError as exc:
            raise ConfigError(
                f"jsonl_to_chat.params.{field}: field {exc.args[0]!r} is not in this row "
                f"(row has: {', '.join(sorted(row)) or 'no fields'}); fix the template or the data"
            ) from None


@register_transform("filter")
class Filter:
    """Keep (or drop, with `keep: false`) the rows whose `field` passes one test."""

    name = "filter"
    row_local = True

    class Config(BaseModel, extra="forbid"):
        field: str  # the row field tested
        op: Literal["equals", "not_equals", "contains", "regex", "exists", "min_len", "max_len"] = "exists"  # the test
        value: Any = None  # what the test compares with (every op but exists needs one)
        keep: bool = True  # false = drop the matching rows

        @model_validator(mode="after")
        def _value_needed(self):
            if self.op != "exists" and self.value is None:
                raise ValueError(f"op {self.op!r} needs a value")
            if self.op == "regex":
                try:
                    re.compile(self.value)
                except re.error as exc:
                    raise ValueError(f"bad regex {self.value!r}: {exc}") from None
            return self

    def __init__(self, **kw):
        self.cfg = self.Config(**kw)

    def __call__(self, rows):
        return [r for r in rows if self._matches(r) == self.cfg.keep]

    def _matches(self, row: dict) -> bool:
        op, value = self.cfg.op, self.cfg.value
        if self.cfg.field not in row:
            return False
        got = row[self.cfg.field]
        if op == "exists":
            return got is not None
        if op == "equals":
            return got == value
        if op == "not_equals":
            return got != value
        if op == "contains":
            return value in got
        if op == "regex":
            return re.search(value, str(got)) is not None
        length = len(got) if hasattr(got, "__len__") else 0
        return length >= value if op == "min_len" else length <= value


@register_transform("dedup")
class Dedup:
    """Drop rows whose `fields` (default: the whole row) were seen before; the first one stays."""

    name = "dedup"
    row_local = False

    class Config(BaseModel, extra="forbid"):
        fields: Optional[list[str]] = None  # the fields that make rows equal; None = the whole row

    def __init__(self, **kw):
        self.cfg = self.Config(**kw)

    def __call__(self, rows):
        seen: set[str] = set()
        out = []
        for row in rows:
            ident = canonical_json({f: row.get(f) for f in self.cfg.fields} if self.cfg.fields else row)
            if ident not in seen:
                seen.add(ident)
                out.append(row)
        return out


@register_transform("shuffle")
class Shuffle:
    """A seeded shuffle of all rows (seed defaults to the experiment's seed)."""

    name = "shuffle"
    row_local = False

    class Config(BaseModel, extra="forbid"):
        seed: Optional[int] = None  # default: the experiment's seed

    def __init__(self, **kw):
        self.cfg = self.Config(**kw)

    def __call__(self, rows):
        rows = list(rows)
        random.Random(self.cfg.seed).shuffle(rows)
        return rows


@register_transform("sample")
class Sample:
    """A seeded sample of `n` rows or a `fraction`, kept in their original order."""

    name = "sample"
    row_local = False

    class Config(BaseModel, extra="forbid"):
        n: Optional[int] = Field(None, ge=0)  # rows to keep
        fraction: Optional[float] = Field(None, gt=0, le=1)  # or the share of rows to keep
        seed: Optional[int] = None  # default: the experiment's seed

        @model_validator(mode="after")
        def _one_size(self):
            if (self.n is None) == (self.fraction is None):
                raise ValueError("give exactly one of n or fraction")
            return self

    def __init__(self, **kw):
        self.cfg = self.Config(**kw)

    def __call__(self, rows):
        rows = list(rows)
        size = self.cfg.n if self.cfg.n is not None else round(len(rows) * self.cfg.fraction)
        picked = sorted(random.Random(self.cfg.seed).sample(range(len(rows)), min(size, len(rows))))
        return [rows[i] for i in picked]
