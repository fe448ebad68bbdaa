"""Built-in transforms (rows -> rows). `row_local = True` lets a transform run per chunk."""

from __future__ import annotations

import json
import random
import re
import string
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field, field_validator, model_validator

from evsys_build.errors import ConfigError
from evsys_build.hashing import canonical_json

from ..plugins.registry import register_transform


def check_template(template: str) -> None:
    """Refuse what str.format cannot fill from a row's fields, whatever the row: unbalanced
    braces, positional fields, unknown conversions."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"not a str.format template ({exc}); write a literal brace as {{{{ or }}}}") from None
    for _, name, _, conversion in parsed:
        if name is None:
            continue
        if name == "" or name.split(".")[0].split("[")[0].isdigit():
            raise ValueError(f"{{{name}}} is a positional field; name a row field, e.g. {{query}}")
        if conversion not in (None, "r", "s", "a"):
            raise ValueError(f"{{{name}!{conversion}}}: unknown conversion !{conversion} (use !r, !s or !a)")


def template_fields(template: str) -> set[str]:
    """The `{field}` names a str.format template uses."""
    names = set()
    for _, name, _, _ in string.Formatter().parse(template):
        if name:
            names.add(re.split(r"[.\[]", name, maxsplit=1)[0])
    return names


@register_transform("jsonl_to_chat")
class JsonlToChat:
    """Render each raw dict into a system/user/assistant conversation with str.format templates.

    The system prompt is used verbatim (braces and all, no row fields): evaluation prompts reuse
    it as written, so training and evaluation see the same bytes.
    """

    name = "jsonl_to_chat"
    row_local = True

    class Config(BaseModel, extra="forbid"):
        system_prompt: Optional[str] = None  # a system turn first, verbatim (no row fields; "" = an empty turn); evals reuse it
        user_template: str  # str.format template over the row's fields
        assistant_template: str  # str.format template over the row's fields: what trains

        @field_validator("user_template", "assistant_template")
        @classmethod
        def _a_format_template(cls, template: str) -> str:
            check_template(template)
            return template

    def __init__(self, **kw):
        self.cfg = self.Config(**kw)

    def required_fields(self) -> set[str]:
        return template_fields(self.cfg.user_template) | template_fields(self.cfg.assistant_template)

    def __call__(self, rows):
        out = []
        for row in rows:
            messages = []
            if self.cfg.system_prompt is not None:
                messages.append({"role": "system", "content": self.cfg.system_prompt})
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
        except (ValueError, TypeError, IndexError, AttributeError) as exc:  # a format spec the value does not take, an index it lacks
            raise ConfigError(f"jsonl_to_chat.params.{field}: {template!r} cannot be filled from this row ({type(exc).__name__}: {exc}); fix the template or the data") from None


SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "system": "system",
    "tool": "tool",
    "observation": "tool",
    "function_call": "function_call",  # LLaMA-Factory: an assistant tool call, its value the call as JSON
}
CHAT_ROLES = ("system", "user", "assistant", "tool")


@register_transform("sharegpt_to_messages")
class ShareGptToMessages:
    """ShareGPT rows (`conversations: [{from, value}]`) -> `messages: [{role, content}]`.

    Roles human/gpt/system/tool (and user, assistant, model, observation) map to the chat roles;
    `function_call` turns (their value is {name, arguments} as JSON, or a list of them) become
    assistant tool calls. A top-level `system` prompt is put first and `tools` (function schemas,
    a list or a JSON string) are kept for the template. A turn's `weight` (0: do not train it) is
    carried over. Unknown roles are an error: map them with `roles`.
    """

    name = "sharegpt_to_messages"
    row_local = True

    class Config(BaseModel, extra="forbid"):
        field: str = "conversations"  # the row field holding the turns
        role_key: str = "from"  # each turn's speaker key (human, gpt, system, tool, ...)
        content_key: str = "value"  # each turn's text key
        system_field: Optional[str] = "system"  # a top-level system prompt, as some ShareGPT files carry
        tools_field: Optional[str] = "tools"  # function schemas, kept as the row's `tools`
        roles: dict[str, str] = Field(default_factory=dict)  # extra or overriding names -> system/user/assistant/tool/function_call

        @model_validator(mode="after")
        def _known_targets(self):
            for source, target in self.roles.items():
                if target not in CHAT_ROLES and target != "function_call":
                    raise ValueError(f"roles.{source}: {target!r} is not one of {', '.join(CHAT_ROLES)}")
            return self

    def __init__(self, **kw):
        self.cfg = self.Config(**kw)
        self.roles = {**SHAREGPT_ROLES, **self.cfg.roles}

    def __call__(self, rows):
        return [self._convert(row) for row in rows]

    def _convert(self, row: dict) -> dict:
        turns = row.get(self.cfg.field)
        if not isinstance(turns, list):
            raise ConfigError(
                f"sharegpt_to_messages: row has no {self.cfg.field!r} list (row has: {', '.join(sorted(row)) or 'no fields'}); "
                "set params.field to the conversation's key"
            )
        messages = [self._message(turn, i) for i, turn in enumerate(turns)]
        system = row.get(self.cfg.system_field) if self.cfg.system_field else None
        if isinstance(system, str) and system and not (messages and messages[0]["role"] == "system"):
            messages.insert(0, {"role": "system", "content": system})
        out = {"messages": messages}
        tools = row.get(self.cfg.tools_field) if self.cfg.tools_field else None
        if tools not in (None, "", []):
            out["tools"] = self._tools(tools)
        return out

    def _message(self, turn, i: int) -> dict:
        at = f"sharegpt_to_messages: {self.cfg.field}[{i}]"
        if not isinstance(turn, dict):
            raise ConfigError(f"{at} must be an object with {self.cfg.role_key!r} and {self.cfg.content_key!r}")
        source = turn.get(self.cfg.role_key)
        role = self.roles.get(source) if isinstance(source, str) else None
        if role is None:
            raise ConfigError(
                f"{at}.{self.cfg.role_key}: role {source!r} is not one of {', '.join(sorted(self.roles))}; "
                f"map it with params.roles (e.g. roles: {{{source}: assistant}})"
            )
        value = turn.get(self.cfg.content_key)
        if role == "function_call":
            call = {"role": "assistant", "content": "", "tool_calls": _sharegpt_calls(value, f"{at}.{self.cfg.content_key}")}
            return {**call, **({"weight": turn["weight"]} if "weight" in turn else {})}
        if not isinstance(value, str):
            raise ConfigError(f"{at}.{self.cfg.content_key} must be a string, got {type(value).__name__}")
        return {"role": role, "content": value, **({"weight": turn["weight"]} if "weight" in turn else {})}

    def _tools(self, tools) -> list:
        at = f"sharegpt_to_messages: {self.cfg.tools_field}"
        if isinstance(tools, str):
            tools = _json_value(tools, at)
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise ConfigError(f"{at} must be a list of function schemas (or a JSON string of one)")
        return [t if t.get("type") == "function" and "function" in t else {"type": "function", "function": t} for t in tools]


def _sharegpt_calls(value, at: str) -> list[dict]:
    """A function_call turn's value ({name, arguments} as JSON or an object, or a list of them) as tool calls."""
    calls = _json_value(value, at) if isinstance(value, str) else value
    calls = calls if isinstance(calls, list) else [calls]
    out = []
    for j, call in enumerate(calls):
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise ConfigError(f"{at}: call {j} must be an object with a string `name` and `arguments`")
        out.append({"type": "function", "function": {"name": call["name"], "arguments": call.get("arguments", {})}})
    return out


def _json_value(text: str, at: str):
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{at} is not valid JSON ({exc.msg} at char {exc.pos})") from None


@register_transform("filter")
class Filter:
    """Keep (or drop, with `keep: false`) the rows whose `field` passes one test. A row without
    the field (or with null there) passes only `not_equals`; `contains` (a substring of a text, an
    item of a list), `min_len` and `max_len` on any other value are an error naming the row."""

    name = "filter"
    row_local = True

    class Config(BaseModel, extra="forbid"):
        field: str  # the row field tested
        op: Literal["equals", "not_equals", "contains", "regex", "exists", "min_len", "max_len"] = "exists"  # the test (regex: on the value's text)
        value: Any = None  # what the test compares with (every op but exists needs one)
        keep: bool = True  # false = drop the matching rows

        @model_validator(mode="after")
        def _value_needed(self):
            if self.op != "exists" and self.value is None:
                raise ValueError(f"op {self.op!r} needs a value")
            if self.op in ("min_len", "max_len") and (isinstance(self.value, bool) or not isinstance(self.value, int)):
                raise ValueError(f"op {self.op} needs a whole number as value, got {self.value!r}")
            if self.op == "regex" and not isinstance(self.value, str):
                raise ValueError(f"op regex needs a pattern (text) as value, got {self.value!r}")
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
        got = row.get(self.cfg.field)
        if op == "not_equals":  # the complement of equals: a row without the field is not equal
            return got != value
        if got is None:  # absent or null: no test holds
            return False
        if op == "exists":
            return True
        if op == "equals":
            return got == value
        if op == "regex":
            return re.search(value, str(got)) is not None
        if op == "contains" and isinstance(got, str) and isinstance(value, str):
            return value in got
        if op == "contains" and isinstance(got, list):
            return value in got
        if op in ("min_len", "max_len") and isinstance(got, (str, list, dict)):
            return len(got) >= value if op == "min_len" else len(got) <= value
        what = "a substring of a text or an item of a list" if op == "contains" else "the length of a text or a list"
        raise ConfigError(f"field {self.cfg.field!r} is {type(got).__name__} {got!r:.40}, but op {op} tests {what} "
                          f"(use equals or regex, or filter on another field)")


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
