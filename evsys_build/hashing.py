"""Canonical JSON and xxh3_128 keys: hash a canonical form, never a name or a path."""

from __future__ import annotations

import datetime
import json
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
    return _encode(value, "$")


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
