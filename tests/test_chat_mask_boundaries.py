"""Loss masks never credit one message with another's text, whatever the chat template does.

Odd but real template styles (plain-text roles with one eos at the end of the conversation,
templates that skip empty messages, templates that print a content through `%` or `repr`) must
either give exact masks or refuse the row by name: never train a token of a later message as
part of an earlier turn, and never replay one row's content into another row's text.
"""

from __future__ import annotations

import pytest

from evsys_build.errors import ConfigError
from evsys_rules.data.chat_render import chat_renderer
from evsys_rules.data.chat_tokens import tokenize_conversation
from evsys_testkit import runs


@pytest.fixture(scope="module")
def tok_qwen3(tiny_model_dir):
    """The real Qwen3 tokenizer and chat template."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)


def trained_text(tok, messages, supervise="all_assistant") -> str:
    """The text of the trained tokens, runs joined with '|'."""
    ids, weights = tokenize_conversation(tok, messages, supervise, 4096, "right", "row 0")
    return "|".join(tok.decode(r) for r in runs(ids, weights))


PLAIN_ROLES_ONE_EOS = (
    "{% for m in messages %}{{ m.role|capitalize + ': ' + m.content + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% else %}{{ eos_token }}{% endif %}"
)
SKIPS_EMPTY = (
    "{% for m in messages %}{% if m.content %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_turn_whose_end_of_turn_comes_after_later_messages_is_refused(fresh_tok):
    """One eos at the end of the conversation: turn 1 would otherwise train the user's next question."""
    fresh_tok.chat_template = PLAIN_ROLES_ONE_EOS
    messages = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "SECRET user text"},
        {"role": "assistant", "content": "a2"},
    ]
    with pytest.raises(ConfigError) as info:
        trained_text(fresh_tok, messages)
    assert info.value.message.startswith("row 0: messages[1]: the chat template writes later messages inside this assistant turn")
    assert "\n" not in info.value.message
    # the final turn alone is well defined: its reply, the template's newline and the eos
    assert trained_text(fresh_tok, messages, "last_assistant") == " a2\n<|im_end|>"


def test_an_empty_turn_the_template_skips_is_not_credited_with_the_next_turn(fresh_tok):
    """The empty reply renders nothing, so the text after its prompt is the next (weight 0) turn's."""
    fresh_tok.chat_template = SKIPS_EMPTY
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": ""},
        {"role": "assistant", "content": "NOT TO BE TRAINED", "weight": 0},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
    ]
    with pytest.raises(ConfigError, match=r"^row 0: messages\[1\]: the chat template writes later messages inside this assistant turn"):
        trained_text(fresh_tok, messages)
    messages[1]["content"] = "a1"
    assert trained_text(fresh_tok, messages) == "a1<|im_end|>|a2<|im_end|>"


def test_an_empty_final_turn_the_template_skips_is_refused(fresh_tok):
    fresh_tok.chat_template = SKIPS_EMPTY
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}, {"role": "assistant", "content": ""}]
    with pytest.raises(ConfigError, match=r"^row 0: messages\[3\]"):
        trained_text(fresh_tok, messages, "last_assistant")


HIDDEN_READ_TEMPLATES = [
    "{% for m in messages %}{{ '%r' % (m.content,) }}<|im_end|>{% endfor %}",
    "{% for m in messages %}{{ '%s' % (m.content,) }}<|im_end|>{% endfor %}",
    "{% for m in messages %}{{ '<%s>' % m.content }}<|im_end|>{% endfor %}",
    "{% for m in messages %}{{ m }}<|im_end|>{% endfor %}",
    "{% for m in messages %}{{ [m.content] }}<|im_end|>{% endfor %}",
    "{% for m in messages %}{{ [m.content]|string }}<|im_end|>{% endfor %}",
    "{% for m in messages %}{{ {'c': m.content} }}<|im_end|>{% endfor %}",
    "{% for m in messages %}{{ (m.content + '!',) }}<|im_end|>{% endfor %}",
    "{% for m in messages %}{{ '%c' % (m.content,) if m.content|length == 1 else m.content }}<|im_end|>{% endfor %}",
    # contents read in C through an iterator, or rendered into a buffer
    "{{ messages|selectattr('role', 'equalto', 'assistant')|map(attribute='content')|join('\n') }}<|im_end|>",
    "{{ '\n'.join(messages|map(attribute='content')) }}<|im_end|>",
    "{{ messages|map(attribute='content')|map('trim')|reverse|join('|') }}<|im_end|>",
    "{% for m in messages recursive %}{{ m.content }}<|im_end|>{% endfor %}",
    "{% autoescape true %}{% for m in messages %}{{ m.content }}<|im_end|>{% endfor %}{% endautoescape %}",
    "{% block turns %}{% for m in messages %}{{ m.content }}<|im_end|>{% endfor %}{% endblock %}{{ self.turns() }}",
    # a content as another argument of a filter that is safe for its value: read in C
    "{% for m in messages %}{{ '<|{role}|>\n{content}\n'|replace('{role}', m.role)|replace('{content}', m.content) }}{% endfor %}",
    "{% for m in messages %}{{ m.role|trim(m.content) }};{{ 'abc'|replace(m.content, '#') }}{% endfor %}",
    "{% for m in messages %}[{{ m.values()|join('/') }}][{{ '/'.join(m.values()) }}]{% endfor %}",
    # a read that raises: jinja makes it Undefined, and no guard could hold the answer
    "{% for m in messages %}{{ m.content }}{% if m.content[5] is defined %} (long){% endif %}<|im_end|>{% endfor %}",
    "{% for m in messages %}{{ m.content }}{{ m.content[5]|default('') }}<|im_end|>{% endfor %}",
]


@pytest.mark.parametrize("template", HIDDEN_READ_TEMPLATES)
def test_contents_read_where_no_method_call_shows_are_never_replayed_from_another_row(fresh_tok, template):
    fresh_tok.chat_template = template
    renderer = chat_renderer(fresh_tok)
    for content in ("first row", "second row", "a", "b", "first row"):
        messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": content}]
        assert renderer.render(messages, None, False, {}, True) == fresh_tok.apply_chat_template(messages, tokenize=False)


MERGES_ASSISTANT_TURNS = (  # consecutive assistant messages share one turn; tool calls print instead of content
    "{% for m in messages %}{% set prev = messages[loop.index0 - 1].role if not loop.first else '' %}"
    "{% set nxt = messages[loop.index0 + 1].role if not loop.last else '' %}"
    "{% if m.role == 'assistant' %}{% if prev != 'assistant' %}<|im_start|>assistant\n{% endif %}"
    "{% if m.tool_calls %}{% for tc in m.tool_calls %}<tool_call>{{ tc.function.name }}{{ tc.function.arguments|tojson }}</tool_call>{% endfor %}"
    "{% else %}{{ m.content }}{% endif %}{% if nxt != 'assistant' %}<|im_end|>\n{% endif %}"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_later_tool_call_inside_a_trained_turn_is_refused(fresh_tok):
    """The weight-0 message's tool call (not its content) lands in the turn before it."""
    fresh_tok.chat_template = MERGES_ASSISTANT_TURNS
    call = {"type": "function", "function": {"name": "fn2", "arguments": {"q": "C2"}}}
    messages = [
        {"role": "user", "content": "U0"},
        {"role": "assistant", "content": "A1"},
        {"role": "assistant", "content": "calling", "weight": 0, "tool_calls": [call]},
        {"role": "tool", "content": "T3"},
    ]
    with pytest.raises(ConfigError, match=r"^row 0: messages\[1\]: the chat template writes later messages inside this assistant turn"):
        trained_text(fresh_tok, messages)
    messages[2]["content"] = ""  # an empty content: the one-render check cannot mark it, the turn-by-turn one decides
    with pytest.raises(ConfigError, match=r"^row 0: messages\[1\]: the chat template writes later messages inside"):
        trained_text(fresh_tok, messages)


def test_reasoning_reaches_a_template_under_the_name_the_row_gave_it(fresh_tok):
    """`reasoning` is rendered as Qwen3's `reasoning_content` and stays readable as `reasoning`."""
    fresh_tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.reasoning %}[r]{{ m.reasoning }}[/r]{% endif %}{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4", "reasoning": "two and two"}]
    assert trained_text(fresh_tok, messages) == "[r]two and two[/r]4<|im_end|>"


def test_a_recipe_that_replays_wrong_text_is_caught_by_its_first_replays(fresh_tok):
    """A read the observation missed (simulated: a recipe with row 0's content baked in) shows in
    the checked replays: the reference text is returned and replay turns off for the tokenizer."""
    fresh_tok.chat_template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    renderer = chat_renderer(fresh_tok)

    def row(content):
        return [{"role": "user", "content": "q"}, {"role": "assistant", "content": content}]

    renderer.render(row("first"), None, False, {}, True)
    [[recipe]] = renderer.recipes.values()
    recipe.parts = [p if p.__class__ is str else "first" if p == 1 else p for p in recipe.parts]  # row 0's text baked in
    assert renderer.render(row("second"), None, False, {}, True) == fresh_tok.apply_chat_template(row("second"), tokenize=False)
    assert renderer.replay_off == "a replayed render differed from apply_chat_template"
    assert renderer.render(row("third"), None, False, {}, True) == fresh_tok.apply_chat_template(row("third"), tokenize=False)


def test_a_trimmed_content_keeps_replay_on(fresh_tok):
    """Llama 3's `message['content'] | trim` reads the value through observed methods: recipes work."""
    fresh_tok.chat_template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content|trim }}<|im_end|>\n{% endfor %}"
    renderer = chat_renderer(fresh_tok)
    for content in ("a", " b ", "c"):
        messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": content}]
        assert renderer.render(messages, None, False, {}, True) == fresh_tok.apply_chat_template(messages, tokenize=False)
    assert any(renderer.recipes.values())


def test_modulo_on_numbers_keeps_replay_on(fresh_tok):
    """Llama-2 style role checks (`loop.index0 % 2`) read no content: recipes still work."""
    fresh_tok.chat_template = (
        "{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('alternate') }}{% endif %}"
        "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    )
    renderer = chat_renderer(fresh_tok)
    assert renderer.replay_off is None
    for content in ("a", "b", "c"):
        messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": content}]
        assert renderer.render(messages, None, False, {}, True) == fresh_tok.apply_chat_template(messages, tokenize=False)
    assert any(renderer.recipes.values())


@pytest.mark.parametrize("flag", ["train", "training", "train_detail", "loss", "loss_mask", "mask", "masked", "trainable"])
def test_a_per_message_training_flag_evsys_does_not_read_is_refused(fresh_tok, flag):
    """`training: false` (axolotl's field) must not be dropped silently: the turn would be trained."""
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", flag: False}, {"role": "user", "content": "q2"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(ConfigError) as info:
        trained_text(fresh_tok, messages)
    assert info.value.message.startswith(f"row 0: messages[1].{flag}: evsys does not read this field")
    assert "weight: 0" in info.value.message


def test_the_one_render_check_agrees_with_the_turn_by_turn_check(fresh_tok, tok_qwen3):
    """The marked render (all turns at once) and the turn-by-turn check give the same answer
    whenever the first can tell, on random conversations under five templates."""
    import random

    from evsys_rules.data import chat_tokens
    from evsys_rules.data.chat_rows import read_conversation

    templates = {"one eos": PLAIN_ROLES_ONE_EOS, "skips empty": SKIPS_EMPTY, "chatml": SKIPS_EMPTY.replace("{% if m.content %}", "{% if true %}"),
                 "merges turns": MERGES_ASSISTANT_TURNS}
    rng = random.Random(5)
    texts = ["", "a", "hi there", "\nx\n", "<think>r</think>ans", "<tool_response>t</tool_response>", "ok."]
    told = flagged = 0
    for name, tokenizer in [*((n, fresh_tok) for n in templates), ("qwen3", tok_qwen3)]:
        if name in templates:
            tokenizer.chat_template = templates[name]
        renderer = chat_tokens.chat_renderer(tokenizer)
        for _ in range(150):
            roles = ["user"] + [rng.choice(["user", "assistant", "assistant", "tool"]) for _ in range(rng.randint(1, 6))]
            messages = [{"role": r, "content": rng.choice(texts)} for r in roles]
            if rng.random() < 0.3:
                k = rng.randrange(1, len(messages))
                messages[k] = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]}
            try:
                conv = read_conversation(messages, "row", "all_assistant", chat_tokens.special_tokens_pattern(tokenizer))
                text = chat_tokens._render(renderer, conv, len(conv.messages), False, chat_tokens.EVAL_PROMPT, "row")
                turns = [k for k, m in enumerate(conv.messages) if m["role"] == "assistant"]
                checked = []
                for k in turns:
                    start = chat_tokens._completion_start(renderer, conv, k, text, "row")
                    checked.append((k, (start, chat_tokens._completion_end(text, start, "<|im_end|>", chat_tokens.special_tokens_pattern(tokenizer), "row"))))
            except ConfigError:
                continue
            checked = [(k, span) for k, span in checked if k < len(conv.messages) - 1]
            if not checked:
                continue
            fast = chat_tokens.later_marks_in_spans(renderer, conv, checked, text, "row")
            slow = next((k for k, (_, end) in checked if chat_tokens.later_contents_move_text(renderer, conv, k, text, end, "row")), None)
            if fast != chat_tokens._UNKNOWN:
                assert fast == slow, (name, messages)
                told += 1
                flagged += fast is not None
    assert told > 150 and flagged > 20  # the one render decided most rows, and found the bad ones


# DeepSeek-R1-Distill's shape: the generation prompt opens a think block, which a rendered turn
# (reasoning stripped) never holds, so no prompt is a prefix of the conversation.
PROMPT_OPENS_THINKING = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<|im_start|>user {{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}<|im_start|>assistant {{ m['content'].split('</think>')[-1] }}<|im_end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant <think>\n{% endif %}"
)


def test_a_prompt_the_conversation_does_not_start_with_is_refused_showing_where_they_part(fresh_tok):
    fresh_tok.chat_template = PROMPT_OPENS_THINKING
    messages = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "<think>add</think>4"}]
    with pytest.raises(ConfigError) as info:
        trained_text(fresh_tok, messages)
    assert info.value.message.startswith("row 0: messages[1]: the chat template renders the turns before this assistant turn differently from its own prompt")
    assert "(the prompt reads '...im_start|>assistant <think>\\n', the conversation '...im_start|>assistant 4<|im_end|>')" in info.value.message
    assert "\n" not in info.value.message


# Gemma's shape: every turn ends with <end_of_turn>, while the tokenizer's eos is <eos> (Phi-3
# likewise: <|end|> against <|endoftext|>).
GEMMA_LIKE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def test_a_turn_ends_where_the_template_closes_it_not_at_an_eos_it_never_writes(fresh_tok):
    from tokenizers import AddedToken

    from evsys_rules.data.chat_tokens import end_of_turn_ids

    fresh_tok.add_special_tokens({"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in ("<start_of_turn>", "<end_of_turn>", "<eos>")]})
    fresh_tok.eos_token = "<eos>"
    fresh_tok.chat_template = GEMMA_LIKE
    messages = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "USER TEXT"},
        {"role": "assistant", "content": "a2"},
    ]
    assert trained_text(fresh_tok, messages) == "a1<end_of_turn>|a2<end_of_turn>"
    assert trained_text(fresh_tok, messages, "last_assistant") == "a2<end_of_turn>"
    end = fresh_tok.convert_tokens_to_ids("<end_of_turn>")
    assert end in end_of_turn_ids(fresh_tok) and fresh_tok.eos_token_id in end_of_turn_ids(fresh_tok)  # a sampler stops where training ended
