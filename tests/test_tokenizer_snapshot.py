"""A tokenize node's tokenizer comes from a snapshot of AutoTokenizer's own after the first load:
the same ids, offsets and loss weights, no torch, and never a snapshot of other files."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap

import pytest

from evsys_build.store import Store
from evsys_rules.data import machine_snapshots, tokenizer_snapshot
from evsys_rules.data.chat_tokens import load_tokenizer, tokenize_rows
from evsys_rules.data.tokenizer_snapshot import SnapshotTokenizer, load_chat_tokenizer, snapshot_key

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
TEXTS = ["d", "user", "\n", "\nfoo", "foo\n", " x", "<think>\nr\n</think>\n\nans", "<tool_response>x</tool_response>", "{ }", "🙂", "e\u0301", "漢字", "  two  ", "'s", "x" * 50]


def random_rows(n: int, seed: int) -> list:
    """Conversations of every shape the pipeline renders: plain turns, system or not, tool calls with tools."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        messages = [{"role": "system", "content": rng.choice(TEXTS)}] if rng.random() < 0.5 else []
        for turn in range(rng.randrange(1, 4)):
            messages.append({"role": "user", "content": rng.choice(TEXTS) + rng.choice(TEXTS)})
            messages.append({"role": "assistant", "content": rng.choice(TEXTS) + rng.choice(TEXTS)})
        if i % 7 == 0:
            call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": rng.choice(TEXTS)}}}
            messages[-1:] = [{"role": "assistant", "content": None, "tool_calls": [call]}, {"role": "tool", "content": "18C"}, {"role": "assistant", "content": "Sunny."}]
            rows.append({"messages": messages, "tools": TOOLS})
        else:
            rows.append(messages)
    return rows


def encode(tok, rows, supervise="all_assistant"):
    out = tokenize_rows(tok, rows, supervise, 4096, "right", [f"row {i}" for i in range(len(rows))])
    return out.ids.tolist(), out.weights.tolist(), out.offsets.tolist()


@pytest.fixture(autouse=True)
def machine_folder(tmp_path, monkeypatch):
    """Each test its own machine-wide snapshot folder (the session shares one: conftest)."""
    folder = tmp_path / "machine-snapshots"
    monkeypatch.setenv("EVSYS_TOKENIZER_CACHE", str(folder))
    return folder


@pytest.fixture(scope="module")
def model_copy(tiny_model_dir, tmp_path_factory):
    """A private copy of the tiny model's tokenizer files (tests edit them)."""
    folder = tmp_path_factory.mktemp("tok") / "model"
    shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    return folder


def test_the_snapshot_tokenizes_every_row_as_autotokenizer_does(tiny_model_dir, tmp_path):
    store = Store(tmp_path / "store")
    tokenizer_snapshot._loaded.clear()
    first = load_chat_tokenizer(str(tiny_model_dir), store)  # taken from AutoTokenizer's, and stored
    assert isinstance(first, SnapshotTokenizer) and store.memo_get(snapshot_key(str(tiny_model_dir))) is not None
    tokenizer_snapshot._loaded.clear()
    snap = load_chat_tokenizer(str(tiny_model_dir), store)  # read from the store
    assert isinstance(snap, SnapshotTokenizer) and snap is not first
    auto = load_tokenizer(str(tiny_model_dir))
    for seed in range(3):
        rows = random_rows(120, seed)
        for supervise in ("all_assistant", "last_assistant", "all"):
            assert encode(snap, rows, supervise) == encode(auto, rows, supervise)
    assert snap.special_tokens_map == auto.special_tokens_map and len(snap) == len(auto)
    assert (snap.eos_token_id, snap.pad_token_id) == (auto.eos_token_id, auto.pad_token_id)


def test_the_snapshot_holds_the_pipeline_transformers_built_not_the_file(tiny_model_dir, tmp_path):
    """transformers v5 rebuilds Qwen2's pre-tokenizer (trimmed byte-level offsets); the file alone
    would give other offsets, so other loss masks."""
    from tokenizers import Tokenizer

    store = Store(tmp_path / "store")
    load_chat_tokenizer(str(tiny_model_dir), store)
    tokenizer_snapshot._loaded.clear()
    snap = load_chat_tokenizer(str(tiny_model_dir), store)
    auto = load_tokenizer(str(tiny_model_dir))
    from_file = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    assert snap.backend_tokenizer.to_str() == auto.backend_tokenizer.to_str()
    if from_file.to_str() == auto.backend_tokenizer.to_str():
        pytest.skip("this transformers loads tokenizer.json unchanged; nothing to tell apart")
    text = "<|im_start|>user\n  hello   world<|im_end|>"
    assert snap.backend_tokenizer.encode(text).offsets == auto.backend_tokenizer.encode(text).offsets


def test_an_edited_chat_template_is_never_served_from_the_old_snapshot(model_copy, tmp_path):
    store = Store(tmp_path / "store")
    load_chat_tokenizer(str(model_copy), store)
    before = snapshot_key(str(model_copy))
    config = json.loads((model_copy / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    (model_copy / "tokenizer_config.json").write_text(json.dumps(config))
    assert snapshot_key(str(model_copy)) != before
    tokenizer_snapshot._loaded.clear()
    for _ in range(2):  # a new snapshot taken, then read
        tok = load_chat_tokenizer(str(model_copy), store)
        text = tok.apply_chat_template([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], tokenize=False)
        assert text == "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n"
        tokenizer_snapshot._loaded.clear()


def test_new_library_versions_take_a_new_snapshot(tiny_model_dir, monkeypatch):
    before = snapshot_key(str(tiny_model_dir))
    real = tokenizer_snapshot.library_versions
    monkeypatch.setattr(tokenizer_snapshot, "library_versions", lambda *names: {**real(*names), "tokenizers": "99.0"})
    tokenizer_snapshot._snapshot_key.cache_clear()
    try:
        assert snapshot_key(str(tiny_model_dir)) != before
    finally:
        tokenizer_snapshot._snapshot_key.cache_clear()


def test_a_collected_snapshot_is_captured_again(tiny_model_dir, tmp_path):
    tokenizer_snapshot._loaded.clear()  # one this process holds (another test's) is not stored again
    store = Store(tmp_path / "store")
    load_chat_tokenizer(str(tiny_model_dir), store)
    memo = store.memo_get(snapshot_key(str(tiny_model_dir)))
    store.object_path(memo["blob"]).unlink()
    tokenizer_snapshot._loaded.clear()
    assert isinstance(load_chat_tokenizer(str(tiny_model_dir), store), SnapshotTokenizer)
    assert store.has_object(store.memo_get(snapshot_key(str(tiny_model_dir)))["blob"])  # taken again


def test_a_tokenizer_the_snapshot_cannot_reproduce_is_loaded_whole(tiny_model_dir, tmp_path, monkeypatch):
    auto = load_tokenizer(str(tiny_model_dir))
    assert tokenizer_snapshot.rebuild(tokenizer_snapshot.capture(auto)) is not None
    monkeypatch.setattr(SnapshotTokenizer, "apply_chat_template", lambda self, conversation, **kw: "something else")
    assert tokenizer_snapshot.rebuild(tokenizer_snapshot.capture(auto)) is None
    tokenizer_snapshot._loaded.clear()
    store = Store(tmp_path / "store")
    assert load_chat_tokenizer(str(tiny_model_dir), store) is auto  # AutoTokenizer's own, and no snapshot stored
    assert store.memo_get(snapshot_key(str(tiny_model_dir))) is None


def test_a_snapshot_load_imports_neither_torch_nor_autotokenizer(tiny_model_dir, tmp_path):
    store_dir = tmp_path / "store"
    tokenizer_snapshot._loaded.clear()  # a snapshot this process already holds is not stored again
    load_chat_tokenizer(str(tiny_model_dir), Store(store_dir))
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from evsys_build.store import Store
        from evsys_rules.data.chat_tokens import tokenize_rows
        from evsys_rules.data.tokenizer_snapshot import SnapshotTokenizer, load_chat_tokenizer
        tok = load_chat_tokenizer({str(tiny_model_dir)!r}, Store(Path({str(store_dir)!r})))
        out = tokenize_rows(tok, [[{{"role": "user", "content": "q"}}, {{"role": "assistant", "content": "a"}}]], "all_assistant", 64, "right", ["row 0"])
        print(type(tok).__name__, int(out.weights.sum()) > 0, "torch" in sys.modules, "transformers.models.auto" in sys.modules)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["SnapshotTokenizer", "True", "False", "False"]


def test_the_warm_up_captures_in_its_worker_and_this_process_then_loads_that_one(tiny_model_dir, tmp_path, monkeypatch):
    """A first build's tokenize node is warmed while earlier stages run: a worker process starts
    and captures the snapshot (AutoTokenizer, torch) there, never in the build's process, which
    then loads that snapshot; a warm-up nobody adopts ends with `close`."""
    from evsys_build.chunk_workers import standby_waiting
    from evsys_rules.nodes.tokenize import standby_key, warm_tokenizer

    monkeypatch.setenv("EVSYS_DATA_WORKERS", "1")
    store = Store(tmp_path / "store")
    tokenizer_snapshot._loaded.clear()
    monkeypatch.setattr(tokenizer_snapshot, "capture", lambda tok: pytest.fail("captured in the build's process"))
    code = tokenizer_snapshot.tokenizer_code()
    standby = warm_tokenizer(str(tiny_model_dir), code, store)
    assert standby is not None and standby_waiting(standby_key(store, str(tiny_model_dir), code))
    assert standby.worker.receive() == (True, "ready")  # its start loaded the tokenizer: the snapshot is stored
    assert tokenizer_snapshot._loaded == {}
    assert isinstance(load_chat_tokenizer(str(tiny_model_dir), store), SnapshotTokenizer)
    standby.close()
    assert not standby_waiting(standby_key(store, str(tiny_model_dir), code)) and standby.worker.proc.poll() is not None


def test_processes_that_load_a_new_tokenizer_together_capture_it_once(tiny_model_dir, tmp_path):
    """Two processes (a build and its worker) meet an uncaptured tokenizer at once: one captures
    under the store's lock, the other waits and loads that snapshot."""
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from evsys_build.store import Store
        from evsys_rules.data import machine_snapshots, tokenizer_snapshot
        tokenizer_snapshot.tokenizer_code()  # keyed by the real code, before `capture` is wrapped
        real = tokenizer_snapshot.capture
        def counted(tok):
            print("captured", flush=True)
            return real(tok)
        tokenizer_snapshot.capture = counted
        tok = tokenizer_snapshot.load_chat_tokenizer({str(tiny_model_dir)!r}, Store(Path({str(tmp_path / "store")!r})))
        print(type(tok).__name__)
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    lines = [line for out, _ in outs for line in out.split()]
    assert lines.count("captured") == 1 and lines.count("SnapshotTokenizer") == 2


def test_the_process_wide_tokenizer_reloads_when_any_keyed_file_changes(model_copy):
    """Keys cover every non-weight file of the model folder (tokenizer.model, added_tokens.json,
    config.json, ...): the in-process cache must watch the same files, or a long-lived process
    (the Python API, a notebook) would tokenize with what a key no longer describes."""
    first = load_tokenizer(str(model_copy))
    assert load_tokenizer(str(model_copy)) is first
    extra = model_copy / "added_tokens.json"
    extra.write_text("{}")
    try:
        assert load_tokenizer(str(model_copy)) is not first
    finally:
        extra.unlink()


def test_a_file_edited_within_its_timestamp_tick_is_not_vouched_for_by_its_stat(model_copy, monkeypatch):
    """Two same-size writes within one timestamp tick leave a file's stat as it was: while a file
    is that fresh, the process-wide caches (the tokenizer, the snapshot key) are not used. Here
    the stat is frozen on purpose, as a coarse clock would leave it."""
    from evsys_rules.data import chat_tokens

    template = model_copy / "tokenizer_config.json"
    original = template.read_text()
    frozen = chat_tokens.stat_stamp([template])
    frozen = tuple((name, size, chat_tokens.time.time_ns(), ctime, ino) for name, size, _, ctime, ino in frozen)  # written just now
    monkeypatch.setattr(tokenizer_snapshot, "stat_stamp", lambda files: frozen)
    monkeypatch.setattr(chat_tokens, "stat_stamp", lambda files: frozen)
    before, first = snapshot_key(str(model_copy)), load_tokenizer(str(model_copy))
    config = json.loads(original)
    config["chat_template"] = config["chat_template"].replace("<|im_start|>", "<|im_START|>", 1)
    template.write_text(json.dumps(config))
    try:
        assert snapshot_key(str(model_copy)) != before
        second = load_tokenizer(str(model_copy))
        assert second is not first and second.chat_template != first.chat_template
    finally:
        template.write_text(original)


# -- kept once per machine ----------------------------------------------------------------------


def test_a_new_store_copies_the_machines_snapshot_instead_of_taking_it(tiny_model_dir, tmp_path, machine_folder, monkeypatch):
    tokenizer_snapshot._loaded.clear()
    first = load_chat_tokenizer(str(tiny_model_dir), Store(tmp_path / "first"))
    key = snapshot_key(str(tiny_model_dir))
    assert (machine_folder / f"{key}.json").is_file()
    tokenizer_snapshot._loaded.clear()
    monkeypatch.setattr(tokenizer_snapshot, "capture", lambda tok: pytest.fail("took the snapshot again"))
    second_store = Store(tmp_path / "second")
    second = load_chat_tokenizer(str(tiny_model_dir), second_store)
    assert isinstance(second, SnapshotTokenizer)
    assert second_store.has_object(second_store.memo_get(key)["blob"])  # the store holds it now, whole
    rows = random_rows(40, seed=3)
    assert encode(second, rows) == encode(first, rows)
    tokenizer_snapshot._loaded.clear()


def test_a_damaged_machine_snapshot_is_removed_and_taken_again(tiny_model_dir, tmp_path, machine_folder, monkeypatch):
    tokenizer_snapshot._loaded.clear()
    load_chat_tokenizer(str(tiny_model_dir), Store(tmp_path / "first"))
    path = machine_folder / f"{snapshot_key(str(tiny_model_dir))}.json"
    entry = json.loads(path.read_text())
    entry["snapshot"]["chat_template"] = entry["snapshot"]["chat_template"].replace("assistant", "asistant", 1)  # valid JSON, wrong bytes
    path.write_text(json.dumps(entry))
    tokenizer_snapshot._loaded.clear()
    captures = []
    real = tokenizer_snapshot.capture
    monkeypatch.setattr(tokenizer_snapshot, "capture", lambda tok: captures.append(1) or real(tok))
    tok = load_chat_tokenizer(str(tiny_model_dir), Store(tmp_path / "second"))
    assert captures == [1] and "asistant" not in tok.chat_template
    assert "asistant" not in json.loads(path.read_text())["snapshot"]["chat_template"]  # written again, whole
    tokenizer_snapshot._loaded.clear()


def test_off_keeps_snapshots_in_stores_only(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EVSYS_TOKENIZER_CACHE", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    tokenizer_snapshot._loaded.clear()
    store = Store(tmp_path / "store")
    load_chat_tokenizer(str(tiny_model_dir), store)
    assert store.memo_get(snapshot_key(str(tiny_model_dir))) is not None
    assert machine_snapshots.folder() is None and not (tmp_path / "xdg").exists()
    tokenizer_snapshot._loaded.clear()


def test_the_most_recently_used_snapshots_are_kept(machine_folder):
    for i in range(machine_snapshots.KEEP):
        machine_snapshots.write(f"k{i}", {"n": i}, "{}")
        os.utime(machine_folder / f"k{i}.json", (1000 + i, 1000 + i))  # k0 the oldest
    assert machine_snapshots.read("k0") == ({"n": 0}, "{}")  # a read makes it the most recent
    machine_snapshots.write("new1", {"n": -1}, "{}")
    machine_snapshots.write("new2", {"n": -2}, "{}")
    kept = {p.stem for p in machine_folder.glob("*.json")}
    assert len(kept) == machine_snapshots.KEEP and {"k0", "new1", "new2"} <= kept and not {"k1", "k2"} & kept
