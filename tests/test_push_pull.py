"""A team sharing one store on S3 (moto, started by the session), through the real CLI: push, pull,
read-through, and building, listing, verifying and collecting directly on the remote store."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from evsys_build.store import Store, open_store
from evsys_testkit import evsys, ok, ran_lines

pytestmark = pytest.mark.s3


def teammate(built_project: Path, dest: Path) -> Path:
    """Someone else's checkout of the same experiment: config and data, no store."""
    dest.mkdir(parents=True)
    shutil.copy(built_project / "config.yaml", dest / "config.yaml")
    shutil.copytree(built_project / "data", dest / "data")
    return dest


def test_push_then_pull_gives_a_teammate_every_node(project_copy, s3_url, tmp_path):
    pushed = ok(evsys("push", "config.yaml", "--remote", s3_url, "--cache-dir", "cache", cwd=project_copy))
    assert "pushed 7 node(s)" in pushed.stdout and "1 run(s)" in pushed.stdout
    again = ok(evsys("push", "config.yaml", "--remote", s3_url, "--cache-dir", "cache", cwd=project_copy))
    assert "pushed 0 node(s)" in again.stdout and "7 node(s) were there already" in again.stdout
    other = teammate(project_copy, tmp_path / "teammate")
    pulled = ok(evsys("pull", "config.yaml", "--remote", s3_url, "--cache-dir", "cache", cwd=other))
    assert "pulled 7 node(s)" in pulled.stdout
    built = ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=other))
    assert ran_lines(built.stdout) == []
    assert "2 run(s)" in ok(evsys("runs", "--cache-dir", "cache", cwd=other)).stdout  # the pulled one and this one


def test_a_build_reads_through_the_team_store(project_copy, s3_url, tmp_path):
    ok(evsys("push", "config.yaml", "--remote", s3_url, "--cache-dir", "cache", cwd=project_copy))
    other = teammate(project_copy, tmp_path / "teammate")
    built = ok(evsys("build", "config.yaml", "--cache-dir", "cache", "--remote", s3_url, cwd=other))
    assert ran_lines(built.stdout) == [] and "cached " in built.stdout
    local = Store(other / "cache")
    ref = open_store(s3_url).read_ref("evsys_test", "default")["nodes"]
    assert all(local.complete_manifest(entry["key"]) for entry in ref.values())  # copied whole, objects first


def test_everything_works_directly_on_the_remote_store(project_copy, s3_url, tmp_path):
    other = teammate(project_copy, tmp_path / "teammate")
    first = ok(evsys("build", "config.yaml", "--cache-dir", s3_url, cwd=other))
    assert ran_lines(first.stdout)  # nothing there yet: it builds, on S3
    second = ok(evsys("build", "config.yaml", "--cache-dir", s3_url, cwd=project_copy))
    assert ran_lines(second.stdout) == []  # the teammate's nodes serve this checkout
    plan = ok(evsys("plan", "config.yaml", "--cache-dir", s3_url, cwd=project_copy))
    assert "0 to run" in plan.stdout
    assert "2 run(s)" in ok(evsys("runs", "--cache-dir", s3_url, cwd=project_copy)).stdout
    verified = ok(evsys("verify", "--cache-dir", s3_url, cwd=project_copy))
    assert "0 problem(s)" in verified.stdout
    gc = ok(evsys("gc", "--dry-run", "--keep-last", "0", "--keep-within", "0d", "--cache-dir", s3_url, cwd=project_copy))
    assert "kept" in gc.stdout
    key = open_store(s3_url).read_ref("evsys_test", "default")["nodes"]["tokenize"]["key"]
    shown = ok(evsys("show", f"node:{key[:10]}", "--cache-dir", s3_url, cwd=project_copy))
    assert "rule     tokenize" in shown.stdout


def test_store_urls_without_conditional_writes_and_missing_remotes_are_one_line(project_copy):
    bad = evsys("build", "config.yaml", "--cache-dir", "memory://scratch/store", cwd=project_copy)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "conditional writes" in bad.stderr
    missing = evsys("push", "config.yaml", "--cache-dir", "cache", cwd=project_copy, env={"EVSYS_REMOTE": ""})
    assert missing.returncode == 2 and "--remote" in missing.stderr and missing.stderr.count("\n") == 1
