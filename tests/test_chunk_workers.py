"""Chunks computed in worker processes: the same results as computing them one by one, failures in
chunk order, a dead worker's chunks computed by the caller, and a user's unguarded script is never
re-run by a worker."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from evsys_build.chunk_workers import ChunkWorkers, compute_with_workers, standby_waiting, start_standby
from evsys_build.chunks import map_chunks, write_row_chunk
from evsys_build.errors import ConfigError, Interrupted
from evsys_build.store import Store, open_store


def square_chunk(location: str, chunk: dict) -> dict:
    """A worker task: the chunk's numbers squared, written to the store by the worker."""
    store = open_store(location)
    data = store.get_bytes(chunk["blob"]).decode()
    numbers = [int(line) for line in data.splitlines()]
    if 1013 in numbers:
        raise ConfigError(f"row {numbers.index(1013)}: thirteen")
    if -1 in numbers:
        os._exit(3)  # a worker killed mid-chunk
    time.sleep(0.02)  # long enough that workers, once started, take some chunks
    squared = "".join(f"{n * n}\n" for n in numbers).encode()
    return {"blob": store.put_bytes(squared), "rows": len(numbers), "pid": os.getpid()}


def number_chunks(store: Store, groups: list[list[int]]) -> list[dict]:
    return [{"blob": store.put_bytes("".join(f"{n}\n" for n in g).encode()), "rows": len(g)} for g in groups]


def run(store: Store, chunks: list[dict], processes: int, stop_check=None) -> dict[int, dict]:
    results: dict[int, dict] = {}
    workers = ChunkWorkers(task=square_chunk, args_of=lambda c: (str(store.root), c))
    compute_with_workers(workers, processes, chunks, list(range(len(chunks))), lambda c: square_chunk(str(store.root), c), results.__setitem__, stop_check)
    return results


def test_workers_compute_what_the_caller_would(tmp_path):
    store = Store(tmp_path / "store")
    chunks = number_chunks(store, [[i, i + 1, i + 2] for i in range(0, 120, 3)])
    here = run(store, chunks, 0)
    there = run(store, chunks, 2)
    assert [there[i]["blob"] for i in range(len(chunks))] == [here[i]["blob"] for i in range(len(chunks))]
    assert len({r["pid"] for r in there.values()}) >= 2  # the caller and at least one worker took chunks


def test_the_first_failing_chunk_in_order_is_raised(tmp_path):
    store = Store(tmp_path / "store")
    groups = [[i] for i in range(40)]
    groups[5], groups[38] = [1013], [1, 1013]  # chunk 38 fails first, in a worker (they take from the back); chunk 5 here
    with pytest.raises(ConfigError, match=r"^row 0: thirteen"):
        run(store, number_chunks(store, groups), 2)


def test_a_dead_workers_chunks_are_computed_by_the_caller(tmp_path):
    store = Store(tmp_path / "store")
    groups = [[i] for i in range(20)]
    groups[-1] = [-1]  # the workers take chunks from the back: the first worker task kills its worker
    chunks = number_chunks(store, groups)

    def compute(chunk: dict) -> dict:
        numbers = [int(x) for x in store.get_bytes(chunk["blob"]).decode().split()]
        return {"blob": store.put_bytes(b"dead"), "rows": len(numbers), "pid": os.getpid()} if numbers == [-1] else square_chunk(str(store.root), chunk)

    results: dict[int, dict] = {}
    workers = ChunkWorkers(task=square_chunk, args_of=lambda c: (str(store.root), c))
    compute_with_workers(workers, 1, chunks, list(range(len(chunks))), compute, results.__setitem__, None)
    assert sorted(results) == list(range(20))
    assert results[19]["pid"] == os.getpid()


def test_a_stop_ends_the_workers_and_keeps_what_finished(tmp_path, monkeypatch):
    monkeypatch.setenv("EVSYS_DATA_WORKERS", "2")
    store = Store(tmp_path / "store")
    chunks = number_chunks(store, [[i] for i in range(60)])
    calls = []

    def stop_check():
        calls.append(1)
        if len(calls) > 5:
            raise Interrupted("stopped")

    with pytest.raises(Interrupted):
        map_chunks(store, chunks, {"rule": "t"}, lambda c: square_chunk(str(store.root), c), None, stop_check,
                   ChunkWorkers(task=square_chunk, args_of=lambda c: (str(store.root), c), min_chunks=1))
    done, stats = map_chunks(store, chunks, {"rule": "t"}, lambda c: square_chunk(str(store.root), c))
    assert 0 < stats["chunks_cached"] < 60 and len(done) == 60


def test_an_unguarded_user_script_is_not_rerun_by_workers(tmp_path):
    """`python train.py` with no `if __name__ == "__main__"`: multiprocessing's spawn would run it
    again in every worker; these workers import only what the task names."""
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from evsys_build.store import Store
        from test_chunk_workers import number_chunks, run
        with open({str(tmp_path / "runs.log")!r}, "a") as log:
            log.write("ran\\n")
        store = Store({str(tmp_path / "store")!r})
        results = run(store, number_chunks(store, [[i] for i in range(40)]), 2)
        print(len(results))
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "40"
    assert (tmp_path / "runs.log").read_text() == "ran\n"


def test_map_chunks_with_workers_memoizes_every_chunk(tmp_path, monkeypatch):
    monkeypatch.setenv("EVSYS_DATA_WORKERS", "2")
    store = Store(tmp_path / "store")
    plain = number_chunks(store, [[i] for i in range(40)])
    workers = ChunkWorkers(task=square_chunk, args_of=lambda c: (str(store.root), c), min_chunks=8)
    out, stats = map_chunks(store, plain, {"rule": "sq"}, lambda c: square_chunk(str(store.root), c), None, None, workers)
    assert stats == {"chunks_ran": 40, "chunks_cached": 0}
    again, stats = map_chunks(store, plain, {"rule": "sq"}, lambda c: square_chunk(str(store.root), c), None, None, workers)
    assert stats == {"chunks_ran": 0, "chunks_cached": 40} and [c["blob"] for c in again] == [c["blob"] for c in out]


def test_tokenize_chunks_from_workers_equal_those_computed_here(tmp_path, tiny_model_dir):
    """The real tokenize task, in real workers (each loads the tokenizer itself): the same token blobs."""
    from evsys_rules.data.chat_tokens import load_tokenizer
    from evsys_rules.data.tokenize_chunk import TokenShaping, start_tokenize_worker, tokenize_chunk, tokenize_chunk_in_worker

    store = Store(tmp_path / "store")
    rows = [{"messages": [{"role": "user", "content": f"q{i} 🙂" * (i % 5 + 1)}, {"role": "assistant", "content": f"a{i}"}]} for i in range(120)]
    chunks = [write_row_chunk(store, rows[i : i + 10]) for i in range(0, 120, 10)]
    shaping = TokenShaping("all_assistant", 2048, "right", None)  # no template clock
    tok = load_tokenizer(str(tiny_model_dir))
    here = [tokenize_chunk(store, tok, c, 10 * i, shaping) for i, c in enumerate(chunks)]
    there: dict[int, dict] = {}
    computed_here = []

    def slowly_here(chunk: dict) -> dict:  # so the workers, once started, take most chunks
        computed_here.append(chunk["blob"])
        time.sleep(1.0)
        return tokenize_chunk(store, tok, chunk, 0, shaping)

    address = (str(store.root), None)
    start = functools.partial(start_tokenize_worker, address, str(tiny_model_dir), None)
    workers = ChunkWorkers(task=tokenize_chunk_in_worker, args_of=lambda c: (address, str(tiny_model_dir), None, shaping, c, 0), start=start)
    compute_with_workers(workers, 2, chunks, list(range(len(chunks))), slowly_here, there.__setitem__, None)
    assert [there[i] for i in range(len(chunks))] == here
    assert len(computed_here) < len(chunks)  # the rest came from the workers


def fails_in_a_worker(location: str, parent: int, chunk: dict) -> dict:
    """A task that fails only away from the calling process (say, out of memory there)."""
    if os.getpid() != parent:
        raise MemoryError("worker ran out of memory")
    return square_chunk(location, chunk)


def test_a_chunk_that_fails_in_a_worker_is_computed_again_by_the_caller(tmp_path):
    store = Store(tmp_path / "store")
    chunks = number_chunks(store, [[i] for i in range(60)])
    results: dict[int, dict] = {}
    tried = []
    workers = ChunkWorkers(task=fails_in_a_worker, args_of=lambda c: tried.append(c) or (str(store.root), os.getpid(), c))
    compute_with_workers(workers, 2, chunks, list(range(60)), lambda c: square_chunk(str(store.root), c), results.__setitem__, None)
    assert tried  # chunks were handed to workers, and failed there
    assert sorted(results) == list(range(60)) and {r["pid"] for r in results.values()} == {os.getpid()}


def test_a_built_in_transform_in_workers_writes_the_chunks_written_here(tmp_path):
    from evsys_build.chunks import read_row_chunk
    from evsys_rules.data.transforms import JsonlToChat
    from evsys_rules.nodes.transform import transform_chunk_in_worker

    store = Store(tmp_path / "store")
    transform = JsonlToChat(system_prompt="Pick a tool.", user_template="Q: {query}", assistant_template="<answer>{slug}</answer>")
    chunks = [write_row_chunk(store, [{"query": f"q{i} {j} ü\u2028", "slug": "S"} for j in range(5)]) for i in range(16)]
    here = [write_row_chunk(store, transform(read_row_chunk(store, c))) for c in chunks]
    there: dict[int, dict] = {}
    computed_here = []

    def slowly_here(chunk: dict) -> dict:
        computed_here.append(chunk["blob"])
        time.sleep(0.5)
        return here[chunks.index(chunk)]

    workers = ChunkWorkers(task=transform_chunk_in_worker, args_of=lambda c: ((str(store.root), None), transform, "transform[0] jsonl_to_chat", c))
    compute_with_workers(workers, 2, chunks, list(range(16)), slowly_here, there.__setitem__, None)
    assert [there[i] for i in range(16)] == here
    assert len(computed_here) < 16


def test_a_corrupt_chunk_met_in_a_worker_reaches_the_build_as_corrupt(tmp_path):
    """The worker quarantines the bad object; the build computes the chunk again and raises the
    CorruptObject (naming the object) that its heal path rebuilds the owner node for."""
    from evsys_build.errors import CorruptObject

    store = Store(tmp_path / "store")
    chunks = number_chunks(store, [[i] for i in range(60)])
    bad = chunks[59]["blob"]  # the workers take chunks from the back
    path = tmp_path / "store" / "objects" / bad[:2] / bad[2:]
    path.chmod(0o644)
    path.write_bytes(b"999\n")
    with pytest.raises(CorruptObject) as raised:
        run(store, chunks, 2)
    assert raised.value.args[0].startswith(f"object {bad}")


def test_workers_keep_computing_while_the_caller_is_busy_with_a_slow_chunk(tmp_path):
    """Workers are fed and their results recorded by a thread of their own: a caller busy with
    slow chunks neither starves them nor holds back their results."""
    store = Store(tmp_path / "store")
    chunks = number_chunks(store, [[i] for i in range(80)])
    here, there = [], {}

    def slowly_here(chunk: dict) -> dict:
        here.append(chunk["blob"])
        time.sleep(0.5)
        return square_chunk(str(store.root), chunk)

    workers = ChunkWorkers(task=square_chunk, args_of=lambda c: (str(store.root), c))
    compute_with_workers(workers, 1, chunks, list(range(80)), slowly_here, there.__setitem__, None)
    assert sorted(there) == list(range(80))
    assert len(here) <= 12  # one worker at 0.02 s a chunk does the rest (fed one result at a time, it would do about half)


def refuse_to_start() -> None:
    raise RuntimeError("this worker cannot start")


def child_pids() -> set[int]:
    """This process's living or unreaped children."""
    found: set[int] = set()
    for children in Path("/proc/self/task").glob("*/children"):
        found.update(int(pid) for pid in children.read_text().split())
    return found


def test_a_worker_started_ahead_computes_a_few_chunks_alone_and_ends_with_the_map(tmp_path, monkeypatch):
    """A stage warmed ahead (say, a tokenizer loading in its worker while the source is scanned):
    with fewer chunks to compute than start processes, that worker computes them all and this
    process none, then it ends; the map's results and memos are what computing here gives."""
    monkeypatch.setenv("EVSYS_DATA_WORKERS", "1")
    store = Store(tmp_path / "store")
    chunks = number_chunks(store, [[i, i + 1] for i in range(0, 10, 2)])
    before = child_pids()
    standby = start_standby("sq-stage", None)
    assert standby is not None and start_standby("sq-stage", None) is None  # one waits under that key already
    workers = ChunkWorkers(task=square_chunk, args_of=lambda c: (str(store.root), c), standby="sq-stage")
    here = [square_chunk(str(store.root), c) for c in chunks]
    out, stats = map_chunks(store, chunks, {"rule": "sq"}, lambda c: pytest.fail("computed here"), None, None, workers)
    assert stats == {"chunks_ran": 5, "chunks_cached": 0}
    assert [c["blob"] for c in out] == [c["blob"] for c in here]
    assert {c["pid"] for c in out} == {standby.worker.proc.pid}
    assert not standby_waiting("sq-stage") and child_pids() == before  # adopted, and ended with the map
    standby.close()  # closing an adopted one is harmless
    again, stats = map_chunks(store, chunks, {"rule": "sq"}, lambda c: pytest.fail("computed again"), None, None, workers)
    assert stats == {"chunks_ran": 0, "chunks_cached": 5} and again == out


def test_a_worker_started_ahead_that_dies_or_cannot_start_leaves_its_chunks_to_the_caller(tmp_path, monkeypatch):
    monkeypatch.setenv("EVSYS_DATA_WORKERS", "1")
    store = Store(tmp_path / "store")
    workers = ChunkWorkers(task=square_chunk, args_of=lambda c: (str(store.root), c), standby="sq-stage")

    def here(chunk: dict) -> dict:
        numbers = [int(x) for x in store.get_bytes(chunk["blob"]).decode().split()]
        return {"blob": store.put_bytes(b"here"), "rows": len(numbers), "pid": os.getpid()}

    start_standby("sq-stage", refuse_to_start)
    out, _ = map_chunks(store, number_chunks(store, [[1], [2], [3]]), {"rule": "a"}, here, None, None, workers)
    assert {c["pid"] for c in out} == {os.getpid()}

    start_standby("sq-stage", None)
    out, _ = map_chunks(store, number_chunks(store, [[4], [-1], [5]]), {"rule": "b"}, here, None, None, workers)
    assert len(out) == 3 and out[1]["pid"] == os.getpid()  # the chunk that killed the worker, computed here


def test_a_worker_started_ahead_that_no_map_adopts_is_ended_by_close(tmp_path, monkeypatch):
    monkeypatch.setenv("EVSYS_DATA_WORKERS", "1")
    before = child_pids()
    standby = start_standby("never-adopted", functools.partial(time.sleep, 60))  # still starting
    assert standby_waiting("never-adopted") and standby.worker.proc.pid in child_pids()
    started = time.monotonic()
    standby.close()
    assert time.monotonic() - started < 5 and child_pids() == before
    assert not standby_waiting("never-adopted")
    monkeypatch.setenv("EVSYS_DATA_WORKERS", "0")
    assert start_standby("never-adopted", None) is None  # a build without workers starts none


def test_a_worker_whose_build_was_killed_exits_quietly():
    """The build was SIGKILLed while its worker computed a chunk: the worker's answer meets a
    closed pipe, and it exits 0 without a traceback in the user's terminal (their stderr)."""
    import pickle

    def frame(value) -> bytes:
        data = pickle.dumps(value)
        return len(data).to_bytes(8, "little") + data

    worker = subprocess.Popen([sys.executable, "-m", "evsys_build.chunk_workers"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    worker.stdin.write(frame(sys.path) + frame(None))
    worker.stdin.flush()
    size = int.from_bytes(worker.stdout.read(8), "little")
    worker.stdout.read(size)  # ready
    worker.stdin.write(frame((time.sleep, (0.5,))))
    worker.stdin.flush()
    worker.stdout.close()  # the build is gone: nobody reads the answer
    err = worker.stderr.read()
    assert worker.wait(timeout=30) == 0 and b"Traceback" not in err, err
    worker.stdin.close()
