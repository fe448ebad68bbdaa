"""Each arm's config is its own copy of the base: what one arm sets (or what later code does to
one arm's config) never shows in another arm or in the base."""

from __future__ import annotations

import datetime
from pathlib import Path

from evsys_rules.config import arms
from evsys_rules.config.schema import ExperimentConfig

BASE = {
    "experiment": {"name": "e"},
    "data": {"path": "d.jsonl", "when": datetime.date(2026, 11, 28)},
    "transforms": [{"kind": "jsonl_to_chat", "params": {"system_prompt": "s", "tags": ["a", "b"]}}],
    "algorithm": {"kind": "sft", "params": {"learning_rate": 1e-4, "lora_rank": 8}},
}


def expand(sweep: dict) -> list[tuple[str, dict, dict, tuple]]:
    raw = {**BASE, "sweep": sweep}
    return arms.arm_raws(raw, ExperimentConfig.model_construct(arms=None, sweep=sweep), Path("config.yaml"), {})


def test_sweep_arms_are_independent_deep_copies():
    expanded = expand({"algorithm.params.learning_rate": [1e-4, 2e-4], "transforms.0.params.system_prompt": ["x", "y"]})
    configs = [raw for _, raw, _, _ in expanded]
    assert [(c["algorithm"]["params"]["learning_rate"], c["transforms"][0]["params"]["system_prompt"]) for c in configs] == [(1e-4, "x"), (1e-4, "y"), (2e-4, "x"), (2e-4, "y")]
    assert BASE["algorithm"]["params"]["learning_rate"] == 1e-4 and BASE["transforms"][0]["params"]["system_prompt"] == "s"
    configs[0]["transforms"][0]["params"]["tags"].append("c")  # later code changing one arm's config
    configs[0]["data"]["path"] = "other.jsonl"
    assert all(c["transforms"][0]["params"]["tags"] == ["a", "b"] for c in configs[1:])
    assert all(c["data"]["path"] == "d.jsonl" for c in configs[1:])
    assert BASE["transforms"][0]["params"]["tags"] == ["a", "b"] and BASE["data"]["path"] == "d.jsonl"
    assert all(c["data"]["when"] == datetime.date(2026, 11, 28) for c in configs)


def test_a_sweep_value_listed_twice_is_refused_not_made_into_two_arms():
    """`[1.0e-3, 0.001]` is one value written twice: two arms of it would train the same thing
    under names `learning_rate=0.001` and `learning_rate=0.001-2`."""
    import pytest

    from evsys_build.errors import ConfigError

    with pytest.raises(ConfigError, match=r"sweep.algorithm.params.learning_rate: 0.001 is listed twice \(each value makes an arm; drop one\)"):
        expand({"algorithm.params.learning_rate": [1.0e-3, 0.001]})
    assert len(expand({"algorithm.params.lora_rank": [1, True]})) == 2  # a bool is not the number 1
    assert len(expand({"transforms.0.params.system_prompt": ["1", 1]})) == 2
    assert len(expand({"transforms.0.params.tags": [[1], [True]]})) == 2  # inside a list too
    with pytest.raises(ConfigError, match="is listed twice"):
        expand({"transforms.0.params.tags": [["a", "b"], ["a", "b"]]})


def test_sweep_arms_whose_names_the_store_writes_alike_get_distinct_names():
    """`x,y` and `x+y` are both kept in arm names, but the store writes both as `x_y`: the second
    arm is named `...-2`, so the two never share a ref (plan would diff one against the other)."""
    from evsys_build.store import safe_name

    names = [name for name, _, _, _ in expand({"transforms.0.params.system_prompt": ["x,y", "x+y", "x y"]})]
    assert names[0] == "system_prompt=x,y" and len({safe_name(n) for n in names}) == 3, names


def test_short_arm_labels_never_read_as_another_arms_name():
    """Long arm names are shown as a1, a2, ...; an arm itself named `a2` makes the labels another
    prefix, so `[a2]` in a build line and `--arm a2` mean that arm only."""
    from evsys_build.plans import ArmLabels, resolve_arm

    long = "tokens_six_long_name"
    assert ArmLabels(["a2", long]).label([long]) == "[arm2]"
    assert ArmLabels(["x", long]).label([long]) == "[a2]"
    assert resolve_arm(["a2", long], "a2") == "a2" and resolve_arm(["a2", long], "arm2") == long
