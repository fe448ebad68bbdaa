"""The walkthrough's own config (backend tinker, Qwen/Qwen3.5-4B) on a machine without network:
plan says in one line what is missing and how to get it, validate --deep passes, fetch says why
it cannot, and once the tokenizer is in the Hugging Face cache, plan works with no key and no
ML library loaded. The live test runs two steps on hosted Tinker when TINKER_API_KEY is set."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evsys_testkit import evsys

REPO = Path(__file__).resolve().parents[1]
CONFIG = "examples/sft_walkthrough/config.yaml"
MODEL = "Qwen/Qwen3.5-4B"


def offline_env(hf_home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINKER_", "HF_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(hf_home), **extra)
    return env


def one_line(proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_offline_plan_names_the_model_what_is_missing_and_the_command(tmp_path):
    line = one_line(evsys("plan", CONFIG, "--cache-dir", str(tmp_path / "cache"), cwd=REPO, env=offline_env(tmp_path / "hf")))
    assert f"'{MODEL}': its tokenizer and chat template are not in the local Hugging Face cache ({tmp_path / 'hf' / 'hub'})" in line
    assert f"run `evsys fetch {CONFIG}`" in line


def test_offline_validate_deep_passes(tmp_path):
    proc = evsys("validate", "--deep", CONFIG, cwd=REPO, env=offline_env(tmp_path / "hf"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(f"{CONFIG}: ok (deep)")


def test_offline_fetch_says_why_it_cannot(tmp_path):
    line = one_line(evsys("fetch", CONFIG, cwd=REPO, env=offline_env(tmp_path / "hf")))
    assert MODEL in line and "HF_HUB_OFFLINE" in line


def test_fetch_with_the_hub_unreachable_says_so_in_one_whole_line(tmp_path):
    """Not offline by choice, but the Hub cannot be reached (here: nothing listens at HF_ENDPOINT):
    one line that says so and what to do, not a cut-off library message."""
    import socket

    with socket.socket() as probe:  # a local port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"HF_HUB_OFFLINE": "", "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2"}
    line = one_line(evsys("fetch", CONFIG, cwd=REPO, env=env))
    assert line.startswith(f"evsys: error: model.name: '{MODEL}': cannot reach the Hugging Face Hub to download its tokenizer and chat template (")
    assert line.endswith("); check the network (or HF_ENDPOINT), or set model.name to a local model folder")


@pytest.fixture
def hf_cache_with_tokenizer(tmp_path, tiny_model_dir) -> Path:
    """An HF cache holding only the tokenizer files of MODEL (the tiny model's Qwen3 tokenizer stands in)."""
    hf_home = tmp_path / "hf"
    repo = hf_home / "hub" / ("models--" + MODEL.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for f in tiny_model_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("vocab.json", "merges.txt", "config.json"):
            shutil.copy(f, snapshot / f.name)
    return hf_home


def test_with_the_tokenizer_cached_plan_works_offline_without_key_or_ml_libraries(tmp_path, hf_cache_with_tokenizer):
    fetched = evsys("fetch", CONFIG, cwd=REPO, env=offline_env(hf_cache_with_tokenizer))
    assert fetched.returncode == 0 and f"{MODEL}: tokenizer already in the Hugging Face cache" in fetched.stdout
    code = (
        "import sys\n"
        "from evsys_build.cli import main\n"
        "try:\n"
        f"    main(['plan', {CONFIG!r}, '--json', '--cache-dir', {str(tmp_path / 'cache')!r}])\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'numpy', 'tinker', 'peft') if m in sys.modules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", "import json\n" + code], cwd=REPO, env=offline_env(hf_cache_with_tokenizer), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    *plan_text, loaded = proc.stdout.strip().splitlines()
    assert json.loads(loaded) == []
    nodes = {n["name"]: n for n in json.loads("\n".join(plan_text))["nodes"]}
    assert nodes["train"]["status"] == "run" and nodes["train"]["cost"]["steps"] == 2
    assert nodes["eval val@1"]["cost"]["sampling_requests"] == 52 and nodes["eval val@1"]["cost"]["max_new_tokens"] == 52 * 64


@pytest.mark.tinker_live
@pytest.mark.skipif(not os.environ.get("TINKER_API_KEY") or os.environ.get("CI"), reason="needs TINKER_API_KEY and network (hosted Tinker); never in CI")
def test_live_two_steps_of_the_walkthrough_on_hosted_tinker(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(REPO / "examples" / "sft_walkthrough", project / "examples" / "sft_walkthrough", ignore=shutil.ignore_patterns("outputs"))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TINKER_BASE_URL")}
    assert evsys("fetch", CONFIG, cwd=project, env=env, timeout=600).returncode == 0
    proc = evsys("build", CONFIG, "--cache-dir", "cache", cwd=project, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ran     train" in proc.stdout
