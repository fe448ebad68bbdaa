"""Turn pydantic errors into one line: `file:line:col: dotted.path: what (fix)`."""

from __future__ import annotations

import difflib
import typing
from pathlib import Path

from pydantic import BaseModel, ValidationError

from evsys_build.errors import ConfigError

from .yaml_marks import Marks


def where(file: Path | str, marks: Marks, path: tuple, key: bool = False) -> str:
    """`file:line:col` of a path (its key when `key`), falling back to the nearest parent."""
    probe = path
    while True:
        mark = marks.get(probe + ("<key>",)) if key else marks.get(probe)
        mark = mark or marks.get(probe)
        if mark or not probe:
            break
        probe = probe[:-1]
    return f"{file}:{mark[0]}:{mark[1]}" if mark else str(file)


def dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def config_error(exc: ValidationError, model: type[BaseModel], file: Path | str, marks: Marks, prefix: tuple = ()) -> ConfigError:
    """The first validation error as a one-line ConfigError; a required field missing beside an
    unknown one (`modle:` for `model:`) is reported as the unknown one, the typo to fix."""
    errors = exc.errors()
    err = errors[0]
    if err["type"] == "missing":
        err = next((e for e in errors if e["type"] == "extra_forbidden" and e["loc"][:-1] == err["loc"][:-1]), err)
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    path = prefix + loc
    kind = err["type"]
    if kind == "extra_forbidden":
        known = _fields_at(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        fix = f"did you mean {close[0]}?" if close else f"known fields: {', '.join(known) or 'none'}"
        return ConfigError(f"{where(file, marks, path, key=True)}: {dotted(path)}: unknown field ({fix})")
    if kind == "missing":
        return ConfigError(f"{where(file, marks, path[:-1])}: {dotted(path)}: missing required field (add it)")
    value = err.get("input")
    shown = "" if isinstance(value, (dict, list)) else f" (got {value!r})"  # a block's check says itself what is wrong
    return ConfigError(f"{where(file, marks, path)}: {dotted(path)}: {message(err)}{shown}")


def message(err: dict) -> str:
    """Pydantic's message, without the "Value error, " it puts before a validator's own words."""
    if err["type"] == "value_error" and "error" in err.get("ctx", {}):
        return str(err["ctx"]["error"])
    return err["msg"]


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the pydantic model found at `loc` inside `model`."""
    current: typing.Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        cls = _model_in(current)
        if cls is None or part not in cls.model_fields:
            return []
        current = cls.model_fields[part].annotation
    cls = _model_in(current)
    return sorted(cls.model_fields) if cls else []


def _model_in(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found:
            return found
    return None
