"""A number field never takes true/false: pydantic would read `max_steps: true` as 1."""

from __future__ import annotations

import typing

from pydantic import BaseModel, ValidationInfo


def refuse_booleans_for_numbers(model: type[BaseModel], value, info: ValidationInfo):
    """A `field_validator("*", mode="before")` body: a bool given where the field asks for a
    number (int or float, maybe Optional) is an error; anything else passes through."""
    if isinstance(value, bool) and _numeric(model.model_fields[info.field_name].annotation):
        raise ValueError(f"{str(value).lower()} is not a number; give a number")
    return value


def _numeric(annotation) -> bool:
    options = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Union else (annotation,)
    return bool not in options and any(o in (int, float) for o in options)
