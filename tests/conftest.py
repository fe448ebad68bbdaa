"""Session fixtures: a private models home (the tiny model is built once), and one built project.

The built project is shared read-only; a test that changes it copies it first (`project_copy`).
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests import evsys_testkit

# Ray reads these when it is imported (test modules import it at collection): set them first.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every Ray socket on 127.0.0.1
# Test files run in parallel worker processes (scripts/test): each worker's trainings get their
# share of the cores. With every torch taking all of them, the OpenMP threads of two trainings
# spin against each other and both ran 2-3x slower. Tests compare runs made under one setting.
if "PYTEST_XDIST_WORKER" in os.environ:  # a worker (the controller, which runs no test, sets nothing its workers inherit)
    _share = len(os.sched_getaffinity(0)) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _share)))

# Run from a script's background job (`scripts/test &`), this process starts with SIGINT ignored
# and every evsys it starts would inherit that (and rightly ignore a Ctrl-C): the interrupt tests
# need the default, as from a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from evsys_testkit import copy_project, evsys, make_evals_project, make_project, ok, tool_rows  # noqa: E402


SLOW_FILES_FIRST = ("test_offline_example.py", "test_interrupts.py", "test_tinker_backend.py", "test_ray_cluster.py", "test_walkthrough_e2e.py", "test_arms_resume.py", "test_runs_gc.py")


def pytest_collection_modifyitems(session, config, items):
    """The longest test files start first: with files run side by side (scripts/test), the suite
    then ends on short files instead of one worker finishing a long one alone."""
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES_FIRST)))


@pytest.fixture(scope="session", autouse=True)
def _models_home(tmp_path_factory):
    """EVSYS_MODELS points at a session tmp dir so evsys/tiny-qwen3 is built once, privately;
    tokenizer snapshots are kept for the session's stores in another (machine_snapshots.py)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVSYS_MODELS", str(tmp_path_factory.mktemp("models")))
        mp.setenv("EVSYS_TOKENIZER_CACHE", str(tmp_path_factory.mktemp("tokenizer-snapshots")))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        mp.delenv("EVSYS_CACHE", raising=False)
        yield


@pytest.fixture(scope="session")
def tiny_model_dir(_models_home) -> Path:
    from evsys_rules.models.tiny import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    """The tiny model's tokenizer (the real Qwen3 one), as the tokenize rule loads it; one per test module."""
    from evsys_rules.data.chat_tokens import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture
def fresh_tok(tiny_model_dir):
    """A private tokenizer object a test may give another chat template."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)


@pytest.fixture(scope="session")
def built_project(tmp_path_factory, tiny_model_dir) -> Path:
    """A project (config.yaml, data/train.jsonl, cache/) built once through the CLI. Do not modify it."""
    project = make_project(tmp_path_factory.mktemp("built") / "project", tool_rows(60))
    proc = ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project))
    project.joinpath("first-build.txt").write_text(proc.stdout)
    return project


@pytest.fixture
def project_copy(built_project, tmp_path) -> Path:
    """A private copy of the built project (config, data and store) that a test may change."""
    return copy_project(built_project, tmp_path / "project")



@pytest.fixture(scope="session")
def built_evals(tmp_path_factory, tiny_model_dir) -> Path:
    """A built project with a plugin, a filter and an in-loop benchmark (testkit EVALS_CONFIG). Copy it to change it."""
    project = make_evals_project(tmp_path_factory.mktemp("evals") / "project")
    ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project))
    return project


@pytest.fixture(scope="session")
def moto_s3():
    """A real S3-protocol server (moto) on loopback, for the whole session; its endpoint and fake
    credentials are in the environment, so every client (and every `evsys` subprocess) reaches it."""
    pytest.importorskip("moto", reason="needs the dev extra (moto[server])")
    pytest.importorskip("s3fs", reason="needs the s3 extra")
    from moto_server import MotoS3

    server = MotoS3().start()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in server.env.items():
            mp.setenv(name, value)
        mp.delenv("AWS_PROFILE", raising=False)
        yield server
    server.stop()


@pytest.fixture
def s3_url(moto_s3) -> str:
    """A fresh bucket; the store lives under a prefix, as a team's would."""
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    moto_s3.create_bucket(bucket)
    return f"s3://{bucket}/evsys"

