"""Exact loss masks with the real Qwen3 tokenizer and chat template, for every conversation shape.

Each test checks the decoded text of the trained tokens (so a wrong mask fails) and that the
ids are the tokenization of the whole rendered conversation.
"""

from __future__ import annotations

import json
import random
import unicodedata

import pytest

from evsys_build.errors import ConfigError
from evsys_rules.data.chat_render import chat_renderer
from evsys_rules.data.chat_tokens import (
    prompt_ids,
    render,
    tokenize_conversation,
    tokenize_conversations,
)
from evsys_rules.data.transforms import JsonlToChat, ShareGptToMessages
from evsys_testkit import runs

SYSTEM = "You select the single best tool for the user's query."
THINK_EMPTY = "<|im_start|>assistant\n<think>\n\n</think>\n\n"


def convo(*turns, system=SYSTEM):
    """Messages from alternating user/assistant texts, after an optional system prompt."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    roles = ("user", "assistant")
    return messages + [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]


def tokenize(tok, conversation, supervise="all_assistant", max_length=4096, truncation="right", where="row 0"):
    return tokenize_conversation(tok, conversation, supervise, max_length, truncation, where)


def whole_text_ids(tok, conversation) -> list[int]:
    """What transformers itself gives: render with the template, tokenize the whole text once."""
    messages = conversation["messages"] if isinstance(conversation, dict) else conversation
    tools = conversation.get("tools") if isinstance(conversation, dict) else None
    messages = [dict(m, content=m.get("content") or "") for m in messages]  # OpenAI's content: null beside tool calls
    text = tok.apply_chat_template(messages, tools=tools, tokenize=False, enable_thinking=False)
    return tok(text, add_special_tokens=False)["input_ids"]


def trained_texts(tok, conversation, supervise="all_assistant", **kw) -> list[str]:
    """The decoded trained runs, after checking the ids are the whole-text tokenization."""
    ids, weights = tokenize(tok, conversation, supervise, **kw)
    assert ids == whole_text_ids(tok, conversation)
    assert len(weights) == len(ids) and weights[0] == 0.0 and set(weights) <= {0.0, 1.0}
    return [tok.decode(r) for r in runs(ids, weights)]


# -- short and common replies: text search used to find them inside the template -----------------


@pytest.mark.parametrize("reply", ["d", "a", "e", "user", "assistant", "system", "im_end", "think", "<", ">"])
def test_a_reply_that_occurs_in_the_template_trains_only_itself(tok, reply):
    conversation = convo(f"say {reply} or a d", reply)
    assert trained_texts(tok, conversation) == [reply + "<|im_end|>"]
    ids, weights = tokenize(tok, conversation)
    first = weights.index(1.0)
    assert tok.decode(ids[:first]).endswith(THINK_EMPTY)  # trained from the reply on, never the header


def test_a_reply_that_also_occurs_in_the_user_turn_and_system_prompt(tok):
    reply = "the single best tool"
    conversation = convo("Which is the single best tool? I said: the single best tool", reply)
    ids, weights = tokenize(tok, conversation)
    assert [tok.decode(r) for r in runs(ids, weights)] == [reply + "<|im_end|>"]
    untrained = "".join(tok.decode(r) for r in runs(ids, weights, trained=False))
    assert untrained.count(reply) == 3  # the system prompt's copy and the user's two stay untrained


def test_a_newline_reply_in_the_final_turn_is_what_the_template_keeps(tok):
    # Qwen3's template strips leading newlines from the final reply: "\n" renders as nothing.
    assert trained_texts(tok, convo("q", "\n")) == ["<|im_end|>"]


def test_a_token_straddling_header_and_reply_is_trained(tok):
    # An earlier reply "\nHi" renders as "assistant\n\nHi"; "\n\n" is one token holding the header's
    # newline and the reply's: it is trained (any trained character trains its token).
    conversation = convo("q1", "\nHi", "q2", "ok")
    ids, weights = tokenize(tok, conversation)
    assert [tok.decode(r) for r in runs(ids, weights)] == ["\n\nHi<|im_end|>", "ok<|im_end|>"]
    first = weights.index(1.0)
    assert tok.decode(ids[first - 1 : first + 1]) == "assistant\n\n"
    assert ids == whole_text_ids(tok, conversation)


def test_a_newline_only_reply_in_an_earlier_turn_trains_the_straddling_token(tok):
    assert trained_texts(tok, convo("q1", "\n", "q2", "ok")) == ["\n\n<|im_end|>", "ok<|im_end|>"]


# -- multi-turn ------------------------------------------------------------------------------------


def test_all_assistant_and_last_assistant_on_three_turns(tok):
    conversation = convo("one?", "1", "two?", "2", "three?", "3")
    assert trained_texts(tok, conversation, "all_assistant") == ["1<|im_end|>", "2<|im_end|>", "3<|im_end|>"]
    assert trained_texts(tok, conversation, "last_assistant") == ["3<|im_end|>"]
    ids_all, _ = tokenize(tok, conversation, "all_assistant")
    ids_last, _ = tokenize(tok, conversation, "last_assistant")
    assert ids_all == ids_last


def test_an_assistant_turn_with_weight_0_is_not_trained(tok):
    """OpenAI's fine-tuning format marks turns not to learn with `weight: 0`; `weight: 1` trains."""
    conversation = convo("one?", "1", "two?", "2", "three?", "3")
    conversation[2]["weight"] = 0  # "1"
    conversation[6]["weight"] = 1.0  # "3"
    conversation[1]["weight"] = 0  # a user turn: never trained anyway
    assert trained_texts(tok, conversation, "all_assistant") == ["2<|im_end|>", "3<|im_end|>"]
    conversation[6]["weight"] = False  # the last turn too: last_assistant trains the last one still weighted
    assert trained_texts(tok, conversation, "all_assistant") == ["2<|im_end|>"]
    assert trained_texts(tok, conversation, "last_assistant") == ["2<|im_end|>"]
    conversation[4]["weight"] = 0
    with pytest.raises(ConfigError, match=r"^row 0: conversation has no assistant turn to train on \(supervise: all_assistant\) \(every assistant turn has weight 0\)"):
        tokenize(tok, conversation)


def test_a_null_weight_is_an_absent_one(tok):
    """Parquet and `datasets` give every message the columns any message has: a conversation where
    one turn says `weight: 0` reads back with `weight: None` on all the others."""
    plain = convo("one?", "1", "two?", "2")
    nulls = [dict(m, weight=None) for m in plain]
    for supervise in ("all_assistant", "last_assistant", "all"):
        assert tokenize(tok, nulls, supervise) == tokenize(tok, plain, supervise)
    nulls[2]["weight"] = 0
    assert trained_texts(tok, nulls, "all_assistant") == ["2<|im_end|>"]


@pytest.mark.parametrize(
    "at, weight, supervise, expected",
    [
        (2, 0.5, "all_assistant", "row 0: messages[2].weight: 0.5 must be 0 (do not train this turn) or 1 (train it)"),
        (2, "0", "all_assistant", "row 0: messages[2].weight: '0' must be 0"),
        (1, 1, "all_assistant", "row 0: messages[1].weight: 1 asks to train this user message, but supervise: all_assistant trains assistant turns only"),
        (1, 0, "all", "row 0: messages[1].weight is 0, which supervise: all cannot honour"),
        (2, 0, "all", "row 0: messages[2].weight is 0, which supervise: all cannot honour"),
    ],
)
def test_a_weight_evsys_cannot_honour_is_refused(tok, at, weight, supervise, expected):
    conversation = convo("one?", "1", "two?", "2")
    conversation[at]["weight"] = weight
    with pytest.raises(ConfigError) as info:
        tokenize(tok, conversation, supervise)
    assert info.value.message.startswith(expected), info.value.message


def test_supervise_all_trains_every_token_but_the_first(tok):
    ids, weights = tokenize(tok, convo("q", "a"), "all")
    assert ids == whole_text_ids(tok, convo("q", "a"))
    assert weights[0] == 0.0 and all(w == 1.0 for w in weights[1:])


def test_prompt_ids_are_the_exact_prefix_before_the_final_reply(tok):
    conversation = convo("one?", "1", "two?", "the answer")
    ids, weights = tokenize(tok, conversation)
    prompt = prompt_ids(tok, conversation[:-1])
    assert ids[: len(prompt)] == prompt
    assert tok.decode(ids[len(prompt) :]) == "the answer<|im_end|>\n"
    assert all(w == 0.0 for w in weights[len(prompt) - 2 : len(prompt)])


def test_a_reasoning_reply_is_trained_after_the_prompt_thinking_evals_render(tok):
    """A final reply with `reasoning_content` is trained from right after the assistant header;
    a benchmark with chat_template_kwargs {enable_thinking: true} prompts exactly there, so the
    model thinks at eval as it learned to, where the default prompt closes an empty think block."""
    conversation = convo("2+2?") + [{"role": "assistant", "content": "4", "reasoning_content": "add them"}]
    ids, weights = tokenize(tok, conversation)
    thinking = prompt_ids(tok, convo("2+2?"), template_kwargs={"enable_thinking": True})
    assert ids[: len(thinking)] == thinking and tok.decode(thinking).endswith("<|im_start|>assistant\n")
    assert tok.decode([t for t, w in zip(ids, weights) if w]) == "<think>\nadd them\n</think>\n\n4<|im_end|>"
    assert tok.decode(prompt_ids(tok, convo("2+2?"))).endswith("<think>\n\n</think>\n\n")  # the default: no thinking


@pytest.mark.parametrize("system", ['Answer as JSON: {"tool": "<slug>"}; never {{escape}} or {query}.', ""], ids=["braces", "empty"])
def test_a_system_prompt_is_byte_identical_in_training_and_eval(tok, system):
    """Eval prompts are built as the eval node builds them (task_messages), from the system prompt
    training used: braces stay verbatim, and "" is an empty system turn in both."""
    from evsys_rules.evals.benchmarks import Task
    from evsys_rules.nodes.eval import task_messages

    transform = JsonlToChat(system_prompt=system, user_template="Query: {query}", assistant_template="<answer>{tool_slug}</answer>")
    [row] = transform([{"query": "send mail", "tool_slug": "GMAIL_SEND_EMAIL"}])
    assert row["messages"][0] == {"role": "system", "content": system}
    ids, _ = tokenize(tok, row)
    task = Task(task_id="t", instruction="Query: send mail", verifier={"kind": "exact"})
    eval_prompt = prompt_ids(tok, task_messages(task, system))
    assert ids[: len(eval_prompt)] == eval_prompt
    assert tok.decode(ids[len(eval_prompt):]) == "<answer>GMAIL_SEND_EMAIL</answer><|im_end|>\n"
    assert tok.decode(eval_prompt).startswith("<|im_start|>system\n" + system + "<|im_end|>")


# -- tool calls ------------------------------------------------------------------------------------

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TOOL_CONVERSATION = [
    {"role": "system", "content": "You can check the weather."},
    {"role": "user", "content": "Weather in Paris and the time?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"type": "function", "function": {"name": "get_time", "arguments": '{"tz": "CET"}'}},
        ],
    },
    {"role": "tool", "content": "18C"},
    {"role": "tool", "content": "12:00"},
    {"role": "assistant", "content": "It is 18C at 12:00."},
]


def test_tool_calls_and_the_final_answer_are_trained_tool_results_are_not(tok):
    row = {"messages": TOOL_CONVERSATION, "tools": TOOLS}
    texts = trained_texts(tok, row)
    calls = CALL_TEXT + '\n<tool_call>\n{"name": "get_time", "arguments": {"tz": "CET"}}\n</tool_call><|im_end|>'
    assert texts == [calls, "It is 18C at 12:00.<|im_end|>"]
    ids, weights = tokenize(tok, row)
    untrained = "".join(tok.decode(r) for r in runs(ids, weights, trained=False))
    # consecutive tool results share one user turn
    assert "<|im_start|>user\n<tool_response>\n18C\n</tool_response>\n<tool_response>\n12:00\n</tool_response><|im_end|>" in untrained
    assert '"name": "get_weather", "description": "Weather"' in untrained  # the tools preamble is prompt
    assert trained_texts(tok, row, "last_assistant") == ["It is 18C at 12:00.<|im_end|>"]


def test_a_tool_call_with_text_before_it(tok):
    messages = TOOL_CONVERSATION[:2] + [
        {"role": "assistant", "content": "Let me check.", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "18C"},
        {"role": "assistant", "content": "18C."},
    ]
    assert trained_texts(tok, messages) == ["Let me check.\n" + CALL_TEXT + "<|im_end|>", "18C.<|im_end|>"]


def test_a_sharegpt_row_trains_its_gpt_turns(tok):
    [row] = ShareGptToMessages()(
        [{"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}, {"from": "human", "value": "bye"}, {"from": "gpt", "value": "bye"}]}]
    )
    assert trained_texts(tok, row) == ["hello<|im_end|>", "bye<|im_end|>"]
    [row] = ShareGptToMessages()(  # a turn's `weight` (axolotl's ShareGPT key) is carried over
        [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello", "weight": 0}, {"from": "human", "value": "bye"}, {"from": "gpt", "value": "bye"}]}]
    )
    assert trained_texts(tok, row) == ["bye<|im_end|>"]


def test_a_sharegpt_function_call_row(tok):
    [row] = ShareGptToMessages()(
        [
            {
                "conversations": [
                    {"from": "human", "value": "Weather in Paris?"},
                    {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
                    {"from": "observation", "value": "18C"},
                    {"from": "gpt", "value": "18C."},
                ],
                "tools": json.dumps([TOOLS[0]["function"]]),
            }
        ]
    )
    assert row["tools"] == TOOLS
    assert trained_texts(tok, row) == [CALL_TEXT + "<|im_end|>", "18C.<|im_end|>"]


# -- think blocks ----------------------------------------------------------------------------------


def test_a_final_reply_with_its_own_think_block_trains_the_block(tok):
    reply = "<think>\nThe user wants mail.\n</think>\n\n<answer>GMAIL_SEND_EMAIL</answer>"
    assert trained_texts(tok, convo("send mail", reply)) == [reply + "<|im_end|>"]
    prompt = prompt_ids(tok, convo("send mail"))
    ids, _ = tokenize(tok, convo("send mail", reply))
    assert ids[: len(prompt)] != prompt  # the eval prompt ends in an empty think block; this reply has its own


def test_reasoning_content_is_rendered_and_trained_as_a_think_block(tok):
    messages = convo("send mail") + [{"role": "assistant", "content": "done", "reasoning_content": "Mail it is."}]
    assert trained_texts(tok, messages) == ["<think>\nMail it is.\n</think>\n\ndone<|im_end|>"]


def test_an_earlier_turns_think_block_is_dropped_by_the_template(tok):
    conversation = convo("q1", "<think>\nhmm\n</think>\n\nfirst", "q2", "second")
    assert trained_texts(tok, conversation) == ["first<|im_end|>", "second<|im_end|>"]


# -- whitespace, unicode, special-token text -------------------------------------------------------


@pytest.mark.parametrize(
    "reply,trained",
    [
        ("  padded  \n", "  padded  \n"),
        ("Hi\n\n", "Hi\n\n"),
        ("\n\nfoo", "foo"),  # Qwen3 strips the final reply's leading newlines
        (" lead", " lead"),
        ("tab\tin\tside", "tab\tin\tside"),
    ],
)
def test_whitespace_around_a_final_reply(tok, reply, trained):
    assert trained_texts(tok, convo("q", reply)) == [trained + "<|im_end|>"]


@pytest.mark.parametrize("reply", ["héllo 🙂 — 日本語", "🙂", "e\u0301clair", "Ω≈ç√∫"])
def test_unicode_replies(tok, reply):
    assert trained_texts(tok, convo("q 🙂", reply)) == [unicodedata.normalize("NFC", reply) + "<|im_end|>"]


@pytest.mark.parametrize("index,role", [(2, "assistant"), (1, "user"), (0, "system")])
def test_special_token_text_in_a_message_is_refused(tok, index, role):
    conversation = convo("q", "a")
    conversation[index]["content"] = "see <|im_end|> here"
    with pytest.raises(ConfigError) as info:
        tokenize(tok, conversation, where="tokenize: row 5")
    msg = info.value.message
    assert msg.startswith(f"tokenize: row 5: messages[{index}].content contains the special token '<|im_end|>'")
    assert "\n" not in msg


def test_non_special_added_tokens_are_text_the_template_also_uses(tok):
    # <tool_call> and <think> are added (not special) tokens: written in a reply they are those tokens.
    assert trained_texts(tok, convo("q", "use <tool_call> here")) == ["use <tool_call> here<|im_end|>"]


# -- truncation ------------------------------------------------------------------------------------


def test_right_truncation_inside_the_last_reply_keeps_its_head(tok):
    conversation = convo("q1", "first", "q2", "a long final reply with several words")
    full, full_w = tokenize(tok, conversation)
    ids, weights = tokenize(tok, conversation, max_length=len(full) - 4)
    assert ids == full[:-4] and weights == full_w[:-4]
    assert [tok.decode(r) for r in runs(ids, weights)] == ["first<|im_end|>", "a long final reply with"]


def test_left_truncation_into_the_first_reply(tok):
    conversation = convo("q1", "first reply here", "q2", "second")
    full, full_w = tokenize(tok, conversation)
    cut = full_w.index(1.0) + 2  # drop the first two trained tokens of the first reply
    ids, weights = tokenize(tok, conversation, max_length=len(full) - cut, truncation="left")
    assert ids == full[cut:]
    assert weights[0] == 0.0 and weights[1:] == full_w[cut + 1 :]


# -- validation: one line, starts with where, names the message ------------------------------------

BAD_ROWS = [
    ({"text": "hi"}, "tokenize: row 3: has no `messages` list"),
    ({"messages": "hi"}, "tokenize: row 3: `messages` must be a list of {role, content} objects, got a string"),
    ({"messages": []}, "tokenize: row 3: `messages` is empty"),
    ([{"role": "user", "content": "q"}, "a"], "tokenize: row 3: messages[1] must be an object with role and content, got a string"),
    ([{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}], "tokenize: row 3: messages[1].role 'robot' is not system, user, assistant or tool"),
    ([{"role": "user", "content": 7}, {"role": "assistant", "content": "a"}], "tokenize: row 3: messages[0].content must be a string or a list of text parts, got a number"),
    ([{"role": "user", "content": {"text": "q"}}, {"role": "assistant", "content": "a"}], "tokenize: row 3: messages[0].content must be a string or a list of text parts, got an object"),
    ([{"role": "user"}, {"role": "assistant", "content": "a"}], "tokenize: row 3: messages[0].content is missing; a user message needs text"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, {"role": "assistant", "content": "a"}], "tokenize: row 3: messages[0].content[0] is a 'image_url' part"),
    ([{"role": "user", "content": ["q"]}, {"role": "assistant", "content": "a"}], "tokenize: row 3: messages[0].content[0] must be a text part"),
    ([{"role": "user", "content": "q"}], "tokenize: row 3: conversation has no assistant turn to train on (supervise: all_assistant)"),
    ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}], "tokenize: row 3: messages[0] is an assistant turn with no turn before it"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": "f()"}], "tokenize: row 3: messages[1].tool_calls must be a non-empty list"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": ["f"]}], "tokenize: row 3: messages[1].tool_calls[0] must be an object"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"function": {"arguments": {}}}]}], "tokenize: row 3: messages[1].tool_calls[0].function.name must be a non-empty string"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"type": "code", "function": {"name": "f"}}]}], "tokenize: row 3: messages[1].tool_calls[0].type 'code' is not 'function'"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": 3}}]}], "tokenize: row 3: messages[1].tool_calls[0].function.arguments must be an object"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{city: x}"}}]}], "tokenize: row 3: messages[1].tool_calls[0].function.arguments is a string but not JSON"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}], "tokenize: row 3: messages[1].tool_calls[0].function.arguments must be a JSON object"),
    ([{"role": "user", "content": "q", "tool_calls": [{"function": {"name": "f"}}]}, {"role": "assistant", "content": "a"}], "tokenize: row 3: messages[0].tool_calls: only assistant messages call tools"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning_content": 5}], "tokenize: row 3: messages[1].reasoning_content must be a string, got a number"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "tools": {"name": "f"}}, "tokenize: row 3: `tools` must be a list of function schemas"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "tools": [{"description": "x"}]}, "tokenize: row 3: tools[0] must be a function schema"),
    ("just text", "tokenize: row 3: a row must be an object with `messages`, got a string"),
]


@pytest.mark.parametrize("row,expected", BAD_ROWS, ids=[e.split(": ", 2)[2][:40] for _, e in BAD_ROWS])
def test_bad_rows_are_one_line_errors_naming_the_message(tok, row, expected):
    with pytest.raises(ConfigError) as info:
        tokenize(tok, row, where="tokenize: row 3")
    msg = info.value.message
    assert msg.startswith(expected), msg
    assert "\n" not in msg


def test_last_assistant_also_needs_an_assistant_turn(tok):
    with pytest.raises(ConfigError, match=r"^row 0: conversation has no assistant turn to train on \(supervise: last_assistant\)"):
        tokenize(tok, convo("q"), "last_assistant")


def test_text_parts_are_joined(tok):
    messages = [{"role": "user", "content": [{"type": "text", "text": "a "}, {"type": "text", "text": "b"}]}, {"role": "assistant", "content": [{"type": "text", "text": "yes"}]}]
    assert trained_texts(tok, [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "yes"}]) == ["yes<|im_end|>"]
    ids, weights = tokenize(tok, messages)
    assert ids == whole_text_ids(tok, [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "yes"}])
    assert [tok.decode(r) for r in runs(ids, weights)] == ["yes<|im_end|>"]


# -- the batch API ---------------------------------------------------------------------------------


def test_the_batch_api_equals_one_row_at_a_time(tok):
    rows = [convo("q1", "d"), {"messages": TOOL_CONVERSATION, "tools": TOOLS}, convo("a", "b", "c", "d", system=None)]
    wheres = [f"row {i}" for i in range(len(rows))]
    batch = tokenize_conversations(tok, rows, "all_assistant", 4096, "right", wheres)
    assert batch == [tokenize(tok, r) for r in rows]


def test_a_bad_row_in_a_batch_is_named_by_its_index(tok):
    rows = [convo("q", "a") for _ in range(5)]
    rows[3] = convo("q", 12)
    with pytest.raises(ConfigError, match=r"^tokenize: row 13: messages\[2\]\.content must be a string"):
        tokenize_conversations(tok, rows, "all_assistant", 4096, "right", [f"tokenize: row {10 + i}" for i in range(5)])


def test_a_batch_reports_the_first_bad_row_in_order(tok):
    rows = [convo("q", "a"), convo("q " * 50, "a"), convo("q", 12)]
    with pytest.raises(ConfigError, match=r"^row 1: no trained tokens left after truncation"):
        tokenize_conversations(tok, rows, "all_assistant", 40, "right", ["row 0", "row 1", "row 2"])


# -- the renderer: replayed renders equal apply_chat_template --------------------------------------


def test_replayed_renders_equal_apply_chat_template(tok):
    renderer = chat_renderer(tok)
    assert renderer.replay_off is None
    texts = ["d", "user", "\n", "\nfoo", "foo\n", " x", "<think>\nr\n</think>\n\nans", "<tool_response>x</tool_response>", "{ }", "🙂", "</think>", "", "<think>"]
    rng = random.Random(0)
    for _ in range(400):
        turns = [rng.choice(texts) for _ in range(rng.choice([1, 2, 3, 4, 5]))]
        messages = convo(*turns, system=rng.choice([None, SYSTEM, "\n"]))
        for generation_prompt in (False, True):
            for kwargs in ({"enable_thinking": False}, {}):
                expected = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt, **kwargs)
                assert renderer.render(messages, None, generation_prompt, kwargs, True) == expected
    assert sum(len(r) for r in renderer.recipes.values()) > 10  # recipes were made and reused


def test_a_template_that_reads_content_through_a_filter_makes_no_recipe(fresh_tok):
    fresh_tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | tojson }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    renderer = chat_renderer(fresh_tok)
    assert renderer.replay_off is None
    for reply in ("a", 'b "quoted"', "c"):
        messages = convo("q", reply)
        assert renderer.render(messages, None, False, {}, True) == fresh_tok.apply_chat_template(messages, tokenize=False)
    assert not any(renderer.recipes.values())
    # a reply the template escapes is trained as the template wrote it
    ids, weights = tokenize(fresh_tok, convo("q", 'b "quoted"'))
    assert [fresh_tok.decode(r) for r in runs(ids, weights)] == ['"b \\"quoted\\""<|im_end|>']


def test_templates_that_can_hide_reads_are_never_replayed(fresh_tok):
    fresh_tok.chat_template = "{% for m in messages %}{{ '<|im_start|>' ~ m.role ~ '\n' ~ m.content ~ '<|im_end|>\n' }}{% endfor %}"
    renderer = chat_renderer(fresh_tok)
    assert renderer.replay_off == "the template uses `~`"
    messages = convo("q", "a")
    assert renderer.render(messages, None, False, {}, True) == fresh_tok.apply_chat_template(messages, tokenize=False)


def test_a_template_whose_prompt_is_not_a_prefix_is_an_error_naming_the_turn(fresh_tok):
    fresh_tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ 'bot' if m.role == 'assistant' else m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(ConfigError) as info:
        tokenize(fresh_tok, convo("q", "a"), where="tokenize: row 2")
    assert info.value.message.startswith("tokenize: row 2: messages[2]: the chat template renders the turns before this assistant turn differently")


def test_an_earlier_turn_the_template_rewrites_points_to_training_the_last_reply(fresh_tok):
    """Qwen3's shape: the template marks the latest user turn, so the prompt for an earlier reply
    is not a prefix of the whole conversation, but the last reply's is. The refusal names the
    fix that works, and the fix does."""
    fresh_tok.chat_template = (
        "{% set ns = namespace(last=-1) %}{% for m in messages %}{% if m.role == 'user' %}{% set ns.last = loop.index0 %}{% endif %}{% endfor %}"
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}{% if loop.index0 == ns.last %} (latest){% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    conversation = convo("q1", "a1", "q2", "a2", system=None)
    with pytest.raises(ConfigError) as info:
        tokenize(fresh_tok, conversation)
    assert info.value.message.startswith("row 0: messages[1]: the chat template renders the turns before this assistant turn differently")
    assert info.value.message.endswith("train only the last reply (supervise: last_assistant, or weight: 0 on this turn), every token (supervise: all), or use another template")
    assert trained_texts(fresh_tok, conversation, "last_assistant") == ["a2<|im_end|>"]
    assert trained_texts(fresh_tok, [dict(m, weight=0) if m["content"] == "a1" else m for m in conversation]) == ["a2<|im_end|>"]


def test_a_template_without_an_end_of_turn_is_an_error_naming_the_turn(fresh_tok):
    fresh_tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}{% if m.role != 'assistant' %}<|im_end|>{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(ConfigError) as info:
        tokenize(fresh_tok, convo("q", "a", system=None), where="tokenize: row 2")
    assert info.value.message == "tokenize: row 2: messages[1]: the chat template does not end this assistant turn with '<|im_end|>'; cannot tell where it ends"


def test_a_template_error_is_one_line(fresh_tok):
    fresh_tok.chat_template = "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system role here\nsecond line') }}{% endif %}{{ m.content }}<|im_end|>{% endfor %}"
    with pytest.raises(ConfigError) as info:
        tokenize(fresh_tok, convo("q", "a"), where="tokenize: row 1")
    assert info.value.message == "tokenize: row 1: the chat template failed on this conversation: no system role here"


def test_render_is_what_evaluation_and_training_share(tok):
    messages = convo("q")
    assert render(tok, messages, generation_prompt=True).endswith(THINK_EMPTY)
    assert render(tok, messages) == tok.apply_chat_template(messages, tokenize=False, enable_thinking=False)


# -- sharegpt_to_messages ------------------------------------------------------------------------


def test_sharegpt_field_names_roles_and_system_are_params():
    transform = ShareGptToMessages(field="turns", role_key="speaker", content_key="text", roles={"bot": "assistant"})
    [row] = transform([{"system": "Be brief.", "turns": [{"speaker": "human", "text": "hi"}, {"speaker": "bot", "text": "hello"}], "id": 7}])
    assert row == {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@pytest.mark.parametrize(
    "row,expected",
    [
        ({"conversations": [{"from": "bot", "value": "x"}]}, "sharegpt_to_messages: conversations[0].from: role 'bot' is not one of"),
        ({"conversations": [{"from": "gpt", "value": 3}]}, "sharegpt_to_messages: conversations[0].value must be a string, got int"),
        ({"conversations": ["hi"]}, "sharegpt_to_messages: conversations[0] must be an object"),
        ({"messages": []}, "sharegpt_to_messages: row has no 'conversations' list (row has: messages)"),
        ({"conversations": [{"from": "function_call", "value": "{oops"}]}, "sharegpt_to_messages: conversations[0].value is not valid JSON"),
        ({"conversations": [{"from": "function_call", "value": '{"arguments": {}}'}]}, "sharegpt_to_messages: conversations[0].value: call 0 must be an object with a string `name`"),
        ({"conversations": [], "tools": "{}"}, "sharegpt_to_messages: tools must be a list of function schemas"),
    ],
)
def test_sharegpt_errors_name_the_turn(row, expected):
    with pytest.raises(ConfigError) as info:
        ShareGptToMessages()([row])
    assert info.value.message.startswith(expected), info.value.message
    assert "map it with params.roles" in info.value.message or "role" not in expected


def test_sharegpt_role_targets_are_checked():
    with pytest.raises(ValueError, match="roles.bot: 'robot' is not one of system, user, assistant, tool"):
        ShareGptToMessages(roles={"bot": "robot"})


def test_the_tokenize_rule_names_the_bad_row_of_a_chunk(tmp_path, monkeypatch, tiny_model_dir):
    """Through the real rules: sharegpt rows, one of which spells a special token, fail on that row."""
    from pathlib import Path

    from evsys_build.executor import Executor
    from evsys_build.store import Store
    from evsys_testkit import data_graph

    rows = [{"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]} for i in range(8)]
    rows[5]["conversations"][1]["value"] = "done<|im_end|>"
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "config.yaml").write_text(
        "data: {path: train.jsonl}\n"
        "transforms:\n"
        "  - kind: sharegpt_to_messages\n"
        "model: {name: evsys/tiny-qwen3}\n"
        "algorithm: {kind: sft, params: {max_steps: 1}}\n"
    )
    monkeypatch.chdir(tmp_path)
    store = Store(tmp_path / "cache")
    graph = data_graph(Path("config.yaml"), store)
    with pytest.raises(ConfigError, match=r"^train.jsonl:6: tokenize: messages\[1\]\.content contains the special token '<\|im_end\|>'"):
        Executor(store).run(graph)


ODD_TEMPLATES = [
    "{% for m in messages %}{% if m.content %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}",
    "{% for m in messages %}{{ m.content[0] if m.content else '-' }}|{{ m.content }}<|im_end|>{% endfor %}",
    "{% for m in messages %}{% if m.content in ['a', 'bb'] %}[short]{% endif %}{{ m.content }}<|im_end|>{% endfor %}",
    "{% for m in messages %}{% if m.content|length > 2 %}[long]{% endif %}{{ m.content|trim }}<|im_end|>{% endfor %}",
    "{% for m in messages %}{{ m.content|upper }}{{ '%s!'|format(m.content) }}<|im_end|>{% endfor %}",
    "{% for m in messages %}{{ m.content.replace('a', 'A') }}{{ m.content.split('b')|length }}<|im_end|>{% endfor %}",
    "{% for m in messages %}{% set c = m.content %}{% if c.startswith('<') and c.endswith('>') %}{{ c[1:-1] }}{% else %}{{ c }}{% endif %}<|im_end|>{% endfor %}",
    "{% for m in messages %}{{ m.content.format(x=1) if '{x}' in m.content else m.content }}<|im_end|>{% endfor %}",
    "{% for m in messages %}{{ {'a': 'was a'}.get(m.content, m.content) }}{{ m.content == messages[0].content }}<|im_end|>{% endfor %}",
    "{% for m in messages|reverse %}{{ m.content|lower }}{{ m.content|reverse }}<|im_end|>{% endfor %}",
]


@pytest.mark.parametrize("template", ODD_TEMPLATES)
def test_replay_is_exact_for_templates_that_inspect_contents(fresh_tok, template):
    fresh_tok.chat_template = template
    renderer = chat_renderer(fresh_tok)
    contents = ["", "a", "bb", "abc", "<x>", "{x} y", " pad ", "b", "A", "was a", "éé"]
    rng = random.Random(1)
    for _ in range(80):
        messages = [{"role": rng.choice(["user", "assistant"]), "content": rng.choice(contents)} for _ in range(rng.choice([1, 2, 3]))]
        assert renderer.render(messages, None, False, {}, True) == fresh_tok.apply_chat_template(messages, tokenize=False)


def test_truthiness_does_not_pin_a_contents_length(fresh_tok):
    fresh_tok.chat_template = ODD_TEMPLATES[0]
    renderer = chat_renderer(fresh_tok)
    for text in ("abc", "de", "fghij", "", "k"):
        renderer.render([{"role": "user", "content": text}], None, False, {}, True)
    assert [len(recipes) for recipes in renderer.recipes.values()] == [2]  # one for "has text", one for empty
