"""The run dir is replaced whole (a staging folder renamed into place); a build killed between the
two renames of that swap leaves the user's own files in its retired folder, and the next build
carries them over and removes what the killed one left."""

from __future__ import annotations

import subprocess
import sys

from evsys_rules.outputs.run_dir import replace_dir

OWNED = {"summary.md", "metrics.jsonl"}


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_users_files_stay_and_evsys_files_are_replaced(tmp_path):
    target = tmp_path / "out" / "run"
    replace_dir(target, {"summary.md": b"first", "metrics.jsonl": b"1"})
    (target / "my_notes.md").write_text("mine")
    (target / "old_evsys_file.png").write_bytes(b"x")
    replace_dir(target, {"summary.md": b"second", "metrics.jsonl": b"2"}, owned=lambda rel: rel in OWNED or rel.endswith(".png"))
    assert sorted(p.name for p in target.iterdir()) == ["metrics.jsonl", "my_notes.md", "summary.md"]
    assert (target / "summary.md").read_bytes() == b"second" and (target / "my_notes.md").read_text() == "mine"
    assert sorted(p.name for p in target.parent.iterdir()) == ["run"]


def test_a_build_killed_between_the_renames_loses_none_of_the_users_files(tmp_path):
    pid = dead_pid()
    out = tmp_path / "out"
    retired = out / f".run.evsys-old-{pid}"  # the run dir, moved aside; the new one never moved in
    retired.mkdir(parents=True)
    (retired / "summary.md").write_text("old")
    (retired / "my_notes.md").write_text("mine")
    staging = out / f".run.evsys-new-{pid}"
    staging.mkdir()
    (staging / "summary.md").write_text("half")
    replace_dir(out / "run", {"summary.md": b"new"}, owned=lambda rel: rel in OWNED)
    assert sorted(p.name for p in out.iterdir()) == ["run"]
    assert (out / "run" / "my_notes.md").read_text() == "mine" and (out / "run" / "summary.md").read_text() == "new"


def test_a_swap_in_progress_in_a_running_process_is_left_alone(tmp_path):
    import os

    out = tmp_path / "out"
    other = out / f".run.evsys-new-{os.getppid()}"  # a live process's staging folder
    other.mkdir(parents=True)
    replace_dir(out / "run", {"summary.md": b"new"}, owned=lambda rel: rel in OWNED)
    assert other.is_dir()


def test_builds_in_two_threads_of_one_process_each_swap_the_run_dir_whole(tmp_path):
    """Two builds of one process (a notebook's threads) write the same run dir at once: each swap
    uses its own folders, none fails, the run dir ends holding one build's files, whole, and the
    user's own file in it is never lost."""
    import threading

    target = tmp_path / "out" / "run"
    replace_dir(target, {"summary.md": b"0", "metrics.jsonl": b"0"})
    (target / "my_notes.md").write_text("mine")
    errors = []

    def build(n: int) -> None:
        try:
            for i in range(40):
                replace_dir(target, {"summary.md": f"{n}-{i}".encode(), "metrics.jsonl": f"{n}-{i}".encode()}, owned=lambda rel: rel in OWNED)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert (target / "summary.md").read_bytes() == (target / "metrics.jsonl").read_bytes()
    assert (target / "my_notes.md").read_text() == "mine"  # the user's file survives every swap
    assert sorted(p.name for p in target.parent.iterdir()) == ["run"]
