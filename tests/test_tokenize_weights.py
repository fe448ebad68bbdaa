"""Loss weights from the real Qwen3 tokenizer and chat template (the tiny model's files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evsys_build.errors import ConfigError
from evsys_rules.data.chat_tokens import prompt_ids, tokenize_conversation
from evsys_testkit import runs

SYSTEM = "You select the single best tool for the user's query."
USER1 = "Query: edit a slack message I sent earlier\nReply with the tool slug inside <answer></answer>."
ANSWER1 = "<answer>SLACK_UPDATES_A_SLACK_MESSAGE</answer>"
USER2 = "Query: create a new event on my calendar\nReply with the tool slug inside <answer></answer>."
ANSWER2 = "<answer>GOOGLECALENDAR_CREATE_EVENT</answer>"

ONE_TURN = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": USER1},
    {"role": "assistant", "content": ANSWER1},
]
TWO_TURNS = ONE_TURN + [{"role": "user", "content": USER2}, {"role": "assistant", "content": ANSWER2}]


def tokenize(tok, messages, supervise="all_assistant", max_length=2048, truncation="right", where="row 0"):
    return tokenize_conversation(tok, messages, supervise, max_length, truncation, where)


def test_trained_tokens_are_exactly_the_answer_and_end_of_turn(tok):
    ids, weights = tokenize(tok, ONE_TURN)
    assert len(ids) == len(weights)
    assert set(weights) == {0.0, 1.0}
    trained = runs(ids, weights)
    assert [tok.decode(r) for r in trained] == [ANSWER1 + "<|im_end|>"]
    assert tok.decode(ids).startswith("<|im_start|>system\n" + SYSTEM)


def test_system_and_user_tokens_carry_no_weight(tok):
    ids, weights = tokenize(tok, ONE_TURN)
    untrained = "".join(tok.decode(r) for r in runs(ids, weights, trained=False))
    assert SYSTEM in untrained and USER1 in untrained
    assert "<|im_start|>assistant\n" in untrained  # the role header is scaffolding, not the answer
    assert ANSWER1 not in untrained
    first_trained = weights.index(1.0)
    assert tok.decode(ids[:first_trained]).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_all_assistant_trains_every_assistant_turn(tok):
    ids, weights = tokenize(tok, TWO_TURNS, "all_assistant")
    assert [tok.decode(r) for r in runs(ids, weights)] == [ANSWER1 + "<|im_end|>", ANSWER2 + "<|im_end|>"]


def test_last_assistant_trains_only_the_final_turn(tok):
    ids_all, _ = tokenize(tok, TWO_TURNS, "all_assistant")
    ids, weights = tokenize(tok, TWO_TURNS, "last_assistant")
    assert ids == ids_all  # same tokens, only the weights differ
    assert [tok.decode(r) for r in runs(ids, weights)] == [ANSWER2 + "<|im_end|>"]


def test_all_trains_every_token_but_the_first(tok):
    ids, weights = tokenize(tok, TWO_TURNS, "all")
    assert weights[0] == 0.0  # nothing predicts the first token
    assert all(w == 1.0 for w in weights[1:])


def test_prompt_ids_are_an_exact_prefix_of_the_training_ids(tok):
    ids, weights = tokenize(tok, ONE_TURN)
    prompt = prompt_ids(tok, ONE_TURN[:-1])
    assert ids[: len(prompt)] == prompt
    assert all(w == 0.0 for w in weights[: len(prompt)])
    assert tok.decode(ids[len(prompt) :]).startswith(ANSWER1 + "<|im_end|>")
    ids2, _ = tokenize(tok, TWO_TURNS)
    prompt2 = prompt_ids(tok, TWO_TURNS[:-1])
    assert ids2[: len(prompt2)] == prompt2


def test_right_truncation_keeps_the_head(tok):
    full, _ = tokenize(tok, ONE_TURN)
    ids, weights = tokenize(tok, ONE_TURN, max_length=len(full) - 2)
    assert ids == full[: len(full) - 2] and len(weights) == len(ids)
    assert any(weights)


def test_left_truncation_keeps_the_answer(tok):
    full, full_w = tokenize(tok, ONE_TURN)
    keep = int(sum(full_w)) + 4  # the answer, its end of turn, and a little of what precedes it
    ids, weights = tokenize(tok, ONE_TURN, max_length=keep, truncation="left")
    assert ids == full[-keep:]
    assert weights[0] == 0.0 and weights[1:] == full_w[-keep + 1 :]
    assert [tok.decode(r) for r in runs(ids, weights)] == [ANSWER1 + "<|im_end|>"]


def test_truncation_that_leaves_no_trained_tokens_names_the_row(tok):
    with pytest.raises(ConfigError) as info:
        tokenize(tok, ONE_TURN, max_length=16, where="tokenize: row 7")
    msg = info.value.message
    assert msg.startswith("tokenize: row 7: no trained tokens left after truncation to max_length=16")
    assert "raise algorithm.params.max_length" in msg


def test_a_conversation_without_an_assistant_turn_is_an_error(tok):
    with pytest.raises(ConfigError, match="row 3: conversation has no assistant turn"):
        tokenize(tok, ONE_TURN[:2], where="row 3")
    ids, weights = tokenize(tok, ONE_TURN[:2], "all")  # `all` trains on any text
    assert any(weights)


def test_unknown_role_is_an_error(tok):
    with pytest.raises(ConfigError, match=r"messages\[1\]\.role 'robot' is not system, user, assistant or tool"):
        tokenize(tok, [ONE_TURN[0], {"role": "robot", "content": "hi"}, ONE_TURN[2]])


def write_slug_project(folder: Path, rows: list[dict]) -> None:
    """train.jsonl of query/tool_slug rows and a config that renders them as chats, max_length 64."""
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "config.yaml").write_text(
        "data: {path: train.jsonl}\n"
        "transforms:\n"
        "  - kind: jsonl_to_chat\n"
        "    params: {system_prompt: S, user_template: 'Query: {query}', assistant_template: '<answer>{tool_slug}</answer>'}\n"
        "model: {name: evsys/tiny-qwen3}\n"
        "algorithm: {kind: sft, params: {max_length: 64, max_steps: 1}}\n"
    )


def test_the_tokenize_rule_names_the_row_that_truncation_empties(tmp_path, monkeypatch, tiny_model_dir):
    """Through the real rule: max_length too short for one long row fails on that row, not silently."""
    from evsys_build.executor import Executor
    from evsys_build.store import Store
    from evsys_testkit import data_graph

    rows = [{"query": f"short query {i}", "tool_slug": "T"} for i in range(6)]
    rows[3]["query"] = "a very long query " + "with many many words " * 40
    write_slug_project(tmp_path, rows)
    monkeypatch.chdir(tmp_path)
    store = Store(tmp_path / "cache")
    graph = data_graph(Path("config.yaml"), store)
    with pytest.raises(ConfigError, match=r"^train.jsonl:4: tokenize: no trained tokens left after truncation to max_length=64"):
        Executor(store).run(graph)
    tokenize_node = next(n for n in graph.nodes() if n.rule == "tokenize")
    assert not store.has_manifest(tokenize_node.key)  # nothing half-built is stored


def test_the_tokenize_rule_reports_what_max_length_cuts(tmp_path, monkeypatch, tiny_model_dir, tok):
    """A row max_length cuts still trains, so the build says what the cut dropped (and `show` keeps it)."""
    from evsys_build.executor import Executor
    from evsys_build.store import Store
    from evsys_rules.nodes.views import TokenDataset
    from evsys_testkit import data_graph

    rows = [{"query": f"short query {i}", "tool_slug": "T"} for i in range(6)]
    rows[2]["tool_slug"] = "LONG_" * 40
    write_slug_project(tmp_path, rows)
    long_row = [{"role": "system", "content": "S"}, {"role": "user", "content": "Query: short query 2"},
                {"role": "assistant", "content": f"<answer>{rows[2]['tool_slug']}</answer>"}]
    dropped = int(sum(tokenize(tok, long_row, max_length=4096)[1]) - sum(tokenize(tok, long_row, max_length=64)[1]))
    assert dropped > 0
    monkeypatch.chdir(tmp_path)
    store = Store(tmp_path / "cache")
    graph = data_graph(Path("config.yaml"), store)
    events = []
    Executor(store, on_event=events.append).run(graph)
    logs = [e.message for e in events if e.kind == "log" and e.node.rule == "tokenize"]
    assert logs == [f"1 of 6 rows cut to max_length 64 (right), dropping {dropped} trained tokens; "
                    "raise algorithm.params.max_length or drop long rows with a filter transform"]
    tokenize_node = next(n for n in graph.nodes() if n.rule == "tokenize")
    dataset = TokenDataset.of(store.read_manifest(tokenize_node.key))
    assert (dataset.num_truncated, dataset.num_trained_cut) == (1, dropped)
