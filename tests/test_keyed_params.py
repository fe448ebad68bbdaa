"""What of a params model a key holds: values set away from their defaults, and what
`model_dump(exclude_defaults=True)` would lose though the plugin reads it."""

from __future__ import annotations

import itertools

from pydantic import BaseModel, Field

from evsys_rules.config.keyed_params import keyed_dump, mapping_orders, with_mapping_orders

_ticks = itertools.count()


class Inner(BaseModel):
    serial: int = Field(default_factory=lambda: next(_ticks))  # a new value on every call, like the clock
    weights: dict[str, float] = {}


class Params(BaseModel):
    rate: float = 0.1
    hidden: str = Field("plain", exclude=True)
    stamp: int = Field(default_factory=lambda: next(_ticks))
    tags: list[str] = Field(default_factory=list)
    inner: Inner = Field(default_factory=Inner)
    steps: list[dict[str, str]] = []


def test_defaults_stay_out_but_factory_values_and_excluded_fields_are_keyed():
    plain = keyed_dump(Params(inner=Inner(serial=3)))
    assert "rate" not in plain and "tags" not in plain and "hidden" not in plain  # defaults (a list factory is one)
    assert isinstance(plain["stamp"], int)  # each instance stamps anew: the stamp is keyed
    assert keyed_dump(Params()) != keyed_dump(Params())
    assert keyed_dump(Params(hidden="other"))["hidden"] == "other"
    assert keyed_dump(Params(inner=Inner(serial=3, weights={"a": 1.0})))["inner"]["weights"] == {"a": 1.0}


def test_mapping_orders_are_found_wherever_a_mapping_sits():
    params = Params(inner=Inner(weights={"b": 1.0, "a": 2.0}), steps=[{"x": "1"}, {"z": "1", "y": "2"}])
    assert mapping_orders(params) == {"inner.weights": ["b", "a"], "steps[1]": ["z", "y"]}
    assert mapping_orders(Params(inner=Inner(weights={"a": 1.0, "b": 2.0}))) == {}  # sorted order: nothing to add
    assert with_mapping_orders({"rate": 1}, {"b": 1, "a": 2}) == {"rate": 1, "mapping_order": {".": ["b", "a"]}}
    assert with_mapping_orders({"rate": 1}, {"a": 1, "b": 2}) == {"rate": 1}


def test_a_plugins_impure_factory_turns_the_fast_path_off_and_evsys_ones_do_not():
    """A factory that reads a file or the clock is keyed by value, but no stat identity says when
    that value changes: a compile that met one cannot be trusted by the no-op fast path."""
    from evsys_build.watch import watching

    with watching() as watcher:
        keyed_dump(Params())
    assert watcher.broken and "default_factory" in watcher.broken
    from evsys_rules.config.schema import BenchmarkConfig  # its `metrics` factory is evsys's own

    with watching() as watcher:
        keyed_dump(BenchmarkConfig(name="val", path="val"))
    assert watcher.broken is None


class Lenient(BaseModel):  # pydantic's default extra="ignore": unknown params are dropped, not refused
    field: str = "query"
    source: str = Field("a", alias="from")


def test_params_a_lenient_config_drops_are_still_keyed():
    """The plugin is handed every param, its Config keeps only those it names: one it reads by hand
    (`kw.get("upper")`) must still change the key."""
    from evsys_rules.config.keyed_params import unvalidated_params

    given = {"field": "text", "from": "b", "upper": True}
    assert unvalidated_params(given, Lenient.model_validate(given)) == {"upper": True}
    assert unvalidated_params({"field": "text"}, Lenient(field="text")) == {}


class Nested(BaseModel):
    inner: Inner = Field(default_factory=Inner)


class Pure(BaseModel):
    tags: list[str] = Field(default_factory=list)
    sub: Lenient = Field(default_factory=Lenient)


def test_a_nested_models_impure_factory_is_found_and_model_factories_are_pure():
    from evsys_build.watch import watching

    with watching() as watcher:
        keyed_dump(Nested())
    assert watcher.broken and "Inner.serial" in watcher.broken
    with watching() as watcher:
        keyed_dump(Pure())
    assert watcher.broken is None
