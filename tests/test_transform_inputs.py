"""What a transform reads while it runs is keyed: an environment variable its module names (found
in its source), and what it declares (`files()`, `identity()`): changing any of them reruns the
transform, never serves the old rows."""

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

    def identity(self):  # a name it computes: no scan can see it
        return {"revision": os.environ.get("TABLE_" + "REV")}

    def __call__(self, rows):  # QUERY_STYLE is not declared: the source names it
        prefix = Path(self.table).read_text().strip() + os.environ.get("QUERY_STYLE", "") + os.environ.get("TABLE_" + "REV", "")
        return [dict(row, query=prefix + row["query"]) for row in rows]
'''


def test_a_declared_file_or_variable_that_changes_reruns_the_transform(tmp_path):
    config = BASE_CONFIG.replace("transforms:\n", "plugins: [prefix.py]\ntransforms:\n  - kind: prefix_from_file\n    params: {table: table.txt}\n", 1)
    project = make_project(tmp_path / "p", tool_rows(6), config)
    (project / "prefix.py").write_text(PLUGIN)
    (project / "table.txt").write_text("v1:")
    env = {"QUERY_STYLE": "terse", "TABLE_REV": "1"}
    ok(evsys("build", "config.yaml", "--cache-dir", "cache", "--target", "transform[0] prefix_from_file", cwd=project, env=env))
    assert plan_json(project, env=env)["transform[0] prefix_from_file"]["status"] == "cached"

    other_style = plan_json(project, env={**env, "QUERY_STYLE": "verbose"})["transform[0] prefix_from_file"]
    assert other_style["status"] == "run"
    assert other_style["reasons"] == ["an environment variable transform prefix_from_file reads changed"]

    other_revision = plan_json(project, env={**env, "TABLE_REV": "2"})["transform[0] prefix_from_file"]
    assert other_revision["status"] == "run"
    assert other_revision["reasons"] == ["what transform prefix_from_file reads changed (its identity())"]

    (project / "table.txt").write_text("v2:")
    later = time.time() + 5
    os.utime(project / "table.txt", (later, later))
    edited = plan_json(project, env=env)["transform[0] prefix_from_file"]
    assert edited["status"] == "run"
    assert edited["reasons"] == ["a file transform prefix_from_file reads changed"]


def test_the_environment_reads_a_module_names_are_found(tmp_path):
    from evsys_rules.plugins.environment_reads import _names

    module = tmp_path / "m.py"
    module.write_text(
        "import os\nfrom os import environ, getenv\n"
        "a = os.environ['A_VAR']\nb = os.environ.get(\"B_VAR\", 1)\nc = getenv('C_VAR')\n"
        "d = environ . get ( 'D_VAR' )\ne = os.environ.setdefault('E_VAR', '')\n"
        "f = os.environ[name]  # computed: not seen\n"
    )
    assert _names(str(module)) == ("A_VAR", "B_VAR", "C_VAR", "D_VAR", "E_VAR")
