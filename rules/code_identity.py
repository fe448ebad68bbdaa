"""Code identity of a plugin: its declared `version`, else a hash of its source.

A user transform or verifier that changes its code must change its key; built-ins carry an
explicit `version` so reformatting them does not invalidate caches.
"""

from __future__ import annotations

import inspect
import sys
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
    """Source of `obj` plus the functions/classes of its own module that it names."""
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
    for name in sorted(_names_used(source)):
        if name in seen:
            continue
        helper = getattr(module, name, None)
        if isinstance(helper, (types.FunctionType, type)) and getattr(helper, "__module__", None) == module.__name__:
            seen.add(name)
            try:
                parts.append(inspect.getsource(helper))
            except (OSError, TypeError):
                continue
    return "\n".join(parts)


def _names_used(source: str) -> set[str]:
    import ast
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(source))
    except SyntaxError:
        return set()
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
