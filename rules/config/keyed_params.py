"""What of a validated params model a node's key holds.

`model_dump(exclude_defaults=True)`, so a knob left at its default (or a new knob a later release
adds) leaves keys alone, plus two things that call would lose though a run depends on them:

- a field a `default_factory` filled, unless the factory is a plain container or scalar type:
  pydantic decides "is default" by calling the factory again, so a factory that reads the clock
  or a file always looks default and its value would never be keyed (a plugin's such factory
  also turns the no-op fast path off: no stat tells when its value changes);
- a field marked `Field(exclude=True)`, set away from its default: left out of every dump, but
  the plugin still reads it;
- the order of a mapping's entries (`mapping_orders`): canonical JSON sorts keys, but code may
  apply `{email: mail, mail: post}` in order, and YAML and Python keep that order.
"""

from __future__ import annotations

from typing import Any

from evsys_build.watch import unwatchable

PURE_FACTORIES = frozenset({list, dict, set, tuple, frozenset, str, int, float, bool, bytes})


def keyed_dump(model, mode: str = "python") -> dict:
    """The model's fields away from their defaults, and every field an impure default_factory filled."""
    from pydantic import BaseModel

    _refuse_impure_factories(model)
    out = model.model_dump(exclude_defaults=True, mode=mode)
    full = None
    for name, field in type(model).model_fields.items():
        value = getattr(model, name, None)
        if name not in out and field.exclude:  # `Field(exclude=True)` leaves dumps, not the plugin's reach
            if value != field.get_default(call_default_factory=False) or field.default_factory is not None:
                from pydantic_core import to_jsonable_python

                out[name] = to_jsonable_python(value)
        elif name not in out:
            if field.default_factory is not None and field.default_factory not in PURE_FACTORIES:
                full = full if full is not None else model.model_dump(mode=mode)
                out[name] = full[name]
        elif isinstance(value, BaseModel):
            out[name] = keyed_dump(value, mode)
    return out


def unvalidated_params(given: dict, model) -> dict:
    """The params the user gave that `model`'s class dropped (pydantic's default `extra="ignore"`)
    though the plugin was handed them too: they are keyed, since its code may read them."""
    names = set()
    for name, field in type(model).model_fields.items():
        names |= {name, *(a for a in (field.alias, field.validation_alias) if isinstance(a, str))}
    return {k: v for k, v in given.items() if k not in names}


def _refuse_impure_factories(model) -> None:
    """Turn the no-op fast path off when a plugin's own default_factory filled a field (here or in
    a nested model): it may read a file or the clock, and no stat identity says when that changes."""
    from pydantic import BaseModel

    for name, field in type(model).model_fields.items():
        factory = field.default_factory
        value = getattr(model, name, None)
        nested = isinstance(factory, type) and issubclass(factory, BaseModel)
        if factory is not None and not nested and factory not in PURE_FACTORIES and name not in model.model_fields_set and not _is_evsys(factory):
            unwatchable(f"{type(model).__qualname__}.{name} is filled by a default_factory")
        if isinstance(value, BaseModel):
            _refuse_impure_factories(value)


def _is_evsys(fn) -> bool:
    return (getattr(fn, "__module__", "") or "").split(".", 1)[0] in ("evsys_rules", "evsys_build", "evsys_sdk")


def mapping_orders(value: Any, path: str = "") -> dict[str, list[str]]:
    """{path: its keys in order} of every mapping inside `value` (a model, dict, list or tuple)
    whose order is not sorted order; a model's own field order is its code's, so not listed."""
    from pydantic import BaseModel

    found: dict[str, list[str]] = {}
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            found.update(mapping_orders(getattr(value, name, None), f"{path}.{name}" if path else name))
    elif isinstance(value, dict):
        keys = list(value)
        if all(isinstance(k, str) for k in keys) and keys != sorted(keys):
            found[path or "."] = keys
        for k, v in value.items():
            found.update(mapping_orders(v, f"{path}.{k}" if path else str(k)))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found.update(mapping_orders(item, f"{path}[{i}]"))
    return found


def with_mapping_orders(params: dict, value: Any) -> dict:
    """`params`, plus `mapping_order` when `value` holds a mapping in other than sorted order
    (absent otherwise, so keys of configs without one do not change)."""
    orders = mapping_orders(value)
    return {**params, "mapping_order": orders} if orders else params
