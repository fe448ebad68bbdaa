"""Names never escape the output directory or the store, and hostile or unlucky input gets one
line on stderr, fast, with file:line where there is one — never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evsys_testkit import BASE_CONFIG, edit_config, evsys, make_project, ok, tool_rows

# -- names ------------------------------------------------------------------------------

NAME_PLACES = {
    "run_name": ("run_name: first_run", "run_name: {name}"),
    "experiment": ("  name: evsys_test", "  name: {name}"),
    "arm": ("callbacks:", "arms:\n  - {{name: {name}, set: {{seed: 1}}}}\ncallbacks:"),
    "benchmark": ("callbacks:", "metadata:\n  benchmark:\n    - {{name: {name}, path: val}}\ncallbacks:"),
}
BAD_NAMES = ['"../../x"', '"a/b"', '"/abs"', '".."', '"with\\\\back"', '""']


@pytest.mark.parametrize("place", list(NAME_PLACES))
@pytest.mark.parametrize("bad", BAD_NAMES)
def test_a_name_that_would_escape_is_a_config_error_with_its_position(tmp_path, place, bad):
    project = make_project(tmp_path / "p", tool_rows(4))
    old, new = NAME_PLACES[place]
    edit_config(project, old, new.format(name=bad))
    (project / "val").mkdir()
    (project / "val" / "tasks.jsonl").write_text(json.dumps({"task_id": "t", "instruction": "q", "verifier": {"kind": "in_process", "fn_name": "contains", "expected": "x"}}) + "\n")
    before = sorted(p for p in tmp_path.rglob("*"))
    proc = evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("evsys: error: config.yaml:") and "must be one plain name" in line
    assert "Traceback" not in proc.stderr
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written anywhere


@pytest.mark.parametrize("ref", ["node:../secret", "node:../../etc/passwd", "node:ab/../..", "node:*"])
def test_show_never_looks_outside_the_store(tmp_path, ref):
    (tmp_path / "cache" / "nodes").mkdir(parents=True)
    (tmp_path / "secret.json").write_text("{}")
    proc = evsys("show", ref, "--cache-dir", "cache", cwd=tmp_path)
    assert proc.returncode == 2 and "a node key is hexadecimal" in proc.stderr and "Traceback" not in proc.stderr


def test_a_sweep_value_with_a_slash_becomes_a_safe_arm_name(tmp_path, tiny_model_dir):
    project = make_project(tmp_path / "p", tool_rows(4))
    edit_config(project, "callbacks:", "sweep:\n  seed: [1, 2]\ncallbacks:")
    proc = ok(evsys("validate", "config.yaml", cwd=project))
    assert "arms: seed=1, seed=2" in proc.stdout
    edit_config(project, "seed: [1, 2]", "data.path: [data/train.jsonl, ./data/train.jsonl]")
    proc = ok(evsys("validate", "config.yaml", cwd=project))
    assert "arms: path=data_train.jsonl, path=._data_train.jsonl" in proc.stdout


# -- hostile YAML -----------------------------------------------------------------------------

ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)


@pytest.mark.parametrize(
    "text, expected",
    [
        (ALIAS_BOMB, "the config expands to more than"),
        ("x: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than 64 levels deep"),
        ("a: " + " ".join(f"*x{i}" for i in range(1)) + "\n" + "".join(f"k{i}: &x{i} 1\n" for i in range(3)) + "".join(f"r{i}: *x0\n" for i in range(150)), "more than 100 YAML aliases"),
        ("? [a, b]\n: 1\n", "a key must be a plain name"),
        ("data: {a: 1\n", "invalid YAML"),
    ],
    ids=["alias bomb", "5000 brackets", "many aliases", "list key", "syntax"],
)
def test_hostile_yaml_fails_fast_with_one_line(tmp_path, text, expected):
    (tmp_path / "config.yaml").write_text(text)
    started = time.time()
    proc = evsys("validate", "config.yaml", cwd=tmp_path)
    assert time.time() - started < 15
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("evsys: error: config.yaml") and expected in line


def test_an_oversized_config_is_refused(tmp_path):
    (tmp_path / "config.yaml").write_text("# padding\n" * 200_000)
    proc = evsys("validate", "config.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and "a config is limited to" in proc.stderr


# -- bad rows ---------------------------------------------------------------------------------

MESSAGES_CONFIG = BASE_CONFIG[: BASE_CONFIG.index("transforms:")] + BASE_CONFIG[BASE_CONFIG.index("model:") :]  # rows carry messages


@pytest.mark.parametrize(
    "bad_row, expected",
    [
        ({"messages": [{"role": "user", "content": 7}, {"role": "assistant", "content": "x"}]}, "messages[0].content"),
        ({"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "x"}]}, "messages[0].role"),
        ({"messages": "hello"}, "messages"),
    ],
    ids=["int content", "unknown role", "messages not a list"],
)
def test_a_bad_row_names_its_file_and_line(tmp_path, tiny_model_dir, bad_row, expected):
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    project = make_project(tmp_path / "p", [good] * 5 + [bad_row] + [good] * 3, MESSAGES_CONFIG)
    proc = evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project)
    assert proc.returncode in (1, 2), proc.stderr
    assert "Traceback" not in proc.stderr and "TypeError" not in proc.stderr
    line = next(line for line in proc.stderr.splitlines() if line.startswith("evsys: error:"))
    assert "data/train.jsonl:6" in line and expected in line


# -- a full disk ---------------------------------------------------------------------------------


def test_a_full_disk_is_one_line_naming_the_path_and_leaves_no_half_written_run_dir(built_project, tmp_path):
    """`ulimit -f` makes every write past the limit fail with EFBIG in a real process (Python
    ignores SIGXFSZ), as a full disk fails with ENOSPC: the same path through the code."""
    from evsys_testkit import copy_project

    project = copy_project(built_project, tmp_path / "p")
    run_dir = project / "out" / "first_run"
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    edit_config(project, "max_steps: 1", "max_steps: 2")
    env = {k: v for k, v in os.environ.items() if k != "EVSYS_CACHE"}
    proc = subprocess.run(
        ["bash", "-c", f"ulimit -f 16; exec {sys.executable} -m evsys_build.cli build config.yaml --cache-dir cache"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode in (1, 2), proc.stderr
    assert "Traceback" not in proc.stderr
    line = next(line for line in proc.stderr.splitlines() if line.startswith("evsys: error:"))
    assert "cannot write" in line and "File too large" in line and "/" in line
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before  # the old run dir, whole
    assert not list((project / "cache" / "tmp").glob(".evsys-*"))
    ok(evsys("verify", "--cache-dir", "cache", cwd=project))


@pytest.mark.parametrize("command", [["gc", "--dry-run"], ["verify"], ["runs"], ["show", "node:abcdef123456"], ["export", "node:abcdef123456", "out"], ["push", "elsewhere"]])
def test_a_mistyped_store_path_is_one_line_and_creates_nothing(tmp_path, command):
    proc = evsys(*command, "--cache-dir", str(tmp_path / "typo"), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert f"{tmp_path / 'typo'}: no store there" in line
    assert not (tmp_path / "typo").exists() and not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("command", [["build", "config.yaml", "-j", "0"], ["build", "config.yaml", "--jobs", "-3"], ["show", "node:abc", "--rows", "-1"]])
def test_an_out_of_range_flag_is_bad_usage(tmp_path, command):
    proc = evsys(*command, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "Invalid value" in proc.stderr


# -- files and folders this user may not read or write ---------------------------------------
# The suite runs as root here, which no permission denies, so the denial is raised where evsys
# meets it (the same exception a non-root user gets from the OS).


def test_a_file_this_user_cannot_read_is_one_line(tmp_path, monkeypatch):
    import errno

    from click.testing import CliRunner

    import evsys_rules.config.validate as validate_module
    from evsys_build.cli import main

    project = make_project(tmp_path / "p", tool_rows(4))
    denied = project / "data" / "train.jsonl"

    def unreadable(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(denied))

    monkeypatch.setattr(validate_module, "check_rows", unreadable)
    monkeypatch.chdir(project)
    result = CliRunner().invoke(main, ["validate", "config.yaml", "--deep"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"evsys: error: {denied}: Permission denied (uid {os.getuid()}); let this user read it (and search its folders), or point the config elsewhere"


def test_an_output_dir_this_user_cannot_write_is_refused_before_anything_runs(tmp_path, monkeypatch, tiny_model_dir):
    import evsys_rules.config.loading as loading
    from evsys_build.errors import ConfigError
    from evsys_rules.config.validate import validate

    project = make_project(tmp_path / "p", tool_rows(4), BASE_CONFIG.replace("output_dir: out", "output_dir: shared/out"))
    (project / "shared").mkdir()
    monkeypatch.chdir(project)
    real_access = os.access
    monkeypatch.setattr(loading.os, "access", lambda path, mode: os.fspath(path) != "shared" and real_access(path, mode))
    with pytest.raises(ConfigError) as exc:
        validate(Path("config.yaml"))
    line = next(i for i, text in enumerate((project / "config.yaml").read_text().splitlines(), 1) if text.startswith("output_dir:"))
    assert exc.value.message == (
        f"config.yaml:{line}:13: output_dir: this user (uid {os.getuid()}) cannot write shared, "
        "where the run dir shared/out/first_run is made; choose another output_dir or let this user write there"
    )
    from evsys_build.store import Store
    from evsys_rules.frontend import open_project

    built = open_project(Path("config.yaml"), Store(project / "cache"))
    with pytest.raises(ConfigError, match="cannot write shared"):
        built.preflight(["default"])  # a build checks before any node runs
    built.preflight(["default"], writes_run_dir=False)  # a --target build writes no run dir: nothing to refuse
    (project / "shared").rmdir()  # not there yet: the folder it would be made in (the project) is the one asked
    assert validate(Path("config.yaml"))


@pytest.mark.parametrize("code,fix", [("ENOSPC", "free some space or write elsewhere"), ("EACCES", "write where this user may"), ("EROFS", "write where this user may")])
def test_a_failed_write_says_the_fix_that_fits_its_cause(tmp_path, monkeypatch, code, fix):
    import errno

    from evsys_build import atomic

    def refused(*args):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(atomic.os, "replace", refused)
    with pytest.raises(atomic.WriteFailed) as exc:
        atomic.write_atomic(tmp_path / "f.json", b"{}")
    assert exc.value.message == f"cannot write {tmp_path / 'f.json'}: {os.strerror(getattr(errno, code))}; {fix} (--cache-dir, output_dir)"
    assert not list(tmp_path.iterdir())  # the staged file is gone too
