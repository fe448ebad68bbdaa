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
        "LOUD = 'G_VAR'\nQUIET: str = \"H_VAR\"  # constants naming variables\n"
        "g = 'F_VAR' in os.environ\nh = \"I_VAR\" not in environ\ni = os.environ.get(LOUD)\nj = QUIET in os.environ\n"
    )
    assert _names(str(module))[0] == ("A_VAR", "B_VAR", "C_VAR", "D_VAR", "E_VAR", "F_VAR", "G_VAR", "H_VAR", "I_VAR")


def test_reads_through_an_alias_or_an_imported_constant_are_found():
    from evsys_rules.plugins.environment_reads import names_and_constants

    names, constants = names_and_constants(
        "import os\nfrom os import environ as E, getenv as ge\nfrom settings import SUFFIX_VAR\n"
        "env = os.environ\nlookup = os.getenv\n"
        "a = env.get('A_VAR')\nb = E['B_VAR']\nc = ge('C_VAR')\nd = lookup('D_VAR')\ne = 'E_VAR' in env\n"
        "f = os.environ.get(SUFFIX_VAR)\n"
    )
    assert names == {"A_VAR", "B_VAR", "C_VAR", "D_VAR", "E_VAR"}
    assert constants == {"SUFFIX_VAR"}  # its value is read from the loaded module (keyed_names)


HIDDEN_READS = """\
import os

from evsys_sdk import register_transform
from settings import SUFFIX_VAR


@register_transform("suffix")
class Suffix:
    row_local = True

    def __init__(self, how: str = "constant"):
        self.how = how

    def __call__(self, rows):
        env = os.environ  # an alias
        if self.how == "constant":
            suffix = os.environ.get(SUFFIX_VAR, "") + env.get("ALIASED_VAR", "")
        elif self.how == "computed":
            suffix = os.environ.get("QUERY_" + "SUFFIX", "")
        else:
            suffix = str(len(dict(os.environ)))
        return [dict(row, query=row["query"] + suffix) for row in rows]
"""


def test_an_imported_constant_or_an_alias_keys_the_variable_and_a_hidden_read_fails(tmp_path):
    """Reads the scan finds are keyed (a new value reruns the transform); a read it cannot see (a
    computed name, the whole environment) fails the node by file:line, and nothing is cached."""
    def project_with(how: str, name: str):
        config = BASE_CONFIG.replace("transforms:\n", f"plugins: [suffix.py]\ntransforms:\n  - kind: suffix\n    params: {{how: {how}}}\n", 1)
        project = make_project(tmp_path / name, tool_rows(6), config)
        (project / "suffix.py").write_text(HIDDEN_READS)
        (project / "settings.py").write_text('SUFFIX_VAR = "MY_" + "SUFFIX"  # computed, but a str by the time it is imported\n')
        return project

    target = ("--target", "transform[0] suffix")
    project = project_with("constant", "keyed")
    env = {"MY_SUFFIX": "a", "ALIASED_VAR": "b", "PYTHONPATH": str(tmp_path / "keyed")}
    ok(evsys("build", "config.yaml", "--cache-dir", "cache", *target, cwd=project, env=env))
    assert plan_json(project, env=env)["transform[0] suffix"]["status"] == "cached"
    for changed in ({"MY_SUFFIX": "c"}, {"ALIASED_VAR": "d"}):
        entry = plan_json(project, env={**env, **changed})["transform[0] suffix"]
        assert entry["status"] == "run" and entry["reasons"] == ["an environment variable transform suffix reads changed"], (changed, entry)

    for how, message in (("computed", "reads the environment variable QUERY_SUFFIX, which its key does not hold"),
                         ("whole", "reads the whole environment")):
        project = project_with(how, how)
        ok(evsys("build", "config.yaml", "--cache-dir", "cache", "--target", "source", cwd=project, env={"PYTHONPATH": str(project)}))
        memos = set((project / "cache").glob("memo/**/*.json"))
        proc = evsys("build", "config.yaml", "--cache-dir", "cache", *target, cwd=project, env={"PYTHONPATH": str(project)})
        assert proc.returncode == 2, proc.stderr
        assert f"suffix.py:{19 if how == 'computed' else 21}: the transform suffix {message}" in proc.stderr, proc.stderr
        assert set((project / "cache").glob("memo/**/*.json")) == memos  # no transformed chunk was memoised under the key
        checked = evsys("validate", "config.yaml", "--deep", cwd=project, env={"PYTHONPATH": str(project)})
        assert checked.returncode == 2 and f"the transform suffix {message}" in checked.stderr, checked.stderr


ORDERED_PLUGIN = '''\
import datetime

from pydantic import BaseModel, Field

from evsys_sdk import register_transform


@register_transform("replace_all")
class ReplaceAll:
    row_local = True

    class Config(BaseModel, extra="forbid"):
        table: dict[str, str] = {}
        stamp: str = Field(default_factory=lambda: datetime.datetime.now().isoformat())
        tags: list[str] = Field(default_factory=list)

    def __init__(self, **params):
        self.cfg = self.Config(**params)

    def __call__(self, rows):
        out = []
        for row in rows:
            query = row["query"]
            for old, new in self.cfg.table.items():  # in order: the mapping's order is part of the result
                query = query.replace(old, new)
            out.append(dict(row, query=query))
        return out
'''


def test_a_reordered_mapping_or_a_fresh_default_factory_value_reruns_the_transform(tmp_path):
    """Canonical JSON sorts keys, and `exclude_defaults` compares a factory's value with a fresh
    call: neither may hide a change the transform's rows show."""
    config = BASE_CONFIG.replace("transforms:\n", "plugins: [ordered.py]\ntransforms:\n  - kind: replace_all\n    params: {table: {email: mail, mail: post}}\n", 1)
    project = make_project(tmp_path / "p", tool_rows(6), config)
    (project / "ordered.py").write_text(ORDERED_PLUGIN)
    ok(evsys("build", "config.yaml", "--cache-dir", "cache", "--target", "transform[0] replace_all", cwd=project))
    again = plan_json(project)["transform[0] replace_all"]
    assert again["status"] == "run"  # a new timestamp each compile: a new key, never the old rows

    (project / "ordered.py").write_text(ORDERED_PLUGIN.replace("default_factory=lambda: datetime.datetime.now().isoformat()", "default='fixed'"))
    ok(evsys("build", "config.yaml", "--cache-dir", "cache", "--target", "transform[0] replace_all", cwd=project))
    assert plan_json(project)["transform[0] replace_all"]["status"] == "cached"
    (project / "config.yaml").write_text(config.replace("{email: mail, mail: post}", "{mail: post, email: mail}"))
    reordered = plan_json(project)["transform[0] replace_all"]
    assert reordered["status"] == "run"
    assert any("mapping_order" in reason for reason in reordered["reasons"]), reordered["reasons"]


ALGORITHM_PLUGIN = '''\
import os

from evsys_rules.algorithms.sft import SFT, SFTConfig
from evsys_sdk import register_algorithm

SHARE_VAR = "WARMUP_SHARE"


@register_algorithm("sft_env_warmup")
class SFTEnvWarmup:
    Config = SFTConfig

    @staticmethod
    def train(client, data, cfg, **kw):
        steps = max(1, round(cfg.max_steps * float(os.environ.get(SHARE_VAR, "0.5"))))
        return SFT.train(client, data, cfg.model_copy(update={"warmup_steps": steps}), **kw)
'''


def test_a_variable_a_plugin_algorithm_reads_keys_the_training(tmp_path):
    config = BASE_CONFIG.replace("transforms:\n", "plugins: [algo.py]\ntransforms:\n", 1).replace("kind: sft\n", "kind: sft_env_warmup\n", 1)
    assert "sft_env_warmup" in config
    project = make_project(tmp_path / "p", tool_rows(6), config)
    (project / "algo.py").write_text(ALGORITHM_PLUGIN)
    ok(evsys("build", "config.yaml", "--cache-dir", "cache", "--target", "tokenize", cwd=project))
    keys = {share: plan_json(project, env={"WARMUP_SHARE": share})["train"]["key"] for share in ("0.5", "1.0")}
    assert None not in keys.values() and keys["0.5"] != keys["1.0"]


def test_a_module_level_read_no_scan_sees_fails_when_the_plugin_loads(tmp_path):
    """`STYLE = os.environ.get(APP + "_STYLE")` at import time would be held by no key."""
    config = BASE_CONFIG.replace("transforms:\n", "plugins: [styled.py]\ntransforms:\n  - kind: styled\n", 1)
    project = make_project(tmp_path / "p", tool_rows(6), config)
    (project / "styled.py").write_text(
        "import os\n\nfrom evsys_sdk import register_transform\n\nAPP = 'QUERY'\nSTYLE = os.environ.get(APP + '_STYLE', '')\n"
        "LITERAL = os.environ.get('QUERY_PREFIX', '')  # found by the scan: keyed\n\n\n"
        "@register_transform('styled')\nclass Styled:\n    def __call__(self, rows):\n"
        "        return [dict(r, query=LITERAL + r['query'] + STYLE) for r in rows]\n"
    )
    proc = evsys("plan", "config.yaml", "--cache-dir", "cache", cwd=project, env={"QUERY_STYLE": "terse"})
    assert proc.returncode == 2, proc.stderr
    assert "styled.py:6: a plugin module reads the environment variable QUERY_STYLE while it is imported" in proc.stderr, proc.stderr
    (project / "styled.py").write_text((project / "styled.py").read_text().replace("APP + '_STYLE'", "'QUERY_STYLE'"))
    ok(evsys("plan", "config.yaml", "--cache-dir", "cache", cwd=project, env={"QUERY_STYLE": "terse"}))


WRAP = """from evsys_sdk import register_transform
from evsys_rules.plugins import kinds


@register_transform('wrap')
class Wrap:
    row_local = True

    def __init__(self, inner='b_kind'):
        self.inner = inner

    def __call__(self, rows):
        return kinds.transforms.get(self.inner)()(rows)
"""
INNER = """from evsys_sdk import register_transform


@register_transform('{kind}')
class Inner:
    def __call__(self, rows):
        return [dict(r, query=r['query'] + '{suffix}') for r in rows]
"""


def test_a_plugin_that_runs_others_by_name_follows_a_registry_that_grew(tmp_path):
    """Its key holds every plugin registered beside it; an identity cached on disk while fewer
    were registered must not stand for it once a config adds another and that one is edited."""
    def aged(*files):
        for f in files:
            os.utime(f, (time.time() - 60, time.time() - 60))  # not racy: the identity cache keeps what it computes

    config = BASE_CONFIG.replace("transforms:\n", "plugins: [wrap.py, b.py]\ntransforms:\n  - kind: wrap\n    params: {inner: b_kind}\n", 1)
    project = make_project(tmp_path / "p", tool_rows(6), config)
    (project / "wrap.py").write_text(WRAP)
    (project / "b.py").write_text(INNER.format(kind="b_kind", suffix="-B"))
    (project / "c.py").write_text(INNER.format(kind="c_kind", suffix="-C1"))
    aged(project / "wrap.py", project / "b.py", project / "c.py")
    target = ("--target", "transform[0] wrap")
    ok(evsys("build", "config.yaml", "--cache-dir", "cache", *target, cwd=project))
    (project / "config.yaml").write_text(config.replace("[wrap.py, b.py]", "[wrap.py, b.py, c.py]").replace("{inner: b_kind}", "{inner: c_kind}"))
    ok(evsys("build", "config.yaml", "--cache-dir", "cache", *target, cwd=project))
    (project / "c.py").write_text(INNER.format(kind="c_kind", suffix="-C2"))
    aged(project / "c.py")
    entry = plan_json(project)["transform[0] wrap"]
    assert entry["status"] == "run" and entry["reasons"] == ["transform wrap code changed"], entry
