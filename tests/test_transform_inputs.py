"""A transform that reads a file or an environment variable while it runs declares it (`files()`,
`identity()`): editing either reruns the transform, never serves the old rows."""

from __future__ import annotations

import os
import time

from evsys_testkit import BASE_CONFIG, evsys, make_project, ok, plan_json, tool_rows

PLUGIN = '''\
import os
from pathlib import Path

from evsys_sdk import register_transform


@register_transform("prefix_from_file")
class PrefixFromFile:
    row_local = True

    def __init__(self, table: str):
        self.table = table

    def files(self):
        return [Path(self.table)]

    def identity(self):
        return {"style": os.environ.get("QUERY_STYLE")}

    def __call__(self, rows):
        prefix = Path(self.table).read_text().strip() + os.environ.get("QUERY_STYLE", "")
        return [dict(row, query=prefix + row["query"]) for row in rows]
'''


def test_a_declared_file_or_variable_that_changes_reruns_the_transform(tmp_path):
    config = BASE_CONFIG.replace("transforms:\n", "plugins: [prefix.py]\ntransforms:\n  - kind: prefix_from_file\n    params: {table: table.txt}\n", 1)
    project = make_project(tmp_path / "p", tool_rows(6), config)
    (project / "prefix.py").write_text(PLUGIN)
    (project / "table.txt").write_text("v1:")
    env = {"QUERY_STYLE": "terse"}
    ok(evsys("build", "config.yaml", "--cache-dir", "cache", "--target", "transform[0] prefix_from_file", cwd=project, env=env))
    assert plan_json(project, env=env)["transform[0] prefix_from_file"]["status"] == "cached"

    other_style = plan_json(project, env={"QUERY_STYLE": "verbose"})["transform[0] prefix_from_file"]
    assert other_style["status"] == "run"
    assert "what transform prefix_from_file reads changed (its identity())" in other_style["reasons"]

    (project / "table.txt").write_text("v2:")
    later = time.time() + 5
    os.utime(project / "table.txt", (later, later))
    edited = plan_json(project, env=env)["transform[0] prefix_from_file"]
    assert edited["status"] == "run"
    assert "a file transform prefix_from_file reads changed" in edited["reasons"]
