"""Canonical JSON and xxh3_128 keys: hash a canonical form, never a name or a path."""

from __future__ import annotations

import datetime
import json
import json.encoder
import math
from pathlib import PurePath
from typing import Any

import xxhash

from .errors import HashingError


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, floats by repr, so `1`, `1.0` and `"1"` all differ.

    Anything that has no canonical form (paths, bytes, arbitrary objects) raises a
    HashingError naming where it sits, instead of degrading to a random key.
    """
    try:
        return _encode_plain(value)
    except _NotPlain:
        return _encode(value, "$")


class _NotPlain(Exception):
    """A value outside plain JSON types: `_encode` handles it (and names where it sits)."""


_encode_string = json.encoder.encode_basestring  # what json.dumps(s, ensure_ascii=False) returns


def _encode_plain(value: Any) -> str:
    """`_encode` for exactly-typed JSON data (dict, list, str, int, float, bool, None), the bulk of
    every key: the same text, without building a location for every element. Anything else,
    subclasses included, raises _NotPlain and the whole value goes through `_encode`."""
    kind = type(value)
    if kind is str:
        return _encode_string(value)
    if kind is dict:
        parts = []
        for k in sorted(value):
            if type(k) is not str:
                raise _NotPlain
            parts.append(_encode_string(k) + ":" + _encode_plain(value[k]))
        return "{" + ",".join(parts) + "}"
    if kind is list or kind is tuple:
        return "[" + ",".join([_encode_plain(v) for v in value]) + "]"
    if kind is int:
        return str(value)
    if kind is bool:
        return "true" if value else "false"
    if value is None:
        return "null"
    if kind is float and math.isfinite(value):
        return repr(value)
    raise _NotPlain


def digest(value: Any) -> str:
    """xxh3_128 hex of the canonical JSON of `value`."""
    return xxhash.xxh3_128_hexdigest(canonical_json(value).encode())


def digest_bytes(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def _encode(value: Any, where: str) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return json.dumps({"$float": repr(value)}, separators=(",", ":"))
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_encode(v, f"{where}[{i}]") for i, v in enumerate(value)) + "]"
    if isinstance(value, dict):
        items = []
        for k in sorted(value):
            if not isinstance(k, str):
                raise HashingError(f"{where}: dict key {k!r} is not a string; cannot hash it canonically")
            items.append(json.dumps(k, ensure_ascii=False) + ":" + _encode(value[k], f"{where}.{k}"))
        return "{" + ",".join(items) + "}"
    if isinstance(value, datetime.datetime):  # YAML reads unquoted timestamps as these
        return json.dumps({"$datetime": value.isoformat()}, separators=(",", ":"))
    if isinstance(value, datetime.date):
        return json.dumps({"$date": value.isoformat()}, separators=(",", ":"))
    if hasattr(value, "model_dump"):  # pydantic models hash by their non-default fields
        return _encode(value.model_dump(exclude_defaults=True, mode="json"), where)
    if isinstance(value, PurePath):
        raise HashingError(f"{where}: a path ({value}) cannot be part of a key; hash the file's content instead")
    raise HashingError(f"{where}: value of type {type(value).__name__} has no canonical form; convert it to JSON data")


def drop_defaults(params: dict, defaults: dict) -> dict:
    """Params minus the entries equal to their defaults: adding an option later keeps old keys."""
    return {k: v for k, v in params.items() if k not in defaults or canonical_json(defaults[k]) != canonical_json(v)}
