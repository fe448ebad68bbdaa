"""The installed import names are ours: the wheel installs `evsys_build`, `evsys_rules` and
`evsys_sdk`, and works in a fresh venv beside PyPI's `rules` (django-rules' import name)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from evsys_testkit import BASE_CONFIG, make_project, tool_rows

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(REPO)],
        check=True, capture_output=True, text=True,
    )
    (built,) = out.glob("evsys-*.whl")
    return built


def test_the_wheel_holds_only_our_top_level_names(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith((".dist-info", ".data"))}
    assert tops == {"evsys_build", "evsys_rules", "evsys_sdk"}
    assert "evsys_rules/nodes/train.py" in names and "evsys_rules/backends/local/training.py" in names


def test_fresh_venv_beside_django_rules_runs_help_and_the_tiny_example(wheel, tmp_path, tiny_model_dir):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    # the heavy dependencies (torch, transformers, ...) and PyPI's `rules` come from the test venv's site-packages
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True, capture_output=True, text=True,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EVSYS_CACHE")}
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import evsys_rules, rules, evsys_build; print(evsys_rules.__file__); print(rules.__file__); print(evsys_build.__file__)"],
        cwd=tmp_path, env=env, check=True, capture_output=True, text=True,
    ).stdout.split()
    assert where[0].startswith(str(site)) and where[2].startswith(str(site))
    assert "site-packages/rules/" in where[1] and not where[1].startswith(str(site)) and "evsys" not in where[1]
    help_out = subprocess.run([str(venv / "bin" / "evsys"), "--help"], cwd=tmp_path, env=env, check=True, capture_output=True, text=True).stdout
    assert "build" in help_out and "plan" in help_out
    project = make_project(tmp_path / "project", tool_rows(16), BASE_CONFIG)
    build = subprocess.run([str(venv / "bin" / "evsys"), "build", "config.yaml"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    assert "ran     train" in build.stdout and (project / "out" / "first_run" / "metrics.jsonl").is_file()
