"""The store on disk: atomic writes, idempotent blobs, quarantine, prefixes, per-node locks, gc, verify.

Toy graphs of plain Nodes (no ML) whose runners count their executions into a file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from evsys_build.atomic import write_atomic
from evsys_build.errors import NodeFailed, UsageError
from evsys_build.executor import Executor
from evsys_build.graph import Graph, Node
from evsys_build.runs import new_run_id
from evsys_build.store import Store
from evsys_testkit import evsys

# -- a toy graph ---------------------------------------------------------------------------


def _counting_runner(ctx):
    """Append one line per execution to the count file; store a blob that depends on the inputs."""
    payload = ctx.node.payload
    with open(payload["count_file"], "a") as f:
        f.write(ctx.node.name + "\n")
    if payload.get("barrier"):
        payload["barrier"].wait(timeout=10)
    if payload.get("sleep"):
        import time

        time.sleep(payload["sleep"])
    upstream = "".join(sorted(m["outputs"]["data"]["blob"] for m in ctx.inputs.values()))
    blob = ctx.store.put_bytes(f"{ctx.node.name}:{ctx.node.params}:{upstream}".encode())
    return {"outputs": {"data": {"blob": blob}}, "stats": {"n": 1}}


def toy_graph(count_file: Path, tag: str = "a", **payload) -> Graph:
    """source → transform → final, keyed by `tag`."""
    graph = Graph()
    kw = dict(payload, count_file=str(count_file))
    src = graph.add(Node("source", "source", "1", {"tag": tag}, run=_counting_runner, payload=kw))
    mid = graph.add(Node("transform", "transform[0] upper", "1", {"tag": tag}, inputs=[("rows", src)], run=_counting_runner, payload=kw))
    graph.add(Node("tokenize", "tokenize", "1", {"tag": tag}, inputs=[("rows", mid)], run=_counting_runner, payload=kw))
    return graph


def executions(count_file: Path) -> list[str]:
    return count_file.read_text().splitlines() if count_file.exists() else []


def record_run(store: Store, graph: Graph, nodes=None, experiment: str = "exp") -> dict:
    """Record a completed run naming `nodes` (default: all of the graph), as a build does."""
    digests = {n.id: store.read_manifest(n.key)["output_digest"] for n in graph.nodes()}
    run = {
        "id": new_run_id(),
        "experiment": experiment,
        "status": "completed",
        "started": datetime.now(timezone.utc).isoformat(),
        "arms": {"default": {"nodes": {n.name: n.describe(digests) for n in (nodes or graph.nodes())}}},
    }
    store.write_run(run)
    return run


# -- atomic writes and blobs ---------------------------------------------------------------


def test_a_build_leaves_no_temp_files(tmp_path):
    store = Store(tmp_path / "cache")
    Executor(store).run(toy_graph(tmp_path / "count"))
    assert not list((tmp_path / "cache" / "tmp").iterdir())
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.name.startswith(".evsys-")]
    assert leftovers == []


def test_a_failed_atomic_write_leaves_neither_target_nor_temp(tmp_path):
    target = tmp_path / "out" / "file.json"
    with pytest.raises(TypeError):
        write_atomic(target, "not bytes", tmp_path / "tmp")  # the write itself fails
    assert not target.exists()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_an_atomic_write_replaces_whole_content(tmp_path):
    target = tmp_path / "f"
    write_atomic(target, b"first version, long", tmp_path / "tmp")
    write_atomic(target, b"second", tmp_path / "tmp")
    assert target.read_bytes() == b"second"


def test_put_bytes_is_idempotent_and_content_named(tmp_path):
    store = Store(tmp_path)
    name = store.put_bytes(b"payload")
    path = store.object_path(name)
    before = path.stat().st_mtime_ns
    assert store.put_bytes(b"payload") == name
    assert path.stat().st_mtime_ns == before  # not rewritten
    assert list(store.iter_objects()) == [name]
    assert store.get_bytes(name) == b"payload"
    assert store.put_bytes(b"payload2") != name


def test_missing_object_is_a_clear_store_error(tmp_path):
    from evsys_build.errors import StoreError

    with pytest.raises(StoreError, match="object abab.* is missing from"):
        Store(tmp_path).get_bytes("ab" * 16)


# -- corrupt entries -----------------------------------------------------------------------


def test_corrupt_manifest_is_quarantined_and_reads_as_a_miss(tmp_path, capsys):
    store = Store(tmp_path)
    store.write_manifest("ab" * 16, {"rule": "x"})
    path = tmp_path / "nodes" / "ab" / f"{'ab' * 16}.json"
    path.write_bytes(b'{"rule": "x", trunc')
    assert store.read_manifest("ab" * 16) is None
    assert not path.exists()
    quarantined = list((tmp_path / "quarantine").iterdir())
    assert len(quarantined) == 1 and quarantined[0].read_bytes() == b'{"rule": "x", trunc'
    err = capsys.readouterr().err
    assert "is corrupt (its checksum does not match its content)" in err and "a build makes it again" in err


def test_a_node_with_a_corrupt_manifest_runs_again(tmp_path):
    store = Store(tmp_path / "cache")
    count = tmp_path / "count"
    graph = toy_graph(count)
    Executor(store).run(graph)
    final = graph.nodes()[-1]
    manifest_path = tmp_path / "cache" / "nodes" / final.key[:2] / f"{final.key}.json"
    manifest_path.write_text("not json")
    Executor(store).run(toy_graph(count))
    assert executions(count) == ["source", "transform[0] upper", "tokenize", "tokenize"]
    assert store.read_manifest(final.key)["name"] == "tokenize"


# -- caching through the executor ----------------------------------------------------------


def test_a_second_run_executes_nothing(tmp_path):
    store = Store(tmp_path / "cache")
    count = tmp_path / "count"
    first = Executor(store)
    first.run(toy_graph(count))
    second = Executor(store)
    results = second.run(toy_graph(count))
    assert first.executions == 3 and second.executions == 0
    assert len(executions(count)) == 3
    assert {m["name"] for m in results.values()} == {"source", "transform[0] upper", "tokenize"}


def warmed_graph(count_file: Path, warmed: list, tag: str = "a") -> Graph:
    """The toy graph, its last node warmed (`Node.warm`): each warm-up is recorded."""
    graph = toy_graph(count_file, tag)
    last = next(n for n in graph.nodes() if n.name == "tokenize")
    last.warm = lambda store: warmed.append(store)
    return graph


def test_a_node_is_warmed_once_when_a_node_it_depends_on_runs_and_not_when_all_is_cached(tmp_path):
    store = Store(tmp_path / "cache")
    warmed: list = []
    Executor(store).run(warmed_graph(tmp_path / "count", warmed))
    for _ in range(100):  # the warm-up runs in a thread of its own
        if warmed:
            break
        threading.Event().wait(0.05)
    assert warmed == [store]  # the source ran: its downstream node was warmed, once
    Executor(store).run(warmed_graph(tmp_path / "count", warmed))
    assert len(warmed) == 1  # nothing ran: nothing warmed


def test_what_a_warm_up_leaves_is_closed_when_its_build_ends(tmp_path):
    """A warm-up may start what the node's run adopts (a worker process); what no run took is
    closed with the build, or at once when the warm-up finishes after the build."""
    closed = []

    class Leftover:
        def close(self):
            closed.append(self)

    for delay in (0.0, 1.0):
        graph = toy_graph(tmp_path / f"count{delay}", tag=str(delay))
        next(n for n in graph.nodes() if n.name == "tokenize").warm = lambda store, delay=delay: time.sleep(delay) or Leftover()
        Executor(Store(tmp_path / "cache")).run(graph)
        for _ in range(100):
            if len(closed) > delay:
                break
            threading.Event().wait(0.05)
    assert len(closed) == 2


def test_a_warm_up_that_fails_leaves_the_node_to_run_as_usual(tmp_path):
    graph = toy_graph(tmp_path / "count")
    next(n for n in graph.nodes() if n.name == "tokenize").warm = lambda store: 1 / 0
    executor = Executor(Store(tmp_path / "cache"))
    executor.run(graph)
    assert executor.executions == 3


def test_data_chunks_skip_fsync_and_everything_else_keeps_it(tmp_path, monkeypatch):
    """Chunk blobs and memos are checked on every read and cheap to recompute: written without
    fsync. Manifests, runs and other blobs are fsynced."""
    from evsys_build.chunks import map_chunks, write_row_chunk

    store = Store(tmp_path / "cache")
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))
    chunk = write_row_chunk(store, [{"a": 1}])
    map_chunks(store, [chunk], {"rule": "t"}, lambda c: write_row_chunk(store, [{"a": 2}]))
    assert synced == []
    blob = store.put_bytes(b"a checkpoint")
    staged, folder, parent = synced  # the shard folder objects/xx/ was new: its own name is made durable too
    assert Path(staged).name.startswith(".evsys-")
    assert any(p.name.startswith(blob[2:]) for p in Path(folder).iterdir()), "the folder holding the new name is fsynced, so the name survives a power failure"
    assert Path(parent) == Path(folder).parent


def test_a_token_chunk_that_does_not_hold_its_arrays_is_quarantined(tmp_path):
    from evsys_build.errors import CorruptObject
    from evsys_rules.data.chat_tokens import TokenRows
    from evsys_rules.data.token_chunks import read_token_chunk, write_token_chunk
    import numpy as np

    store = Store(tmp_path / "cache")
    good = write_token_chunk(store, TokenRows(np.array([1, 2, 3]), np.array([0.0, 1.0, 1.0]), np.array([0, 1, 3])))
    assert [(a.tolist(), b.tolist()) for a, b in read_token_chunk(store, good)] == [([1], [0.0]), ([2, 3], [1.0, 1.0])]
    bad = dict(good, blob=store.put_bytes(b"not three arrays"))
    with pytest.raises(CorruptObject, match="does not hold its arrays"):
        read_token_chunk(store, bad)
    assert not store.has_object(bad["blob"])  # quarantined: the tokenize node reads as not built
    short = dict(good, rows=1)  # a descriptor that disagrees with its arrays
    with pytest.raises(CorruptObject):
        read_token_chunk(store, short)


def test_manifest_records_rule_params_inputs_outputs_and_stats(tmp_path):
    store = Store(tmp_path / "cache")
    graph = toy_graph(tmp_path / "count")
    Executor(store).run(graph)
    src, mid, _ = graph.nodes()
    m = store.read_manifest(mid.key)
    assert m["rule"] == "transform" and m["version"] == "1" and m["params"] == {"tag": "a"}
    src_manifest = store.read_manifest(src.key)
    assert m["inputs"] == [{"label": "rows", "key": src.key, "id": src.id, "name": "source", "rule": "source", "digest": src_manifest["output_digest"]}]
    assert m["output_digest"] and m["id"] == mid.id
    assert store.has_object(m["outputs"]["data"]["blob"])
    assert m["stats"] == {"n": 1} and "seconds" in m["timings"] and m["key"] == mid.key


def test_a_failing_node_stores_nothing_and_stops_its_dependents(tmp_path):
    def boom(ctx):
        raise RuntimeError("broken rule")

    graph = Graph()
    src = graph.add(Node("source", "source", "1", {}, run=_counting_runner, payload={"count_file": str(tmp_path / "count")}))
    bad = graph.add(Node("transform", "transform[0] bad", "1", {}, inputs=[("rows", src)], run=boom))
    graph.add(Node("tokenize", "tokenize", "1", {}, inputs=[("rows", bad)], run=_counting_runner, payload={"count_file": str(tmp_path / "count")}))
    store = Store(tmp_path / "cache")
    with pytest.raises(NodeFailed, match="transform\\[0\\] bad failed: RuntimeError: broken rule"):
        Executor(store).run(graph)
    assert store.has_manifest(src.key)
    assert not store.has_manifest(bad.key)
    assert executions(tmp_path / "count") == ["source"]


def test_a_stop_names_what_every_stopped_node_kept(tmp_path):
    """Two trainings of a sweep stop on one Ctrl-C: the one line the build ends with says what
    each kept, not only the first to report."""
    from evsys_build.errors import Interrupted

    stop = threading.Event()
    both_running = threading.Barrier(2)

    def training(ctx):
        both_running.wait(timeout=10)
        stop.set()
        raise Interrupted(f"{ctx.node.name} stopped after step 3 of 9 (checkpoint@3 saved)")

    graph = Graph()
    graph.add(Node("train", "[a1] train", "1", {"arm": 1}, run=training))
    graph.add(Node("train", "[a2] train", "1", {"arm": 2}, run=training))
    with pytest.raises(Interrupted) as info:
        Executor(Store(tmp_path / "cache"), jobs=2, stop=stop).run(graph)
    assert "[a1] train stopped after step 3" in info.value.message and "[a2] train stopped after step 3" in info.value.message


# -- the per-node lock ---------------------------------------------------------------------


def test_two_threads_sharing_a_store_run_each_node_once(tmp_path):
    """Both executors see the node uncached at once (a barrier holds them); the lock makes one wait."""
    count = tmp_path / "count"
    store_root = tmp_path / "cache"
    start = threading.Barrier(2)
    errors = []

    def build():
        try:
            graph = Graph()
            graph.add(Node("source", "slow", "1", {"n": 1}, run=_counting_runner, payload={"count_file": str(count), "sleep": 0.5}))
            start.wait(timeout=10)
            Executor(Store(store_root)).run(graph)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert executions(count) == ["slow"]


LOCK_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from evsys_build.executor import Executor
    from evsys_build.graph import Graph, Node
    from evsys_build.store import Store

    root, count, me, other = (Path(a) for a in sys.argv[1:5])

    def run(ctx):
        with open(count, "a") as f:
            f.write("ran\\n")
        time.sleep(1.0)
        return {"outputs": {"data": {"blob": ctx.store.put_bytes(b"result")}}}

    graph = Graph()
    graph.add(Node("source", "slow", "1", {"n": 1}, run=run))
    me.touch()
    deadline = time.time() + 20
    while not other.exists() and time.time() < deadline:  # start together
        time.sleep(0.01)
    executor = Executor(Store(root))
    executor.run(graph)
    print(executor.executions)
    """
)


def test_two_processes_sharing_a_store_run_each_node_once(tmp_path):
    script = tmp_path / "build_once.py"
    script.write_text(LOCK_SCRIPT)
    root, count = tmp_path / "cache", tmp_path / "count"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(root), str(count), str(tmp_path / f"ready{i}"), str(tmp_path / f"ready{1 - i}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(int(o.strip()) for o, _ in outs) == [0, 1]
    assert executions(count) == ["ran"]
    assert Store(root).read_manifest(next(Store(root).iter_manifests()))["name"] == "slow"


# -- prefixes ------------------------------------------------------------------------------


def _store_with_keys(root: Path, keys: list[str]) -> Store:
    store = Store(root)
    for key in keys:
        store.write_manifest(key, {"rule": "source", "name": key[:6]})
    return store


def test_resolve_prefix_unique_with_or_without_node_prefix(tmp_path):
    store = _store_with_keys(tmp_path, ["abcd" + "0" * 28, "abef" + "0" * 28, "12" + "3" * 30])
    assert store.resolve_prefix("node:abc") == "abcd" + "0" * 28
    assert store.resolve_prefix("ABCD") == "abcd" + "0" * 28
    assert store.resolve_prefix("12") == "12" + "3" * 30


def test_resolve_prefix_ambiguous_names_the_candidates(tmp_path):
    store = _store_with_keys(tmp_path, ["abcd" + "0" * 28, "abef" + "0" * 28])
    with pytest.raises(UsageError) as info:
        store.resolve_prefix("node:ab")
    msg = info.value.message
    assert "ambiguous (2 nodes" in msg and "abcd00000000" in msg and "abef00000000" in msg and "more characters" in msg


def test_resolve_prefix_unknown_and_too_short(tmp_path):
    store = _store_with_keys(tmp_path, ["abcd" + "0" * 28])
    with pytest.raises(UsageError, match="no node matches 'ffff'.*evsys plan CONFIG"):
        store.resolve_prefix("node:ffff")
    with pytest.raises(UsageError, match="too short"):
        store.resolve_prefix("node:a")


# -- gc and verify through the CLI ---------------------------------------------------------


def _two_builds(tmp_path: Path) -> tuple[Store, Graph, Graph]:
    """Graph `keep` is named by a run; graph `drop` was built but no run names it."""
    store = Store(tmp_path / "cache")
    keep, drop = toy_graph(tmp_path / "count", "keep"), toy_graph(tmp_path / "count", "drop")
    Executor(store).run(keep)
    Executor(store).run(drop)
    record_run(store, keep)
    return store, keep, drop


def _objects_of(store: Store, graph: Graph) -> set[str]:
    return {store.read_manifest(n.key)["outputs"]["data"]["blob"] for n in graph.nodes()}


def test_gc_dry_run_removes_nothing(tmp_path):
    store, keep, drop = _two_builds(tmp_path)
    def files():
        return sorted(p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.parent.name != "locks")

    before = files()
    proc = evsys("gc", "--dry-run", "--cache-dir", "cache", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "kept 1 runs and 3 nodes; would remove 0 runs, 3 nodes, 3 objects" in proc.stdout
    assert "would remove 3 nodes of (no run references it)" in proc.stdout
    assert files() == before


def test_gc_keeps_what_refs_reach_and_removes_the_rest(tmp_path):
    store, keep, drop = _two_builds(tmp_path)
    kept_objects, dropped_objects = _objects_of(store, keep), _objects_of(store, drop)
    proc = evsys("gc", "--cache-dir", "cache", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "kept 1 runs and 3 nodes; removed 0 runs, 3 nodes, 3 objects" in proc.stdout
    assert all(store.has_manifest(n.key) for n in keep.nodes())
    assert not any(store.has_manifest(n.key) for n in drop.nodes())
    assert all(store.has_object(o) for o in kept_objects)
    assert not any(store.has_object(o) for o in dropped_objects)
    # the kept graph is still fully cached and the store verifies clean
    ex = Executor(store)
    ex.run(toy_graph(tmp_path / "count", "keep"))
    assert ex.executions == 0
    assert evsys("verify", "--cache-dir", "cache", cwd=tmp_path).returncode == 0


def test_gc_keeps_the_inputs_of_referenced_nodes(tmp_path):
    """A run naming only the final node keeps its whole input chain."""
    store = Store(tmp_path / "cache")
    graph = toy_graph(tmp_path / "count", "chain")
    Executor(store).run(graph)
    record_run(store, graph, nodes=[graph.nodes()[-1]])
    evsys("gc", "--cache-dir", "cache", cwd=tmp_path)
    assert all(store.has_manifest(n.key) for n in graph.nodes())


def test_gc_drops_chunk_memos_whose_objects_it_removed(tmp_path):
    store, keep, drop = _two_builds(tmp_path)
    kept_blob = next(iter(_objects_of(store, keep)))
    dropped_blob = next(iter(_objects_of(store, drop)))
    store.memo_put("aa" * 16, {"chunk": {"blob": kept_blob, "rows": 1}})
    store.memo_put("bb" * 16, {"chunk": {"blob": dropped_blob, "rows": 1}})
    evsys("gc", "--cache-dir", "cache", cwd=tmp_path)
    assert store.memo_get("aa" * 16) is not None
    assert store.memo_get("bb" * 16) is None


def test_verify_reports_a_tampered_object(tmp_path):
    store = Store(tmp_path / "cache")
    graph = toy_graph(tmp_path / "count")
    Executor(store).run(graph)
    clean = evsys("verify", "--cache-dir", "cache", cwd=tmp_path)
    assert clean.returncode == 0 and "0 problem(s)" in clean.stdout
    victim = store.read_manifest(graph.nodes()[1].key)["outputs"]["data"]["blob"]
    os.chmod(store.object_path(victim), 0o644)
    store.object_path(victim).write_bytes(b"tampered")
    proc = evsys("verify", "--cache-dir", "cache", cwd=tmp_path)
    assert proc.returncode == 1
    node = graph.nodes()[1]
    assert f"object {victim}: corrupt (its bytes do not match its name); owned by {node.name} node:{node.key[:12]}" in proc.stdout
    assert "1 problem(s)" in proc.stdout
    assert store.object_path(victim).read_bytes() == b"tampered"  # reported, not touched


def test_verify_reports_a_missing_object(tmp_path):
    store = Store(tmp_path / "cache")
    graph = toy_graph(tmp_path / "count")
    Executor(store).run(graph)
    node = graph.nodes()[0]
    blob = store.read_manifest(node.key)["outputs"]["data"]["blob"]
    store.object_path(blob).unlink()
    proc = evsys("verify", "--cache-dir", "cache", cwd=tmp_path)
    assert proc.returncode == 1
    assert f"source node:{node.key[:12]}: object {blob} is missing" in proc.stdout


def test_refs_round_trip_and_names_are_made_safe(tmp_path):
    store = Store(tmp_path)
    store.write_ref("my exp/1", "arm:r8", {"experiment": "my exp/1", "arm": "arm:r8", "nodes": {"source": {"key": "k"}}})
    assert store.read_ref("my exp/1", "arm:r8")["nodes"] == {"source": {"key": "k"}}
    assert [(e, a) for e, a, _ in store.iter_refs()] == [("my exp/1", "arm:r8")]  # the names the ref records
    assert store.read_ref("other", "default") == {}
    assert json.loads((tmp_path / "refs" / "my_exp_1" / "arm_r8.json").read_text())["nodes"]["source"]["key"] == "k"


def test_experiments_whose_names_the_store_writes_alike_never_read_each_others_records(tmp_path):
    """`cut off` and `cut_off` (two configs: neither sees the other's name) share a folder; each
    reads only its own runs and ref, so a plan of one never diffs against the other's build."""
    store = Store(tmp_path)
    store.write_ref("cut_off", "default", {"experiment": "cut_off", "arm": "default", "run": "2"})
    store.write_ref("cut off", "default", {"experiment": "cut off", "arm": "default", "run": "1"})  # another experiment's, though older
    assert store.read_ref("cut_off", "default") == {}
    assert store.read_ref("cut off", "default")["run"] == "1"
    for i, name in enumerate(("cut off", "cut_off", "cut/off")):
        store.write_run({"experiment": name, "id": f"20261129T000000.00000{i}Z-abcdef", "status": "completed", "finished": "x"})
    for name in ("cut off", "cut_off", "cut/off"):
        assert [r["experiment"] for r in store.iter_runs(name)] == [name]


# -- the stat cache ------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["build", "plan"])
def test_a_store_location_that_is_a_file_is_one_line(tmp_path, command):
    from evsys_testkit import BASE_CONFIG, make_project, tool_rows

    project = make_project(tmp_path / "p", tool_rows(4), BASE_CONFIG)
    (project / "afile").write_text("x\n")
    for where in ("afile", "afile/store"):
        proc = evsys(command, "config.yaml", "--cache-dir", where, cwd=project)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == f"evsys: error: {where}: afile is a file, not a folder; a store is a folder (check --cache-dir, $EVSYS_CACHE or --remote)"


def test_an_immediate_exit_leaves_none_of_its_own_staging_files(tmp_path):
    """A process leaving by os._exit (an interrupted build) removes what its writer threads were
    staging; another live process's staging files are left alone."""
    script = textwrap.dedent(f"""
        import os, threading
        from pathlib import Path
        from evsys_build import atomic, interrupts
        staging = Path({str(tmp_path / "tmp")!r}); staging.mkdir()
        (staging / ".evsys-1-0").write_bytes(b"pid 1 is alive: not ours")
        fd, name = atomic._staging_file(staging)   # a writer thread mid-write
        os.write(fd, b"half")
        interrupts.exit_now(130)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 130, proc.stderr
    assert sorted(p.name for p in (tmp_path / "tmp").iterdir()) == [".evsys-1-0"]


def test_a_second_ctrl_c_leaves_none_of_its_own_staging_files(tmp_path):
    """The "exit now" path (a second signal) ends writer threads mid-write too."""
    script = textwrap.dedent(f"""
        import os, signal, threading, time
        from pathlib import Path
        from evsys_build import atomic, interrupts
        staging = Path({str(tmp_path / "tmp")!r}); staging.mkdir()
        with interrupts.stop_on_signals(threading.Event()):
            fd, name = atomic._staging_file(staging)
            os.write(fd, b"half")
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130 and "exiting now" in proc.stderr, proc.stderr
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_full_disk_names_the_write_that_failed_not_the_run_record_after_it(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """A disk that fills while a node stores its result also refuses the run's final record: the
    error is the node's write (what the user must make room for); the record's is a warning."""
    from evsys_build.atomic import WriteFailed
    from evsys_build.build import run_build
    from evsys_testkit import BASE_CONFIG, make_project, tool_rows

    project = make_project(tmp_path / "p", tool_rows(8), BASE_CONFIG)
    monkeypatch.chdir(project)
    store = Store(project / "cache")
    real_write_run = Store.write_run

    def write_run(self, run):
        if run["status"] != "running":
            raise WriteFailed("cannot write cache/runs/x.json: No space left on device")
        return real_write_run(self, run)

    def write_manifest(self, key, manifest, **kw):
        raise WriteFailed("cannot write cache/nodes/ab/cd.json: No space left on device")

    monkeypatch.setattr(Store, "write_run", write_run)
    monkeypatch.setattr(Store, "write_manifest", write_manifest)
    with pytest.raises(WriteFailed, match="nodes/ab/cd.json"):
        run_build(Path("config.yaml"), store, echo=lambda line: None)
    assert "evsys: warning: this run could not be recorded (cannot write cache/runs/x.json: No space left on device)" in capsys.readouterr().err
