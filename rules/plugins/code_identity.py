"""Code identity of a plugin: its declared `version`, else a hash of its source.

A user transform or verifier that changes its code must change its key; built-ins carry an
explicit `version` so reformatting them does not invalidate caches.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import inspect
import re
import sys
import textwrap
import types

import xxhash

from evsys_build.errors import HashingError


def code_identity(obj) -> str:
    """`version:<v>` when the object declares one, else `source:<xxh3 of its source>`."""
    version = getattr(obj, "version", None)
    if version is not None:
        return f"version:{version}"
    return "source:" + xxhash.xxh3_128_hexdigest(_source_with_helpers(obj).encode())


def _source_with_helpers(obj) -> str:
    """Source of `obj` plus what it names from its own module, transitively: functions and
    classes (their source) and simple constants such as a compiled regex (their value)."""
    try:
        source = inspect.getsource(obj)
    except (OSError, TypeError) as exc:
        raise HashingError(
            f"cannot read the source of {getattr(obj, '__qualname__', obj)!r} to key it ({exc}); "
            "give it an explicit `version = \"1\"` attribute"
        ) from None
    module = sys.modules.get(getattr(obj, "__module__", ""), None)
    if module is None:
        return source
    parts = [source]
    seen = {getattr(obj, "__name__", None)}
    queue = [source]
    while queue:
        text = queue.pop(0)
        for name in sorted(_names_used(text)):
            if name in seen or name not in vars(module):
                continue
            value = vars(module)[name]
            if isinstance(value, (types.FunctionType, type)) and getattr(value, "__module__", None) == module.__name__:
                seen.add(name)
                try:
                    helper = inspect.getsource(value)
                except (OSError, TypeError):
                    continue
                parts.append(helper)
                queue.append(helper)
                continue
            seen.add(name)
            if isinstance(value, types.ModuleType) or callable(value):
                continue  # code of other modules (imports, builtins) is not followed; set `version` to pin it
            constant = _constant_text(value)
            if constant is None:
                raise HashingError(
                    f"{getattr(obj, '__qualname__', obj)!r} uses the module global {name!r} "
                    f"({type(value).__name__}), whose value evsys cannot hash; "
                    "give the plugin an explicit `version = \"1\"` and bump it when that value changes"
                )
            parts.append(f"{name} = {constant}")
    return "\n".join(parts)


def _constant_text(value) -> str | None:
    """A stable text for a module-level constant a plugin uses (None: not a constant we can key)."""
    if isinstance(value, re.Pattern):
        return f"re.compile({value.pattern!r}, {int(value.flags)})"
    if value is None or isinstance(value, (str, bytes, int, float, bool, enum.Enum)):
        return repr(value)
    if dataclasses.is_dataclass(value) or hasattr(value, "model_dump"):
        return repr(value)  # field-by-field repr: deterministic for plain data
    if isinstance(value, (list, tuple)):
        items = [_constant_text(v) for v in value]
        return None if None in items else "[" + ", ".join(items) + "]"
    if isinstance(value, (set, frozenset)):
        items = [_constant_text(v) for v in value]
        return None if None in items else "{" + ", ".join(sorted(items)) + "}"
    if isinstance(value, dict):
        items = [(_constant_text(k), _constant_text(v)) for k, v in value.items()]
        if any(k is None or v is None for k, v in items):
            return None
        return "{" + ", ".join(f"{k}: {v}" for k, v in items) + "}"
    return None


def _names_used(source: str) -> set[str]:
    try:
        tree = ast.parse(textwrap.dedent(source))
    except SyntaxError:
        return set()
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
