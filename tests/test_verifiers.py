"""Built-in verifiers, dispatch, identity and pass@k."""

from __future__ import annotations

import math

import pytest

from evsys_build.errors import ConfigError, UnknownKindError
from evsys_rules.evals.passk import aggregate, pass_at_k
from evsys_rules.plugins.registry import register_verifier, verifiers
from evsys_rules.evals.benchmarks import Task
from evsys_rules.evals.verifiers import check, resolve, verifier_code


def spec(fn_name: str, **args) -> dict:
    return {"kind": "in_process", "fn_name": fn_name, **args}


# --- built-ins ---------------------------------------------------------------------------

def test_contains():
    s = spec("contains", expected="<answer>GMAIL_SEND_EMAIL</answer>")
    assert check(s, "sure: <answer>GMAIL_SEND_EMAIL</answer>", "t") is True
    assert check(s, "<answer>GMAIL_CREATE_EMAIL_DRAFT</answer>", "t") is False
    assert check(s, "GMAIL_SEND_EMAIL", "t") is False


def test_exact_match_strips_and_ignore_case():
    assert check(spec("exact_match", expected="Paris"), "  Paris\n", "t") is True
    assert check(spec("exact_match", expected="Paris"), "paris", "t") is False
    assert check(spec("exact_match", expected="Paris", ignore_case=True), "PARIS ", "t") is True
    assert check(spec("exact_match", expected="Paris", ignore_case=True), "Paris, France", "t") is False


def test_regex_search():
    s = spec("regex", pattern=r"<answer>\s*SLACK_\w+\s*</answer>")
    assert check(s, "x <answer> SLACK_UPDATES_A_SLACK_MESSAGE </answer>", "t") is True
    assert check(s, "<answer>GMAIL_SEND_EMAIL</answer>", "t") is False


def test_regex_bad_pattern_is_config_error_naming_where():
    with pytest.raises(ConfigError, match=r"^tasks.jsonl:4: .*does not compile"):
        check(spec("regex", pattern="(unclosed"), "anything", "tasks.jsonl:4")


def test_answer_tag_uses_last_tag_and_accepts_bare_or_tagged_expected():
    pred = "<answer>JIRA_CREATE_ISSUE</answer> no wait <answer> GITHUB_CREATE_AN_ISSUE </answer>"
    assert check(spec("answer_tag", expected="GITHUB_CREATE_AN_ISSUE"), pred, "t") is True
    assert check(spec("answer_tag", expected="<answer>GITHUB_CREATE_AN_ISSUE</answer>"), pred, "t") is True
    assert check(spec("answer_tag", expected="JIRA_CREATE_ISSUE"), pred, "t") is False
    assert check(spec("answer_tag", expected="GITHUB_CREATE_AN_ISSUE"), "GITHUB_CREATE_AN_ISSUE", "t") is False
    # substring of the tag content is not enough
    assert check(spec("answer_tag", expected="GITHUB"), "<answer>GITHUB_CREATE_AN_ISSUE</answer>", "t") is False


def test_numeric_last_number_with_tol():
    assert check(spec("numeric", expected=42), "first 7, then the answer is 42.", "t") is True
    assert check(spec("numeric", expected=42), "42 then 43", "t") is False
    assert check(spec("numeric", expected=1234.5), "total: 1,234.5", "t") is True
    assert check(spec("numeric", expected=-3), "it is -3", "t") is True
    assert check(spec("numeric", expected=3.14, tol=0.01), "pi ~ 3.1416", "t") is True
    assert check(spec("numeric", expected=3.14), "pi ~ 3.1416", "t") is False
    assert check(spec("numeric", expected="10"), "ten", "t") is False


def test_numeric_compares_big_integers_and_decimals_exactly():
    """As floats, 2**53 + 1 == 2**53 and 0.1 + 0.2 != 0.3: the verifier compares decimals."""
    assert check(spec("numeric", expected=2**53 + 1), str(2**53), "t") is False
    assert check(spec("numeric", expected="12345678901234567890"), "12345678901234567000", "t") is False
    assert check(spec("numeric", expected=2**53 + 1), f"so {2**53 + 1}", "t") is True
    assert check(spec("numeric", expected=0.3, tol=0.1), "0.2", "t") is True  # a float param is read as it prints
    assert check(spec("numeric", expected=2.5), "2.50", "t") is True


def test_numeric_rejects_non_numeric_expected():
    with pytest.raises(ConfigError, match="not a number"):
        check(spec("numeric", expected="abc"), "1", "t")
    with pytest.raises(ConfigError, match="negative"):
        check(spec("numeric", expected=1, tol=-1), "1", "t")


def test_builtins_are_keyed_by_their_source():
    from evsys_rules.plugins.code_identity import code_identity

    identities = {code_identity(verifiers.get(name)) for name in ("contains", "exact_match", "regex", "answer_tag", "numeric")}
    assert len(identities) == 5 and all(i.startswith("source:") for i in identities)


# --- dispatch errors -----------------------------------------------------------------------

def test_unknown_fn_name_suggests_close_name():
    with pytest.raises(UnknownKindError) as info:
        check(spec("contians", expected="x"), "x", "val/tasks.jsonl:3")
    msg = str(info.value)
    assert msg.startswith("val/tasks.jsonl:3: ")
    assert "did you mean contains?" in msg


def test_unknown_kind_suggests_in_process():
    with pytest.raises(UnknownKindError, match=r"^w: .*'in_proces'.*did you mean in_process\?"):
        check({"kind": "in_proces", "fn_name": "contains", "expected": "x"}, "x", "w")


def test_missing_kind_or_fn_name():
    with pytest.raises(ConfigError, match='no "kind"'):
        check({"fn_name": "contains", "expected": "x"}, "x", "w")
    with pytest.raises(ConfigError, match='no "fn_name"'):
        check({"kind": "in_process", "expected": "x"}, "x", "w")


def test_missing_and_extra_args_name_where_and_parameters():
    with pytest.raises(ConfigError) as info:
        check(spec("contains"), "x", "f.jsonl:2")
    assert str(info.value).startswith("f.jsonl:2: ")
    assert "missing expected" in str(info.value)
    assert "its parameters are: expected)" in str(info.value)
    with pytest.raises(ConfigError, match=r"unexpected tol .*expected, ignore_case=False\)"):
        check(spec("exact_match", expected="a", tol=1), "a", "f.jsonl:2")


def test_spec_values_are_never_evaluated():
    # a code-looking value is just a string compared as data
    s = spec("contains", expected="__import__('os').getcwd()")
    assert check(s, "no", "t") is False
    assert check(s, "__import__('os').getcwd()", "t") is True


# --- user verifiers and identity -----------------------------------------------------------

def test_user_verifier_is_found_and_keyed_by_source():
    @register_verifier("starts_with_test")
    def starts_with(prediction: str, prefix: str) -> bool:
        return prediction.startswith(prefix)

    s = spec("starts_with_test", prefix="<answer>")
    assert check(s, "<answer>X</answer>", "t") is True
    assert check(s, "X", "t") is False
    assert verifier_code("starts_with_test").startswith("source:")


def test_an_eval_key_follows_verifier_specs_through_its_tasks_and_code_through_its_verifiers():
    """A task's verifier args are part of the tasks' content; the verifier functions' code is the
    `verifiers` param. Adding a task with the same verifier changes only `tasks`."""
    from evsys_rules.nodes.eval import _tasks_content, _verifiers_digest

    def tasks(*expected):
        return tuple(Task.model_validate({"task_id": f"t{i}", "instruction": "q", "verifier": spec("answer_tag", expected=e)}) for i, e in enumerate(expected))

    one, other, more = tasks("A"), tasks("B"), tasks("A", "C")
    assert _tasks_content(one)[0] != _tasks_content(other)[0]  # the spec's args key the eval
    assert _verifiers_digest(one) == _verifiers_digest(other) == _verifiers_digest(more)
    assert _tasks_content(one)[0] != _tasks_content(more)[0]
    with_other_fn = tuple(Task.model_validate({"task_id": "t0", "instruction": "q", "verifier": spec("exact_match", expected="A")}) for _ in [0])
    assert _verifiers_digest(with_other_fn) != _verifiers_digest(one)


def test_resolve_returns_function_and_args():
    fn, args = resolve(spec("numeric", expected=2, tol=0.5))
    assert fn is verifiers.get("numeric")
    assert args == {"expected": 2, "tol": 0.5}


# --- pass@k --------------------------------------------------------------------------------

def test_pass_at_k_closed_form():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 1, 5) == 1.0
    assert pass_at_k(4, 4, 2) == 1.0
    for n, c, k in [(5, 2, 2), (10, 3, 4), (7, 1, 3), (20, 5, 10)]:
        expected = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_rejects_bad_inputs():
    with pytest.raises(ConfigError, match="num_samples >= 3"):
        pass_at_k(2, 1, 3)
    with pytest.raises(ConfigError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ConfigError):
        pass_at_k(3, 1, 0)


def test_aggregate_means_over_tasks():
    per_task = [[True, False, False, False], [True, True, False, False], [False] * 4]
    out = aggregate(per_task, [1, 2])
    assert set(out) == {"pass@1", "pass@2"}
    assert out["pass@1"] == pytest.approx((0.25 + 0.5 + 0.0) / 3)
    p2 = (1 - math.comb(3, 2) / math.comb(4, 2)) + (1 - math.comb(2, 2) / math.comb(4, 2))
    assert out["pass@2"] == pytest.approx(p2 / 3)


def test_aggregate_k_above_samples_explains_num_samples():
    with pytest.raises(ConfigError, match="num_samples >= 5"):
        aggregate([[True, False]], [1, 5])
    with pytest.raises(ConfigError):
        aggregate([], [1])


def test_an_eval_key_follows_its_verifiers_code_within_one_process(tmp_path):
    """An eval node's params hold its tasks' verifier identities, memoised per tasks file: the same
    tasks and code give the same digest, and a verifier re-registered with other code (a plugin
    edited in a long-lived process) gives another."""
    from types import SimpleNamespace

    from evsys_rules.evals.benchmarks import load_tasks
    from evsys_rules.nodes.eval import eval_params

    (tmp_path / "tasks.jsonl").write_text('{"task_id": "t1", "instruction": "q", "verifier": {"kind": "in_process", "fn_name": "edited_later", "expected": "A"}}\n')

    @register_verifier("edited_later")
    def first(prediction: str, expected: str) -> bool:
        return prediction == expected

    tasks = load_tasks(tmp_path)
    bench = SimpleNamespace(max_tokens=8, temperature=0.0, num_samples=1, stop=[], metrics=["pass@1"])
    backend = type("Backend", (), {"sampling_client_from_weights": staticmethod(first), "libraries": ()})
    before = eval_params(bench, tasks, None, backend, {})["verifiers"]
    assert eval_params(bench, tasks, None, backend, {})["verifiers"] == before

    @register_verifier("edited_later")
    def second(prediction: str, expected: str) -> bool:
        return prediction.strip() == expected

    assert eval_params(bench, tasks, None, backend, {})["verifiers"] != before


def test_a_benchmarks_chat_template_kwargs_are_in_the_eval_key_only_when_set(tmp_path):
    """{enable_thinking: true} renders other prompts, so other completions; unset, keys stay as they were."""
    from evsys_rules.config.schema import BenchmarkConfig
    from evsys_rules.evals.benchmarks import load_tasks
    from evsys_rules.nodes.eval import eval_params

    (tmp_path / "tasks.jsonl").write_text('{"task_id": "t1", "instruction": "q", "verifier": {"kind": "in_process", "fn_name": "contains", "expected": "A"}}\n')
    tasks = load_tasks(tmp_path)
    backend = type("Backend", (), {"sampling_client_from_weights": staticmethod(lambda: None), "libraries": ()})
    plain = eval_params(BenchmarkConfig(name="v", path=str(tmp_path)), tasks, None, backend, {})["sampling"]
    thinking = eval_params(BenchmarkConfig(name="v", path=str(tmp_path), chat_template_kwargs={"enable_thinking": True}), tasks, None, backend, {})["sampling"]
    assert "chat_template_kwargs" not in plain and thinking == {**plain, "chat_template_kwargs": {"enable_thinking": True}}
    with pytest.raises(ValueError, match="a kind: nll benchmark renders rows as training does"):
        BenchmarkConfig(name="h", kind="nll", path="h.jsonl", chat_template_kwargs={"enable_thinking": True})


def test_a_verifier_is_keyed_with_the_environment_variables_its_module_names(tmp_path, monkeypatch):
    import importlib
    import sys

    from evsys_rules.evals.verifiers import verifier_code

    (tmp_path / "strict_verifier.py").write_text(
        "import os\nfrom evsys_sdk import register_verifier\n\n\n"
        "@register_verifier('strict_by_env')\ndef strict_by_env(completion, expected):\n"
        "    return completion == expected if os.environ.get('VERIFY_STRICT') else expected in completion\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("VERIFY_STRICT", "1")
    importlib.import_module("strict_verifier")
    try:
        strict = verifier_code("strict_by_env")
        monkeypatch.delenv("VERIFY_STRICT")
        assert verifier_code("strict_by_env") != strict
        monkeypatch.setenv("VERIFY_STRICT", "1")
        assert verifier_code("strict_by_env") == strict
    finally:
        sys.modules.pop("strict_verifier", None)
        verifiers._items.pop("strict_by_env", None)  # noqa: SLF001 (a registration made for this test)


@pytest.mark.parametrize("metric", ["pass@01", "pass@0", "pass@1.5"])
def test_a_metric_spelled_another_way_is_refused(metric):
    from pydantic import ValidationError

    from evsys_rules.config.schema import BenchmarkConfig

    with pytest.raises(ValidationError, match="unknown metric"):
        BenchmarkConfig(name="b", path="p", metrics=[metric])


def test_a_special_token_stop_ends_generation_and_one_inside_text_is_refused(tok):
    """Completions are decoded without special tokens, so a stop string could never find one: a
    stop that is one special token becomes a stop id; one that holds it among text is an error."""
    from evsys_build.errors import ConfigError
    from evsys_rules.data.chat_tokens import end_of_turn_ids
    from evsys_rules.nodes.eval import stop_token_ids

    im_start = next(i for i, t in tok.added_tokens_decoder.items() if t.content == "<|im_start|>")
    assert stop_token_ids(tok, ["</answer>"], "b.stop") == end_of_turn_ids(tok)  # text: cut after decoding
    assert stop_token_ids(tok, ["<|im_start|>", "</answer>"], "b.stop") == sorted({*end_of_turn_ids(tok), im_start})
    with pytest.raises(ConfigError, match=r"^b.stop: '<\|im_start\|>user' holds the special token '<\|im_start\|>'"):
        stop_token_ids(tok, ["<|im_start|>user"], "b.stop")


@pytest.mark.parametrize("name, args", [("contains", {"expected": ""}), ("contains", {"expected": 42}), ("regex", {"pattern": ""}), ("regex", {"pattern": "(answer)?"})])
def test_a_spec_every_prediction_would_pass_is_refused(name, args):
    with pytest.raises(ConfigError, match="every prediction|in every prediction"):
        resolve(spec(name, **args), "tasks.jsonl:3")


def test_what_a_verifiers_identity_returns_is_in_its_key(monkeypatch):
    """A verifier that reads what no scan sees declares it with `fn.identity`: that is keyed."""
    from evsys_rules.evals.verifiers import verifier_code

    @register_verifier("judged_by_table_test")
    def judged(prediction: str) -> bool:
        return prediction == "yes"

    judged.identity = lambda: {"table": "v1"}
    first = verifier_code("judged_by_table_test")
    judged.identity = lambda: {"table": "v2"}
    assert verifier_code("judged_by_table_test") != first


def test_the_bytes_of_the_files_a_verifier_declares_are_in_its_key(tmp_path):
    """A verifier that reads an answer list as it scores declares it with `fn.files`: editing the
    list scores the evals again (their samples stay memoised); an unreadable one is one line."""
    from evsys_rules.evals.verifiers import verifier_code

    table = tmp_path / "answers.txt"
    table.write_text("yes\n")

    @register_verifier("judged_by_file_test")
    def judged(prediction: str) -> bool:
        return prediction in table.read_text().split()

    judged.files = lambda: [table]
    first = verifier_code("judged_by_file_test")
    table.write_text("yes\nno\n")
    assert verifier_code("judged_by_file_test") != first
    table.write_text("yes\n")
    assert verifier_code("judged_by_file_test") == first  # the bytes, not the stat
    judged.files = lambda: [tmp_path / "missing.txt"]
    with pytest.raises(ConfigError, match=r"^the verifier judged_by_file_test's files\(\) lists .*missing.txt, which cannot be read \(No such file or directory\)"):
        verifier_code("judged_by_file_test")


def test_special_tokens_read_from_the_files_are_the_ones_the_tokenizer_loads(tmp_path, tiny_model_dir, tok):
    """The stop check made before anything runs reads the special tokens from the tokenizer's
    files: the same set the loaded tokenizer has; tokenizer_config.json's list wins over
    tokenizer.json's, which counts only when the config has none."""
    import json

    from evsys_rules.evals.stops import special_token_texts

    assert special_token_texts(tiny_model_dir) == {t.content for t in tok.added_tokens_decoder.values() if t.special}
    (tmp_path / "tokenizer.json").write_text(json.dumps({"added_tokens": [{"id": 1, "content": "<a>", "special": True}, {"id": 2, "content": "<b>", "special": True}]}))
    assert special_token_texts(tmp_path) == {"<a>", "<b>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {"1": {"content": "<a>", "special": True}, "2": {"content": "<b>", "special": False}}}))
    assert special_token_texts(tmp_path) == {"<a>"}
    (tmp_path / "tokenizer_config.json").write_text("[]")  # not an object: the other file says
    assert special_token_texts(tmp_path) == {"<a>", "<b>"}
    assert special_token_texts(tmp_path / "missing") is None
