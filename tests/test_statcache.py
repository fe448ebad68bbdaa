"""The stat cache: unchanged files are not reread; any real change is rehashed, never served stale."""

from __future__ import annotations

import json
import os
import time


def test_stat_cache_does_not_reread_an_unchanged_file(tmp_path, monkeypatch):
    """Same stat (size, mtime, inode, ctime, device): the stored digest is reused without reading the file."""
    from evsys_build.hashing import digest_bytes
    from evsys_build.statcache import StatCache

    import evsys_build.statcache as statcache_module

    data = tmp_path / "train.jsonl"
    data.write_bytes(b'{"a": 1}\n')
    old = time.time_ns() - 10 * statcache_module.RACY_NS  # well outside the racy window
    os.utime(data, ns=(old, old))
    hashed = []
    real_hasher = statcache_module.xxhash.xxh3_128

    def counting_hasher():
        hashed.append(1)
        return real_hasher()

    monkeypatch.setattr(statcache_module.xxhash, "xxh3_128", counting_hasher)
    cache = StatCache(tmp_path / "stat-cache.json")
    first = cache.file_digest(data)
    assert first == digest_bytes(b'{"a": 1}\n') and len(hashed) == 1
    assert cache.file_digest(data) == first and len(hashed) == 1  # unchanged stat: not reread
    with open(data, "r+b") as f:  # same inode and size, then the old mtime put back (cp -p, rsync -t)
        f.write(b'{"a": 2}\n')
    os.utime(data, ns=(old, old))
    assert cache.file_digest(data) == digest_bytes(b'{"a": 2}\n')  # ctime moved: rehashed, never stale


def test_stat_cache_rehashes_files_modified_just_now(tmp_path):
    from evsys_build.hashing import digest_bytes
    from evsys_build.statcache import StatCache

    data = tmp_path / "train.jsonl"
    data.write_bytes(b"x\n")
    cache = StatCache(tmp_path / "stat-cache.json")
    cache.file_digest(data)
    data.write_bytes(b"y\n")  # within the same timestamp tick on coarse filesystems
    assert cache.file_digest(data) == digest_bytes(b"y\n")


def test_stat_cache_persists_across_runs(tmp_path):
    from evsys_build.statcache import RACY_NS, StatCache

    data = tmp_path / "train.jsonl"
    data.write_bytes(b"x\n")
    old = time.time_ns() - 10 * RACY_NS
    os.utime(data, ns=(old, old))
    first = StatCache(tmp_path / "stat-cache.json")
    digest = first.file_digest(data)
    first.save()
    saved = json.loads((tmp_path / "stat-cache.json").read_text())
    assert [entry[-1] for entry in saved.values()] == [digest]
    assert StatCache(tmp_path / "stat-cache.json")._load() == saved  # a new process reads what was saved


def test_stat_cache_survives_a_corrupt_file(tmp_path):
    from evsys_build.hashing import digest_bytes
    from evsys_build.statcache import StatCache

    (tmp_path / "stat-cache.json").write_text("{broken")
    data = tmp_path / "d"
    data.write_bytes(b"z")
    assert StatCache(tmp_path / "stat-cache.json").file_digest(data) == digest_bytes(b"z")


def test_a_digest_taken_while_the_file_was_racy_is_not_kept(tmp_path, monkeypatch):
    """Coarse timestamps (1 s on ext3, FAT, many network mounts): a same-size save in the tick the
    build hashed the file in leaves its whole stat as it was, so a digest taken while the file was
    that young must not be stored for later builds to trust."""
    import evsys_build.statcache as statcache_module
    from evsys_build.hashing import digest_bytes
    from evsys_build.statcache import RACY_NS, StatCache

    data = tmp_path / "train.jsonl"
    data.write_bytes(b"old\n")
    frozen = os.stat(data)
    real_stat = os.stat
    monkeypatch.setattr(statcache_module.os, "stat", lambda f, *a, **k: frozen if str(f) == str(data) else real_stat(f, *a, **k))
    cache = StatCache(tmp_path / "stat-cache.json")
    assert cache.file_digest(data) == digest_bytes(b"old\n")
    data.write_bytes(b"new\n")  # same size, same tick: the (frozen) stat does not move
    cache.save()
    later = frozen.st_mtime_ns + 10 * RACY_NS
    monkeypatch.setattr(statcache_module.time, "time_ns", lambda: later)
    assert cache.file_digest(data) == digest_bytes(b"new\n")
    assert StatCache(tmp_path / "stat-cache.json").file_digest(data) == digest_bytes(b"new\n")
