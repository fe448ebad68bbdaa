"""Canonical hashing: type tags, order independence, no silent fallbacks, and pinned golden keys.

A golden key failing here means every user's cache is invalidated: change it only on purpose.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
from pydantic import BaseModel

from evsys_build.errors import HashingError
from evsys_build.graph import Node
from evsys_build.hashing import canonical_json, digest, digest_bytes, drop_defaults


def test_type_tags_keep_lookalike_values_apart():
    values = [1, 1.0, "1", True, [1], {"1": 1}, None, "null", 0, False]
    encoded = [canonical_json(v) for v in values]
    assert len(set(encoded)) == len(values), encoded
    assert len({digest(v) for v in values}) == len(values)


def test_nested_type_tags_change_the_digest():
    assert digest({"lr": 1}) != digest({"lr": 1.0})
    assert digest({"lr": 1}) != digest({"lr": "1"})
    assert digest({"flag": True}) != digest({"flag": 1})


def test_key_order_is_irrelevant_and_output_has_no_whitespace():
    a = {"b": [1, {"y": 2, "x": 1}], "a": "text with spaces"}
    b = {"a": "text with spaces", "b": [1, {"x": 1, "y": 2}]}
    assert canonical_json(a) == canonical_json(b) == '{"a":"text with spaces","b":[1,{"x":1,"y":2}]}'
    assert digest(a) == digest(b)


def test_list_order_matters():
    assert digest([1, 2]) != digest([2, 1])


def test_floats_by_repr():
    assert canonical_json(0.1) == "0.1"
    assert canonical_json(1e-4) == "0.0001"
    assert canonical_json(1.0e100) == "1e+100"
    assert canonical_json(float("nan")) != canonical_json(float("inf"))


def test_pydantic_models_hash_by_their_non_default_fields():
    class Cfg(BaseModel):
        lr: float = 1e-4
        steps: int = 10

    assert canonical_json(Cfg()) == "{}"
    assert canonical_json(Cfg(steps=20)) == '{"steps":20}'
    assert digest(Cfg(steps=10)) == digest(Cfg())


@pytest.mark.parametrize(
    "value, location",
    [
        ({"data": {"path": Path("/tmp/x.jsonl")}}, "$.data.path"),
        ({"files": [PurePosixPath("a"), "b"]}, "$.files[0]"),
        ({"blob": b"raw bytes"}, "$.blob"),
        ({"fn": object()}, "$.fn"),
        ({"cfg": {"set": {1, 2}}}, "$.cfg.set"),
        ({"nested": {1: "int key"}}, "$.nested"),
    ],
)
def test_unhashable_values_raise_naming_their_location(value, location):
    with pytest.raises(HashingError) as info:
        digest(value)
    assert info.value.message.startswith(location + ":"), info.value.message


def test_paths_are_refused_with_the_fix():
    with pytest.raises(HashingError, match="hash the file's content instead"):
        canonical_json({"p": Path("data/train.jsonl")})


def test_drop_defaults_keeps_only_changed_params():
    defaults = {"lr": 1e-4, "steps": 100, "schedule": "constant"}
    params = {"lr": 1e-4, "steps": 200, "schedule": "constant", "new_option": True}
    assert drop_defaults(params, defaults) == {"steps": 200, "new_option": True}
    # a value of another type than its default is not "equal to the default"
    assert drop_defaults({"steps": 100.0}, defaults) == {"steps": 100.0}


def test_adding_an_option_at_its_default_keeps_the_old_key():
    old_defaults = {"lr": 1e-4}
    new_defaults = {"lr": 1e-4, "warmup": 0}
    old = digest(drop_defaults({"lr": 3e-4}, old_defaults))
    new = digest(drop_defaults({"lr": 3e-4, "warmup": 0}, new_defaults))
    assert old == new


# -- golden keys: any change here is a cache-format change ---------------------------------


def test_golden_digest_of_a_value():
    assert canonical_json({"a": 1, "b": [1.5, "x", None]}) == '{"a":1,"b":[1.5,"x",null]}'
    assert digest({"a": 1, "b": [1.5, "x", None]}) == "717aaf018dd7805198f7672e72220b5e"


def test_golden_digest_of_bytes():
    assert digest_bytes(b"hello evsys\n") == "35f1e78d9aa2f4bf26c7261e6948428a"


def test_golden_node_keys():
    source = Node(rule="source", name="source", version="1", params={"kind": "jsonl", "content": ["00" * 16]})
    transform = Node(
        rule="transform",
        name="transform[0] jsonl_to_chat",
        version="1",
        params={"kind": "jsonl_to_chat", "params": {"user_template": "{query}"}},
        inputs=[("rows", source)],
    )
    assert source.id == source.key_for({}) == "ae85468b40f69b1a6f81c688821a19e4"  # no inputs: the recipe is the key
    assert transform.id == "10a32c27b557909ec52984d1c528a268"
    # the content key: the recipe and the digest of the input's output, not the input's key
    assert transform.key_for({"rows": "11" * 16}) == "83fdeed2ef0c9a25b98b67494e7d6c9a"
    assert transform.key_for({"rows": "22" * 16}) != transform.key_for({"rows": "11" * 16})


def test_node_ids_and_keys_are_the_digests_of_their_documented_material():
    """id and key are composed from the params' canonical JSON made once per node: they must be
    exactly the digest of the recipe with its inputs (or producer), whatever the strings hold."""
    params = {"z": [1, 2.5, None, True], "é\"}{,": {"nested": "\u2028 ,\"params\":"}, "a": ""}
    source = Node(rule='so"urce', name="s", version="1\\", params=params)
    train = Node(rule="train", name="train", version="3", params={"lr": 1e-4}, inputs=[("tokens", source), ("b", source)])
    train.key = "ab" * 16
    checkpoint = Node(rule="checkpoint", name="checkpoint@4", version="1", params={"step": 4}, produced_by=train)
    assert source.id == digest({**source.recipe, "inputs": []}) == source.key_for({})
    assert train.id == digest({**train.recipe, "inputs": [["tokens", source.id], ["b", source.id]]})
    digests = {"tokens": "11" * 16, "b": "22" * 16}
    assert train.key_for(digests) == digest(train.key_material(digests))
    assert train.key_material(digests)["inputs"] == [["tokens", "11" * 16], ["b", "22" * 16]]
    assert checkpoint.key_for({}) == digest({**checkpoint.recipe, "producer": "ab" * 16})
    assert checkpoint.key_for({}) == digest(checkpoint.key_material({}))


def test_node_key_ignores_name_arm_and_payload_but_not_inputs():
    a = Node(rule="source", name="source", version="1", params={"x": 1})
    b = Node(rule="source", name="renamed", version="1", params={"x": 1}, arm="r8", payload={"path": Path("/anywhere")})
    assert a.key_for({}) == b.key_for({}) and a.id == b.id
    child_a = Node(rule="transform", name="t", version="1", params={}, inputs=[("rows", a)])
    c = Node(rule="source", name="source", version="1", params={"x": 2})
    child_c = Node(rule="transform", name="t", version="1", params={}, inputs=[("rows", c)])
    assert child_a.id != child_c.id  # a different input node...
    assert child_a.key_for({"rows": "ab" * 16}) == child_c.key_for({"rows": "ab" * 16})  # ...with the same output: same key
    assert Node(rule="source", name="s", version="2", params={"x": 1}).key_for({}) != a.key_for({})


# Regenerated deliberately whenever the source or transform rule's code (or what it runs) changes:
# code identities come from the source, so these pin the code as well as the key scheme.
GOLDEN_SOURCE_KEY = "47a604bf222cd826d2793c6d0fb8169e"
GOLDEN_TRANSFORM_KEY = "6dfc4f6f273af2c1dc595f250e99d807"


def test_golden_keys_of_compiled_data_nodes(tmp_path, tiny_model_dir):
    """The real rules' source and jsonl_to_chat keys for fixed bytes and config, as `plan --json` shows them."""
    from evsys_testkit import plan_json

    (tmp_path / "train.jsonl").write_text('{"query": "save a contact from this email", "tool_slug": "OUTLOOK_CREATE_CONTACT"}\n')
    (tmp_path / "config.yaml").write_text(
        "data: {source_kind: jsonl, path: train.jsonl}\n"
        "transforms:\n"
        "  - kind: jsonl_to_chat\n"
        "    params: {system_prompt: S, user_template: 'Query: {query}', assistant_template: '<answer>{tool_slug}</answer>'}\n"
        "model: {name: evsys/tiny-qwen3}\n"
    )
    nodes = plan_json(tmp_path)
    assert nodes["source"]["key"] == GOLDEN_SOURCE_KEY
    assert nodes["transform[0] jsonl_to_chat"]["key"] is None  # needs the source's output
    build_source(tmp_path)
    assert plan_json(tmp_path)["transform[0] jsonl_to_chat"]["key"] == GOLDEN_TRANSFORM_KEY


def build_source(project) -> None:
    """Build just the source node, in process (its output is what the transform's key is made of)."""
    import os

    from evsys_build.executor import Executor
    from evsys_build.graph import Graph
    from evsys_build.store import Store
    from evsys_rules.frontend import open_project

    here = os.getcwd()
    os.chdir(project)
    try:
        store = Store(project / "cache")
        graph = Graph()
        graph.add(next(n for n in open_project(project / "config.yaml", store).graph.nodes() if n.rule == "source"))
        Executor(store).run(graph)
    finally:
        os.chdir(here)


def test_the_plain_json_fast_path_writes_what_the_checked_encoder_writes():
    """canonical_json takes a fast path for plain JSON data and the checked encoder for the rest;
    both must write the same text (a difference would change keys) and fail the same way."""
    import random

    from evsys_build import hashing

    rnd = random.Random(0)
    leaves = [None, True, False, 0, 1, -5, 2**63, 10**30, 1.5, -0.0, 1e-300, 0.1 + 0.2, float("nan"), float("inf"),
              "", "plain", 'q"uote\\back\nline\u2603\x00é\U0001f600', "x" * 40]

    def value(depth=0):
        r = rnd.random()
        if depth > 3 or r < 0.4:
            return rnd.choice(leaves)
        if r < 0.65:
            return [value(depth + 1) for _ in range(rnd.randint(0, 4))]
        if r < 0.75:
            return tuple(value(depth + 1) for _ in range(rnd.randint(0, 3)))
        if r < 0.78:
            return {1: "not a string key"}
        return {rnd.choice(["a", "b", "é", "\u2603", 'z"q', "1"]) + str(rnd.randint(0, 9)): value(depth + 1) for _ in range(rnd.randint(0, 4))}

    def outcome(encode, v):
        try:
            return encode(v)
        except HashingError as exc:
            return ("error", str(exc))

    for _ in range(20000):
        v = value()
        assert outcome(hashing.canonical_json, v) == outcome(lambda x: hashing._encode(x, "$"), v), v
