"""The store contract, one suite over every place a store can live (Hamilton-style): a local folder,
and S3 through s3fs against a real S3-protocol server (moto) that the session starts.

What every location must guarantee: create-only objects and manifests, a digest check on every
read (a torn or tampered object is never served), a manifest only after its objects, refs and runs
updated by compare-and-swap, batched existence checks, and a per-node lock that holds between
everything sharing the store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from evsys_build.errors import CorruptObject
from evsys_build.executor import Executor
from evsys_build.gc import _collect
from evsys_build.hashing import digest_bytes
from evsys_build.store import Store, open_store
from test_store import executions, toy_graph

pytestmark = pytest.mark.store_contract
KEY = "ab" * 16


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def location(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_url")


def raw_write(store: Store, path: str, data: bytes) -> None:
    """Overwrite a store file behind the store's back (a bit flip, a torn upload, an old tool)."""
    bucket = store.bucket
    if hasattr(bucket, "api"):
        bucket.api.put(bucket.api.key(path), data)
    else:
        target = bucket.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def in_parallel(n: int, fn) -> list:
    """Run fn(i) in n threads released together; returns their results in order."""
    start, results = threading.Barrier(n), [None] * n

    def run(i):
        start.wait(timeout=30)
        results[i] = fn(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


# -- objects ---------------------------------------------------------------------------------


def test_objects_are_named_by_content_and_every_read_is_checked(location, capsys):
    store = open_store(location)
    name = store.put_bytes(b"tokenized rows")
    assert name == digest_bytes(b"tokenized rows") and store.put_bytes(b"tokenized rows") == name
    assert store.get_bytes(name) == b"tokenized rows"
    raw_write(store, f"objects/{name[:2]}/{name[2:]}", b"tokenized rowz")  # same size, one byte flipped
    with pytest.raises(CorruptObject, match="corrupt"):
        store.get_bytes(name)
    assert "quarantine" in capsys.readouterr().err
    assert not store.has_object(name)  # moved aside: every node naming it now reads as not built
    assert store.put_bytes(b"tokenized rows") == name and store.get_bytes(name) == b"tokenized rows"


def test_a_partially_uploaded_object_is_never_served(location):
    """A torn upload committed under the object's name (fsspec commits a `with open(..., "wb")`
    left by an exception; an old tool may copy half a file) is caught on read, not served."""
    store = open_store(location)
    data = os.urandom(300_000)
    name = store.put_bytes(data)
    raw_write(store, f"objects/{name[:2]}/{name[2:]}", data[:150_000])
    with pytest.raises(CorruptObject):
        store.get_bytes(name)
    assert store.put_bytes(data) == name and store.get_bytes(name) == data  # rewritten whole


@pytest.mark.s3
def test_an_unfinished_multipart_upload_is_invisible_and_gc_aborts_it(s3_url):
    """A writer killed in the middle of a multipart upload leaves nothing a reader can see."""
    store = open_store(s3_url)
    name = digest_bytes(b"x" * 10)
    api = store.bucket.api
    script = textwrap.dedent(f"""
        import os
        from evsys_build.store import open_store
        api = open_store({s3_url!r}).bucket.api
        up = api._sync(api.fs._call_s3("create_multipart_upload", Bucket=api.bucket, Key={api.key(f"objects/{name[:2]}/{name[2:]}")!r}))
        api._sync(api.fs._call_s3("upload_part", Bucket=api.bucket, Key=up["Key"], UploadId=up["UploadId"], PartNumber=1, Body=b"x" * 5))
        os._exit(9)  # killed before completing it
    """)
    assert subprocess.run([sys.executable, "-c", script], env=os.environ).returncode == 9
    assert not store.has_object(name)
    with pytest.raises(CorruptObject, match="missing"):
        store.get_bytes(name)
    assert len(api.stale_uploads(api.key(""), older_than=-60)) == 1
    assert api.abort_uploads(api.stale_uploads(api.key(""), older_than=-60)) == 1


# -- manifests -----------------------------------------------------------------------------------


def test_eight_concurrent_writers_of_one_key_agree_on_one_manifest(location):
    """Eight builds finish the same node at once with different bytes (a nondeterministic rule):
    exactly one manifest is stored, and every writer gets that one back to key its dependents on."""
    stores = [open_store(location) for _ in range(8)]

    def write(i):
        blob = stores[i].put_bytes(f"writer {i}".encode())
        return stores[i].write_manifest(KEY, {"name": "train", "outputs": {"weights": {"blob": blob}}})

    returned = in_parallel(8, write)
    stored = open_store(location).read_manifest(KEY)
    assert stored is not None
    assert all(m == stored for m in returned)
    assert open_store(location).get_bytes(stored["outputs"]["weights"]["blob"]).startswith(b"writer ")
    won = in_parallel(8, lambda i: stores[i].bucket.create("refs/contended.json", f"writer {i}".encode()))
    assert sum(won) == 1


def test_a_manifest_is_written_only_after_every_object_it_names(location):
    store = open_store(location)
    present = store.put_bytes(b"present")
    missing = digest_bytes(b"never stored")
    with pytest.raises(CorruptObject, match="vanished before its manifest"):
        store.write_manifest(KEY, {"outputs": {"a": {"blob": present}, "b": {"blob": missing}}})
    assert not store.has_manifest(KEY)


def test_a_crash_between_objects_and_manifest_leaves_the_node_unbuilt(location, tmp_path):
    """Nix's order: the objects land, the process dies before the manifest; the node reads as not
    built, the next build runs it, and gc removes the orphans."""
    script = textwrap.dedent(f"""
        import os
        from evsys_build.store import open_store
        store = open_store({location!r})
        for i in range(3):
            store.put_bytes(b"orphan %d" % i)
        os._exit(9)  # dies before write_manifest
    """)
    assert subprocess.run([sys.executable, "-c", script], env=os.environ).returncode == 9
    store = open_store(location)
    orphans = [digest_bytes(b"orphan %d" % i) for i in range(3)]
    assert not store.missing_objects(orphans)
    count = tmp_path / "count"
    graph = toy_graph(count)
    assert [store.complete_manifest(n.key) for n in graph.nodes() if n.key] == []  # keys unknown: nothing built
    Executor(store).run(graph)
    assert executions(count) == ["source", "transform[0] upper", "tokenize"]
    report = _collect(store, keep_last=0, keep_within_days=0, dry_run=False, now=0.0)  # no run keeps anything
    assert report.removed_objects >= 3 and store.missing_objects(orphans) == orphans


def test_a_corrupt_manifest_is_quarantined_and_the_node_rebuilt(location, tmp_path):
    store = open_store(location)
    count = tmp_path / "count"
    graph = toy_graph(count)
    Executor(store).run(graph)
    final = graph.nodes()[-1]
    raw_write(store, f"nodes/{final.key[:2]}/{final.key}.json", b'{"truncated": ')
    Executor(open_store(location)).run(toy_graph(count))
    assert executions(count) == ["source", "transform[0] upper", "tokenize", "tokenize"]
    assert open_store(location).read_manifest(final.key)["name"] == "tokenize"


# -- refs and runs ---------------------------------------------------------------------------------


def test_racing_ref_updates_lose_nothing_and_keep_the_newest_run(location):
    stores = [open_store(location) for _ in range(8)]
    order = [3, 7, 0, 5, 1, 6, 2, 4]

    def finish(i):
        run_id = f"20260101T00000{order[i]}Z-run"
        stores[i].write_ref("exp", "arm", {"run": run_id, "nodes": {}})
        for _ in range(3):
            stores[i].update_json("runs/exp/tally.json", lambda d: {**d, "n": d.get("n", 0) + 1, f"w{i}": True})

    in_parallel(8, finish)
    store = open_store(location)
    assert store.read_ref("exp", "arm")["run"] == "20260101T000007Z-run"
    tally = store.read_run("exp", "tally")
    assert tally["n"] == 24 and all(tally[f"w{i}"] for i in range(8))


def test_a_finished_run_record_is_never_overwritten_by_an_unfinished_one(location):
    store = open_store(location)
    store.write_run({"experiment": "e", "id": "r1", "status": "completed", "finished": "2026-01-01T00:00:00+00:00"})
    store.write_run({"experiment": "e", "id": "r1", "status": "running", "finished": None})
    assert store.read_run("e", "r1")["status"] == "completed"


# -- existence, locks ----------------------------------------------------------------------------


def test_existence_checks_are_batched(location):
    store = open_store(location)
    present = [store.put_bytes(b"blob %d" % i) for i in range(40)]
    absent = [digest_bytes(b"absent %d" % i) for i in range(40)]
    calls = []
    bucket = store.bucket
    original = bucket.exists_many
    bucket.exists_many = lambda paths: calls.append(len(paths)) or original(paths)
    assert store.missing_objects(present + absent) == absent
    assert calls == [80]  # one batched call for all 80 names
    if hasattr(bucket, "api"):  # remotely: one listing per shard folder, concurrent, no HEAD per name
        api, listed, headed = bucket.api, [], []
        lister, header = api._list, api._head
        api._list = lambda prefix: listed.append(prefix) or lister(prefix)
        api._head = lambda key: headed.append(key) or header(key)
        assert store.missing_objects(present + absent) == absent
        assert headed == [] and len(listed) == len({n[:2] for n in present + absent}) <= 80


def test_the_node_lock_holds_between_stores_sharing_a_location(location):
    first, second = open_store(location), open_store(location)
    order, holding = [], threading.Event()

    def hold():
        with first.lock(KEY):
            holding.set()
            order.append("first in")
            order.append("first out")

    def wait():
        holding.wait(timeout=30)
        with second.lock(KEY):
            order.append("second in")

    threads = [threading.Thread(target=hold), threading.Thread(target=wait)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert order == ["first in", "first out", "second in"]


def test_waiting_for_a_node_lock_says_so_and_a_stop_ends_the_wait(location):
    """A second build waiting for a node another build runs (maybe for hours) says it waits, and
    Ctrl-C ends the wait at once instead of when the other build lets go."""
    from evsys_build.errors import Interrupted

    first, second = open_store(location), open_store(location)
    holding, release, stop = threading.Event(), threading.Event(), threading.Event()
    said = []

    def hold():
        with first.lock(KEY):
            holding.set()
            release.wait(timeout=60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(timeout=30)
        threading.Timer(0.5, stop.set).start()
        started = time.monotonic()
        with pytest.raises(Interrupted, match="stopped while waiting for another build"):
            with second.lock(KEY, lambda: said.append("waiting"), stop):
                pass
        assert said == ["waiting"] and time.monotonic() - started < 10
    finally:
        release.set()
        holder.join(timeout=60)
    with second.lock(KEY, lambda: said.append("again"), threading.Event()):  # free now: taken without waiting
        pass
    assert said == ["waiting"]


def test_two_builds_sharing_a_store_run_each_node_once(location, tmp_path):
    count = tmp_path / "count"
    in_parallel(2, lambda i: Executor(open_store(location)).run(toy_graph(count, sleep=0.3)))
    assert executions(count) == ["source", "transform[0] upper", "tokenize"]


# -- copies between stores ---------------------------------------------------------------------------


def test_push_and_read_through_copy_whole_nodes(location, tmp_path):
    """A node built in one store is pushed to another; a third store reading through the second
    gets it complete (objects before manifest) and never runs it."""
    from evsys_build.sync import sync_nodes

    local = Store(tmp_path / "mine")
    count = tmp_path / "count"
    graph = toy_graph(count)
    Executor(local).run(graph)
    shared = open_store(location)
    report = sync_nodes(local, shared, [n.key for n in graph.nodes()])
    assert report.nodes_copied == 3 and report.objects_copied == 3
    assert sync_nodes(local, shared, [n.key for n in graph.nodes()]).nodes_present == 3
    teammate = Store(tmp_path / "theirs", upstream=open_store(location))
    Executor(teammate).run(toy_graph(count))
    assert executions(count) == ["source", "transform[0] upper", "tokenize"]  # nothing ran again
    assert all(Store(tmp_path / "theirs").complete_manifest(n.key) for n in graph.nodes())
    assert json.loads(json.dumps(Store(tmp_path / "theirs").read_manifest(graph.nodes()[-1].key)))["name"] == "tokenize"
