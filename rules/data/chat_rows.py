"""What a chat row may hold, checked before anything renders it.

A row is `{"messages": [...], "tools": [...]?}` (or a bare messages list). Every problem is a
one-line ConfigError that starts with `where` and names `messages[i]`, so no Jinja TypeError or
traceback ever reaches the user. `read_conversation` returns the messages the template sees:
role, content as a string, and for assistants their tool calls and reasoning; other keys
(ids, metadata) are dropped, but another tool's loss switch (`training: false`, ...) is refused,
as it would otherwise be ignored. A message's `weight` (OpenAI's fine-tuning format: 0 or 1) is kept
beside them: `weight: 0` leaves that turn untrained.
"""

from __future__ import annotations

import json
import re

from evsys_build.errors import ConfigError

ROLES = ("system", "user", "assistant", "tool")
_ROLE_SET = frozenset(ROLES)
SUPERVISED = ("all_assistant", "last_assistant")
_OPTIONAL_TEXT = ("name", "tool_call_id")  # passed through to the template when they are strings
_REASONING = ("reasoning_content", "thinking", "reasoning")  # transformers' names for a message's reasoning
# Other tools' per-message loss switches (axolotl's `training`, ...): dropping one would train the turn.
_FOREIGN_TRAINING_FLAGS = ("train", "training", "train_detail", "trainable", "loss", "loss_mask", "mask", "masked", "ignore_loss")


class Conversation:
    """Checked messages, the tools they may call, which messages are exactly {role, content}, and
    the indexes of messages marked `weight: 0` (not trained)."""

    __slots__ = ("messages", "tools", "plain", "untrained")

    def __init__(self, messages: list[dict], tools: list[dict] | None, plain: list[bool], untrained: frozenset[int] = frozenset()):
        self.messages = messages
        self.tools = tools
        self.plain = plain
        self.untrained = untrained

    def plain_prefix(self, end: int) -> bool:
        """Whether messages[:end] (and no tools) can take the renderer's fast path."""
        return self.tools is None and all(self.plain[:end])


def read_conversation(row, where: str, supervise: str | None, specials: re.Pattern | None) -> Conversation:
    """The row's conversation, checked; `specials` matches the tokenizer's special tokens (refused as text).

    A message that is exactly {role, content: str} is kept as it is (nothing to normalize).
    """
    messages, tools = _messages_and_tools(row, where)
    out, plain, untrained = [], [], set()
    for i, message in enumerate(messages):
        if type(message) is dict and len(message) == 2 and type(message.get("content")) is str and message.get("role") in _ROLE_SET:
            out.append(message)
            plain.append(True)
        else:
            if type(message) is dict and "weight" in message:
                message = dict(message)
                weight = message.pop("weight")  # None: absent (Arrow fills a column some messages lack with nulls)
                if weight is not None and _weight(weight, message.get("role"), f"{where}: messages[{i}]", supervise) == 0:
                    untrained.add(i)
            checked = _message(message, i, where)
            out.append(checked)
            plain.append(len(checked) == 2)
    if supervise in SUPERVISED and not any(m["role"] == "assistant" and i not in untrained for i, m in enumerate(out)):
        marked = " (every assistant turn has weight 0)" if untrained else ""
        raise ConfigError(f"{where}: conversation has no assistant turn to train on (supervise: {supervise}){marked}")
    tools = _tools(tools, where)
    if specials is not None and (tools is not None or not all(plain) or specials.search("\x00".join([m["content"] for m in out]))):
        _refuse_special_tokens(out, tools, specials, where)
    return Conversation(out, tools, plain, frozenset(untrained))


def _weight(weight, role, at: str, supervise: str | None) -> int:
    """A message's `weight`: 0 (do not train this turn) or 1, as OpenAI's format has it (null: as if
    absent, the default). Only
    assistant turns are trained (but with `supervise: all`), so 1 on another role is refused."""
    if not (isinstance(weight, (bool, int, float)) and weight in (0, 1)):
        raise ConfigError(f"{at}.weight: {weight!r} must be 0 (do not train this turn) or 1 (train it)")
    if weight == 1 and role != "assistant" and supervise in SUPERVISED:
        raise ConfigError(f"{at}.weight: 1 asks to train this {role} message, but supervise: {supervise} trains assistant turns only; use supervise: all or drop the weight")
    return int(weight)


def _messages_and_tools(row, where: str) -> tuple[list, object]:
    if isinstance(row, list):
        messages, tools = row, None
    elif isinstance(row, dict):
        if "messages" not in row:
            raise ConfigError(
                f"{where}: has no `messages` list; add a transform such as jsonl_to_chat or sharegpt_to_messages before training"
            )
        messages, tools = row["messages"], row.get("tools")
    else:
        raise ConfigError(f"{where}: a row must be an object with `messages`, got {_kind(row)}")
    if not isinstance(messages, list):
        raise ConfigError(f"{where}: `messages` must be a list of {{role, content}} objects, got {_kind(messages)}")
    if not messages:
        raise ConfigError(f"{where}: `messages` is empty; a conversation needs at least one message")
    return messages, tools


def _message(message, i: int, where: str) -> dict:
    """One message as the template sees it: {role, content} plus what its role may carry."""
    at = f"{where}: messages[{i}]"
    if not isinstance(message, dict):
        raise ConfigError(f"{at} must be an object with role and content, got {_kind(message)}")
    role = message.get("role")
    if role not in ROLES:
        raise ConfigError(f"{at}.role {role!r} is not system, user, assistant or tool")
    flag = next((key for key in _FOREIGN_TRAINING_FLAGS if key in message), None)
    if flag is not None:
        raise ConfigError(
            f"{at}.{flag}: evsys does not read this field, so the turn would be trained as if it were absent; "
            "to leave a turn untrained give it weight: 0 (OpenAI's format), e.g. with a transform, or drop the field"
        )
    content = message.get("content")
    if type(content) is str and len(message) == 2:  # the common case, checked in full
        return {"role": role, "content": content}
    calls = message.get("tool_calls")
    if calls == []:  # OpenAI exports write an empty list for "no calls"
        calls = None
    if calls is not None and role != "assistant":
        raise ConfigError(f"{at}.tool_calls: only assistant messages call tools (this one is {role})")
    out = {"role": role, "content": _content(content, at, role, has_calls=bool(calls))}
    if calls is not None:
        out["tool_calls"] = _tool_calls(calls, at)
    for key in _OPTIONAL_TEXT:
        if message.get(key) is not None:
            out[key] = _text(message[key], f"{at}.{key}")
    reasoning = next((key for key in _REASONING if message.get(key) is not None), None)
    if reasoning is not None:
        if role != "assistant":
            raise ConfigError(f"{at}.{reasoning}: only assistant messages carry reasoning (this one is {role})")
        out["reasoning_content"] = _text(message[reasoning], f"{at}.{reasoning}")
        if reasoning != "reasoning_content":
            out[reasoning] = out["reasoning_content"]  # kept under its own name too, for a template that reads that one
    return out


def _content(content, at: str, role: str, has_calls: bool) -> str:
    """Content as one string: a string, a list of OpenAI text parts (joined), or absent beside tool calls."""
    if isinstance(content, str):
        return content
    if content is None:
        if has_calls:
            return ""
        raise ConfigError(f"{at}.content is missing; a {role} message needs text (a string)")
    if isinstance(content, list):
        return "".join(_text_part(part, f"{at}.content[{j}]") for j, part in enumerate(content))
    raise ConfigError(f"{at}.content must be a string or a list of text parts, got {_kind(content)}")


def _text_part(part, at: str) -> str:
    if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
        return part["text"]
    kind = part.get("type") if isinstance(part, dict) else None
    if kind is not None and kind != "text":
        raise ConfigError(f"{at} is a {kind!r} part; only text parts ({{type: text, text: ...}}) fit a text chat template")
    raise ConfigError(f"{at} must be a text part {{type: text, text: <string>}}, got {_kind(part)}")


def _text(value, at: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{at} must be a string, got {_kind(value)}")
    return value


def _tool_calls(calls, at: str) -> list[dict]:
    """OpenAI-style tool calls, normalized to [{type: function, function: {name, arguments}}]."""
    if not isinstance(calls, list) or not calls:
        raise ConfigError(f"{at}.tool_calls must be a non-empty list of {{type: function, function: {{name, arguments}}}}")
    return [_tool_call(call, f"{at}.tool_calls[{j}]") for j, call in enumerate(calls)]


def _tool_call(call, at: str) -> dict:
    if not isinstance(call, dict):
        raise ConfigError(f"{at} must be an object {{type: function, function: {{name, arguments}}}}, got {_kind(call)}")
    if call.get("type", "function") != "function":
        raise ConfigError(f"{at}.type {call.get('type')!r} is not 'function'")
    function = call.get("function", call)  # OpenAI's shape, or the flat {name, arguments}
    if not isinstance(function, dict):
        raise ConfigError(f"{at}.function must be an object {{name, arguments}}, got {_kind(function)}")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{at}.function.name must be a non-empty string, got {_kind(name)}")
    out = {"type": "function", "function": {"name": name, "arguments": _arguments(function.get("arguments", {}), f"{at}.function.arguments")}}
    if isinstance(call.get("id"), str):
        out["id"] = call["id"]
    return out


def _arguments(arguments, at: str):
    """A JSON object, or a string holding one (kept as written: the template prints it verbatim)."""
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except ValueError as exc:
            raise ConfigError(f"{at} is a string but not JSON ({exc.msg} at char {exc.pos}); give an object or a JSON string") from None
        if not isinstance(parsed, dict):
            raise ConfigError(f"{at} must be a JSON object, got JSON {_kind(parsed)}")
        return arguments
    if not isinstance(arguments, dict):
        raise ConfigError(f"{at} must be an object (or a JSON string of one), got {_kind(arguments)}")
    try:
        json.dumps(arguments)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{at} is not JSON-serializable ({exc})") from None
    return arguments


def _tools(tools, where: str) -> list[dict] | None:
    """Function schemas for the template's tool preamble: OpenAI {type: function, function: {...}} or bare {name, ...}."""
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise ConfigError(f"{where}: `tools` must be a list of function schemas, got {_kind(tools)}")
    for j, tool in enumerate(tools):
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ConfigError(f"{where}: tools[{j}] must be a function schema {{type: function, function: {{name, ...}}}}")
        try:
            json.dumps(tool)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: tools[{j}] is not JSON-serializable ({exc})") from None
    return tools or None


def _refuse_special_tokens(messages: list[dict], tools: list | None, specials: re.Pattern, where: str) -> None:
    """Text that spells a special token (`<|im_end|>`) would be read as that control token: refuse it."""
    for i, message in enumerate(messages):
        for key, value in message.items():
            if key == "role":
                continue
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            found = specials.search(text)
            if found:
                raise ConfigError(
                    f"{where}: messages[{i}].{key} contains the special token {found.group()!r} as text; the tokenizer "
                    "would read it as a control token, not text; remove or escape it (e.g. with a transform)"
                )
    found = specials.search(json.dumps(tools, ensure_ascii=False)) if tools else None
    if found:
        raise ConfigError(f"{where}: `tools` contains the special token {found.group()!r} as text; remove or escape it")


def _kind(value) -> str:
    """A value's JSON-ish type name for error messages."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
