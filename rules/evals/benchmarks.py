"""Benchmarks: a directory holding `tasks.jsonl`, one task per line."""

from __future__ import annotations

import functools
import json
import stat
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ValidationError, field_validator

from evsys_build.errors import ConfigError
from evsys_build.watch import watch
from . import verifiers

TASKS_FILE = "tasks.jsonl"


class Task(BaseModel, extra="forbid"):
    """One benchmark task: the full prompt and how to verify an answer."""

    task_id: str
    instruction: str
    verifier: dict
    system_prompt: Optional[str] = None

    @field_validator("verifier")
    @classmethod
    def _has_kind(cls, value: dict) -> dict:
        if "kind" not in value:
            raise ValueError('verifier has no "kind" (add "kind": "in_process")')
        return value


_FIELDS = ", ".join(Task.model_fields)


def benchmark_path_problem(directory: Path) -> str | None:
    """What is wrong with a benchmark path (not a directory, no tasks.jsonl), or None."""
    directory = Path(directory)
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        return f"{directory}: benchmark path {what} (point path at a directory holding {TASKS_FILE})"
    if not (directory / TASKS_FILE).is_file():
        return f"{directory / TASKS_FILE}: missing (a benchmark directory must hold {TASKS_FILE}, one task per line)"
    return None


def load_tasks(directory: Path) -> tuple[Task, ...]:
    """Parse and check `directory/tasks.jsonl`; any bad line raises a one-line ConfigError."""
    path = Path(directory) / TASKS_FILE
    try:
        st = path.stat()
    except OSError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        raise ConfigError(benchmark_path_problem(Path(directory)) or f"{path}: not a regular file (point path at a directory holding {TASKS_FILE})")
    watch(path)
    return _parse_tasks(str(path), (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns))  # one tuple per file version


@functools.lru_cache(maxsize=64)
def _parse_tasks(file: str, stamp: tuple) -> tuple[Task, ...]:
    """Parsed once per file version (a sweep's arms share their benchmarks)."""
    path = Path(file)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start}; save it as UTF-8)") from None
    tasks: list[Task] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        task = _parse_line(line, where)
        if task.task_id in first_line:
            raise ConfigError(f"{where}: duplicate task_id {task.task_id!r} "
                              f"(first on line {first_line[task.task_id]}; task ids must be unique)")
        first_line[task.task_id] = lineno
        verifiers.resolve(task.verifier, where)
        tasks.append(task)
    if not tasks:
        raise ConfigError(f"{path}: no tasks (add one JSON object per line)")
    return tuple(tasks)


def _parse_line(line: str, where: str) -> Task:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: invalid JSON: {exc.msg} at column {exc.colno} "
                          "(each line must be one JSON object)") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(raw).__name__} "
                          f"(each line is an object with {_FIELDS})")
    try:
        return Task.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {_describe(exc.errors()[0])}") from None


def _describe(err: dict) -> str:
    """One pydantic error as `<what> (<fix>)`."""
    field = ".".join(str(p) for p in err["loc"]) or "task"
    kind = err["type"]
    if kind == "missing":
        return f"missing field {field!r} (each task needs task_id, instruction, verifier)"
    if kind == "extra_forbidden":
        return f"unknown field {field!r} (allowed fields: {_FIELDS})"
    if kind == "value_error":
        return str(err.get("ctx", {}).get("error", err["msg"]))
    return f"field {field!r}: {err['msg']} (fix its type)"
