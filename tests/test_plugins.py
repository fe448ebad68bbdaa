"""User plugins: the walkthrough's `strip_pii` transform loaded from `plugins:` (a .py path or a module
name) or the `evsys.plugins` entry-point group, keyed by its code, per chunk when `row_local`."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from evsys_testkit import BASE_CONFIG, evsys, make_project, ok, plan_json, ran_names, ref_keys, tool_rows

# The walkthrough's example as written, plus the `redact` helper it calls (itself using a helper and a regex).
PLUGIN = '''\
"""PII scrubbing for the tool-selection data."""
import re

from pydantic import BaseModel
from evsys_sdk import register_transform

EMAIL = re.compile(r"[\\w.+-]+@[\\w-]+\\.[\\w.]+")


def mask(match):
    return "[EMAIL]"


def redact(text):
    return EMAIL.sub(mask, text)


@register_transform("strip_pii")          # ← the name you use in the config
class StripPII:
    name = "strip_pii"
    class Config(BaseModel, extra="forbid"):
        field: str = "query"
    def __init__(self, **kw): self.cfg = self.Config(**kw)
    def __call__(self, rows):              # ← the rows -> rows contract
        for r in rows:
            r[self.cfg.field] = redact(r[self.cfg.field])
        return rows
'''

PLUGIN_TRANSFORM = "  - kind: strip_pii\n    params: {field: query}\n"


def pii_config(plugin_spec: str) -> str:
    config = BASE_CONFIG.replace("seed: 0\n", f"seed: 0\nplugins: [{plugin_spec}]\n")
    return config.replace("transforms:\n", "transforms:\n" + PLUGIN_TRANSFORM)


def pii_rows() -> list[dict]:
    rows = tool_rows(12)
    rows[0]["query"] = "save a contact from jane.doe@example.com please"
    return rows


def pii_project(tmp_path: Path, plugin_source: str = PLUGIN, spec: str = "pii_plugin.py") -> Path:
    project = make_project(tmp_path / "p", pii_rows(), pii_config(spec))
    (project / "pii_plugin.py").write_text(plugin_source)
    return project


def strip_pii_key(project: Path, env: dict | None = None) -> str:
    """The transform's static identity (its recipe, code identity included, over its input's)."""
    return plan_json(project, env=env)["transform[0] strip_pii"]["id"]


# -- through the CLI -----------------------------------------------------------------------


def test_walkthrough_plugin_builds_and_redacts(tmp_path, tiny_model_dir):
    project = pii_project(tmp_path)
    out = ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project)).stdout
    assert {"source", "transform[0] strip_pii", "transform[1] jsonl_to_chat", "tokenize", "train"} <= ran_names(out)
    key = ref_keys(project / "cache")["transform[0] strip_pii"]
    shown = json.loads(ok(evsys("show", f"node:{key}", "--json", "--rows", "1", "--cache-dir", "cache", cwd=project)).stdout)
    assert shown["rows"][0]["query"] == "save a contact from [EMAIL] please"
    assert shown["manifest"]["params"]["code"].startswith("source:")
    again = ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project)).stdout
    assert ran_names(again) == set()


def test_plugin_as_a_module_name_on_pythonpath_has_the_same_key(tmp_path, tiny_model_dir):
    by_path = strip_pii_key(pii_project(tmp_path / "a"))
    project = pii_project(tmp_path / "b", spec="pii_plugin")
    assert strip_pii_key(project, env={"PYTHONPATH": str(project)}) == by_path


def test_plugin_key_follows_its_code_not_its_comments(tmp_path, tiny_model_dir):
    base = strip_pii_key(pii_project(tmp_path / "base"))
    commented = edited(PLUGIN, "\n\ndef mask", "\n# masks are applied per match\n\ndef mask")
    assert strip_pii_key(pii_project(tmp_path / "comment", commented)) == base
    helper_changed = edited(PLUGIN, 'return "[EMAIL]"', 'return "[REDACTED]"')
    changed_key = strip_pii_key(pii_project(tmp_path / "helper", helper_changed))
    assert changed_key != base
    plan = plan_json(pii_project(tmp_path / "helper2", helper_changed))
    assert plan["transform[0] strip_pii"]["reasons"] == ["never built"]


def test_a_plugin_file_imports_a_helper_beside_it_and_is_keyed_by_it(tmp_path, tiny_model_dir):
    """`plugins: [pii/strip_pii.py]` whose file does `from pii_helpers import redact`: the helper
    beside it imports wherever evsys runs from, and editing it reruns the transform."""
    project = make_project(tmp_path / "p", pii_rows(), pii_config("pii/strip_pii.py"))
    (project / "pii").mkdir()
    helpers = PLUGIN.split("@register_transform")[0]
    (project / "pii" / "pii_helpers.py").write_text(helpers)
    (project / "pii" / "strip_pii.py").write_text("from pii_helpers import redact\n" + "from pydantic import BaseModel\nfrom evsys_sdk import register_transform\n\n\n@register_transform" + PLUGIN.split("@register_transform")[1])
    before = strip_pii_key(project)
    (project / "pii" / "pii_helpers.py").write_text(edited(helpers, 'return "[EMAIL]"', 'return "[PII]"'))
    assert strip_pii_key(project) != before


def test_unknown_plugin_file_or_module_is_a_config_error(tmp_path):
    project = make_project(tmp_path / "p", pii_rows(), pii_config("missing_plugin.py"))
    proc = evsys("validate", "config.yaml", cwd=project)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().endswith("plugins[0]: no such plugin file 'missing_plugin.py' (looked in the working directory and beside the config)")
    project = make_project(tmp_path / "q", pii_rows(), pii_config("no_such_module"))
    proc = evsys("validate", "config.yaml", cwd=project)
    assert proc.returncode == 2 and "cannot import 'no_such_module'" in proc.stderr and "PYTHONPATH" in proc.stderr


def test_a_param_the_plugins_lenient_config_drops_still_changes_the_key(tmp_path, tiny_model_dir):
    """pydantic's default `extra="ignore"` drops `upper` from the validated Config, but the plugin
    reads it from its kwargs: the key must follow every param it is handed."""
    lenient = edited(PLUGIN, 'class Config(BaseModel, extra="forbid"):', "class Config(BaseModel):")
    lenient = edited(lenient, "def __init__(self, **kw): self.cfg = self.Config(**kw)",
                     "def __init__(self, **kw): self.cfg, self.upper = self.Config(**kw), kw.get('upper')")
    keys = set()
    for value in ("false", "true"):
        project = pii_project(tmp_path / value, lenient)
        (project / "config.yaml").write_text(pii_config("pii_plugin.py").replace("{field: query}", f"{{field: query, upper: {value}}}"))
        keys.add(strip_pii_key(project))
    assert len(keys) == 2


def test_plugin_params_are_validated_by_its_config(tmp_path):
    project = pii_project(tmp_path)
    (project / "config.yaml").write_text(pii_config("pii_plugin.py").replace("{field: query}", "{feild: query}"))
    proc = evsys("validate", "config.yaml", cwd=project)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("transforms[0].params.feild: unknown field (did you mean field?)")


# -- entry points --------------------------------------------------------------------------

EP_MODULE = '''\
from evsys_sdk import register_transform


@register_transform("ep_upper")
class EpUpper:
    version = "1"

    def __init__(self, **kw):
        pass

    def __call__(self, rows):
        return [dict(r, query=r["query"].upper()) for r in rows]
'''


def entry_point_dist(root: Path) -> Path:
    """A tiny installed distribution advertising `evsys_ep_demo` in the evsys.plugins group."""
    root.mkdir(parents=True)
    (root / "evsys_ep_demo.py").write_text(EP_MODULE)
    info = root / "evsys_ep_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: evsys-ep-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[evsys.plugins]\ndemo = evsys_ep_demo\n")
    return root


def test_entry_point_plugins_load_on_lookup(tmp_path, monkeypatch):
    from evsys_rules.plugins import registry

    isolate_transform_registry(monkeypatch)
    site = entry_point_dist(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.delitem(sys.modules, "evsys_ep_demo", raising=False)
    cls = registry.transforms.get("ep_upper")
    assert cls.__module__ == "evsys_ep_demo"
    assert cls()([{"query": "abc"}]) == [{"query": "ABC"}]


def test_entry_point_plugin_through_the_cli(tmp_path, tiny_model_dir):
    site = entry_point_dist(tmp_path / "site")
    config = BASE_CONFIG.replace("transforms:\n", "transforms:\n  - kind: ep_upper\n")
    project = make_project(tmp_path / "p", pii_rows(), config)
    plan = plan_json(project, env={"PYTHONPATH": str(site)})
    assert plan["transform[0] ep_upper"]["status"] == "run"
    proc = evsys("validate", "config.yaml", cwd=project)  # without the distribution: unknown kind
    assert proc.returncode == 2 and "unknown transform kind 'ep_upper'" in proc.stderr


# -- code identity, in process -------------------------------------------------------------


def isolate_transform_registry(monkeypatch) -> None:
    """Plugins registered by this test go into a copy of the transform registry, dropped afterwards."""
    from evsys_rules.plugins import kinds, registry  # noqa: F401  (built-ins registered before the copy is taken)

    monkeypatch.setattr(registry.transforms, "_items", dict(registry.transforms._items))


def edited(source: str, old: str, new: str) -> str:
    assert old in source, old
    return source.replace(old, new)


def load_module(path: Path, source: str, encoding: str = "utf-8"):
    path.write_bytes(source.encode(encoding))
    name = f"plugin_{path.parent.name}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def identity(tmp_path, monkeypatch):
    """code_identity of StripPII loaded from `source` (each call a fresh module)."""
    from evsys_rules.plugins.code_identity import code_identity

    isolate_transform_registry(monkeypatch)
    counter = iter(range(1000))

    def of(source: str, encoding: str = "utf-8") -> str:
        module = load_module(tmp_path / f"m{next(counter)}.py", source, encoding)
        return code_identity(module.StripPII)

    return of


def test_identity_ignores_comments_and_formatting_but_not_code_or_docstrings_in_its_module(identity):
    """The unit is the plugin's module: a closure, a decorator or a statement anywhere in it could
    change what the plugin runs, so any code edit there changes the key; comments do not. A
    docstring does: code may read it as data (`self.__doc__` as a prompt)."""
    base = identity(PLUGIN)
    assert base.startswith("source:")
    assert identity("# top comment\n" + PLUGIN) == base
    assert identity(PLUGIN.replace("def mask(match):", "def mask(match):  # why").replace("    return", "    return ", 1)) == base
    assert identity(PLUGIN.replace("PII scrubbing", "Scrubbing PII")) != base
    assert identity(PLUGIN + "\n\ndef unrelated():\n    return 42\n") != base


def test_a_plugin_saved_with_a_bom_or_a_coding_line_is_keyed_by_its_code(identity):
    """Python imports a file that starts with a UTF-8 BOM, or declares its encoding; the identity
    reads it the same way, so an edit there is a new key (never one constant for "no source")."""
    bom = "\ufeff" + PLUGIN
    assert identity(bom) != identity(bom.replace('return "[EMAIL]"', 'return "[PII]"'))
    latin = "# -*- coding: latin-1 -*-\nMARK = 'caf\xe9'\n" + PLUGIN.replace("\u2190", "<-")
    assert identity(latin, "latin-1") != identity(latin.replace('return "[EMAIL]"', 'return "[PII]"'), "latin-1")


def test_identity_follows_the_class_its_helpers_and_their_helpers(identity):
    base = identity(PLUGIN)
    assert identity(edited(PLUGIN, 'field: str = "query"', 'field: str = "text"')) != base  # the class
    assert identity(edited(PLUGIN, "EMAIL.sub(mask, text)", "EMAIL.sub(mask, text.strip())")) != base  # redact
    assert identity(edited(PLUGIN, 'return "[EMAIL]"', 'return "[PII]"')) != base  # mask, called by redact


def test_identity_follows_module_constants_the_helpers_use(identity):
    """Changing the regex that `redact` uses changes what the transform outputs, so it changes the key."""
    base = identity(PLUGIN)
    assert identity(edited(PLUGIN, "[\\w.+-]+@", "[\\w.+-]*@")) != base


def test_a_version_attribute_pins_the_key(identity):
    versioned = edited(PLUGIN, '    name = "strip_pii"\n', '    name = "strip_pii"\n    version = "2"\n')
    assert identity(versioned) == "version:2"
    assert identity(edited(versioned, 'return "[EMAIL]"', 'return "[PII]"')) == "version:2"
    assert identity(edited(versioned, 'version = "2"', 'version = "3"')) == "version:3"


# -- row_local plugins run per chunk -------------------------------------------------------

ROW_LOCAL_PLUGIN = '''\
from evsys_sdk import register_transform


@register_transform("KIND")
class Tag:
    row_local = ROW_LOCAL

    def __init__(self, **kw):
        pass

    def __call__(self, rows):
        return [dict(r, tagged=True) for r in rows]
'''


def build_transform(project: Path) -> dict:
    """Build source + transforms only, in process; returns the first transform's manifest."""
    from evsys_build.executor import Executor
    from evsys_build.graph import Graph
    from evsys_build.store import Store
    from evsys_rules.frontend import open_project

    store = Store(project / "cache")
    graph = Graph()
    for node in open_project(project / "config.yaml", store).graph.nodes():
        if node.rule in ("source", "transform"):
            graph.add(node)
    results = Executor(store).run(graph)
    return next(m for m in results.values() if m["name"].startswith("transform[0]"))


@pytest.mark.parametrize("row_local", [True, False])
def test_row_local_plugin_reruns_only_the_changed_chunk(tmp_path, monkeypatch, tiny_model_dir, row_local):
    isolate_transform_registry(monkeypatch)
    kind = f"tag_rows_{str(row_local).lower()}"
    project = tmp_path / "p"
    rows = tool_rows(4000)
    config = BASE_CONFIG.replace("seed: 0\n", "seed: 0\nplugins: [tag_plugin.py]\n").replace("transforms:\n", f"transforms:\n  - kind: {kind}\n")
    make_project(project, rows, config)
    (project / "tag_plugin.py").write_text(ROW_LOCAL_PLUGIN.replace("KIND", kind).replace("ROW_LOCAL", str(row_local)))
    monkeypatch.chdir(project)

    first = build_transform(project)
    n_chunks = len(first["outputs"]["dataset"]["chunks"])
    assert n_chunks > 4 and first["stats"]["chunks_cached"] == 0
    assert first["params"]["row_local"] is row_local

    rows[2000] = dict(rows[2000], query="an edited query")
    (project / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    second = build_transform(project)
    assert second["key"] != first["key"]
    if row_local:
        assert 1 <= second["stats"]["chunks_ran"] <= 2
        assert second["stats"]["chunks_cached"] >= n_chunks - 2
    else:  # a whole-dataset transform reruns on everything
        assert second["stats"]["chunks_cached"] == 0
    assert second["stats"]["rows_out"] == 4000


def test_an_edited_plugin_is_reloaded_in_the_same_process(tmp_path, monkeypatch):
    """Notebook/SDK use: the code that runs must be the source the key was computed from."""
    from evsys_rules.plugins.code_identity import code_identity
    from evsys_rules.config.loading import load_config
    from evsys_rules.plugins.registry import transforms

    plugin = tmp_path / "shout.py"
    body = (
        "from evsys_sdk import register_transform\n"
        "@register_transform('shout_reload_test')\n"
        "class Shout:\n"
        "    def __init__(self, **kw): pass\n"
        "    def __call__(self, rows): return [{'q': r['q'].SUFFIX()} for r in rows]\n"
    )
    plugin.write_text(body.replace("SUFFIX", "upper"))
    (tmp_path / "data.jsonl").write_text('{"q": "Hi"}\n')
    config = tmp_path / "config.yaml"
    config.write_text(
        "plugins: [shout.py]\ndata: {source_kind: jsonl, path: data.jsonl}\n"
        "transforms: [{kind: shout_reload_test}]\nmodel: {name: evsys/tiny-qwen3}\n"
    )
    monkeypatch.chdir(tmp_path)
    load_config(config)
    first = transforms.get("shout_reload_test")
    assert first()([{"q": "Hi"}]) == [{"q": "HI"}]
    first_identity = code_identity(first)
    plugin.write_text(body.replace("SUFFIX", "lower"))
    load_config(config)
    second = transforms.get("shout_reload_test")
    assert second()([{"q": "Hi"}]) == [{"q": "hi"}]
    assert code_identity(second) != first_identity


def test_a_plugin_with_a_syntax_error_is_one_line_naming_its_file_and_line(tmp_path):
    (tmp_path / "broken.py").write_text("x = 1\ndef f(:\n")
    (tmp_path / "config.yaml").write_text("plugins: [broken.py]\ndata: {source_kind: jsonl, path: d.jsonl}\nmodel: {name: evsys/tiny-qwen3}\n")
    proc = evsys("validate", "config.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "broken.py:2:" in line and "plugins[0]" in line and "Traceback" not in proc.stderr


def test_a_plugin_that_fails_to_import_is_one_line_and_is_retried_once_fixed(tmp_path, monkeypatch):
    """A plugin whose own import raises (a missing dependency, a bug at module level) is one line
    naming the plugin's line; once fixed, loading again in the same process (a notebook) runs it,
    rather than finding it half-loaded and registering nothing."""
    from evsys_build.errors import ConfigError
    from evsys_rules.config.loading import load_config
    from evsys_rules.plugins.registry import transforms

    (tmp_path / "needs_dep.py").write_text(
        "from evsys_sdk import register_transform\n"
        "import helper_dep_of_a_plugin\n"
        "@register_transform('needs_dep_test')\n"
        "class T:\n"
        "    def __init__(self, **kw): pass\n"
        "    def __call__(self, rows): return rows\n"
    )
    (tmp_path / "data.jsonl").write_text('{"q": "Hi"}\n')
    (tmp_path / "config.yaml").write_text(
        "plugins: [needs_dep.py]\ndata: {source_kind: jsonl, path: data.jsonl}\n"
        "transforms: [{kind: needs_dep_test}]\nmodel: {name: evsys/tiny-qwen3}\n"
    )
    proc = evsys("validate", "config.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "needs_dep.py:2: ModuleNotFoundError: No module named 'helper_dep_of_a_plugin'" in line and "plugins[0]" in line
    (tmp_path / "raises.py").write_text("x = 1\nraise RuntimeError('bad\\nsetup')\n")
    (tmp_path / "config2.yaml").write_text("plugins: [raises.py]\ndata: {source_kind: jsonl, path: data.jsonl}\nmodel: {name: evsys/tiny-qwen3}\n")
    proc = evsys("validate", "config2.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "raises.py:2: RuntimeError: bad setup" in proc.stderr

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="No module named"):
        load_config(tmp_path / "config.yaml")
    (tmp_path / "helper_dep_of_a_plugin.py").write_text("")
    load_config(tmp_path / "config.yaml")  # the same process, the dependency now there
    assert transforms.get("needs_dep_test")()([{"q": 1}]) == [{"q": 1}]


def test_a_helper_module_edited_in_a_live_process_is_refused_not_keyed(tmp_path, monkeypatch):
    """Notebook/SDK use: a plugin imports a helper module of the user's, which is edited while the
    process lives (after the config was loaded, before any key was computed). The process still
    runs the old helper, so no key may be computed from the new source: loading the config again
    and asking for the key is a one-line error saying to restart, never a key for code that does
    not run (or old output stored under the new key)."""
    from evsys_build.errors import ConfigError
    from evsys_rules.config.loading import load_config
    from evsys_rules.plugins.code_identity import code_identity, forget_identities
    from evsys_rules.plugins.registry import transforms

    (tmp_path / "tag_helper_live.py").write_text("def tag(s):\n    return s + '-v1'\n")
    (tmp_path / "tagger_live.py").write_text(
        "from tag_helper_live import tag\n"
        "from evsys_sdk import register_transform\n"
        "@register_transform('tagger_live_test')\n"
        "class Tagger:\n"
        "    def __init__(self, **kw): pass\n"
        "    def __call__(self, rows): return [{'q': tag(r['q'])} for r in rows]\n"
    )
    (tmp_path / "data.jsonl").write_text('{"q": "Hi"}\n')
    config = tmp_path / "config.yaml"
    config.write_text(
        "plugins: [tagger_live.py]\ndata: {source_kind: jsonl, path: data.jsonl}\n"
        "transforms: [{kind: tagger_live_test}]\nmodel: {name: evsys/tiny-qwen3}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tag_helper_live", raising=False)
    try:
        load_config(config)
        (tmp_path / "tag_helper_live.py").write_text("def tag(s):\n    return s + '-v2'\n")  # same size, same second
        forget_identities()
        for _ in range(2):  # the first key asked for, and again after loading the config again
            with pytest.raises(ConfigError, match="tag_helper_live.py: edited since this process imported it .* restart the process"):
                code_identity(transforms.get("tagger_live_test"))
            load_config(config)
        assert transforms.get("tagger_live_test")()([{"q": "a"}]) == [{"q": "a-v1"}]  # what runs is still v1
    finally:
        sys.modules.pop("tag_helper_live", None)


def test_a_plugin_whose_rerun_failed_runs_again_once_reverted(tmp_path, monkeypatch):
    """An edit that breaks a plugin half way through its re-run, then reverted: the plugin is
    re-run on the next load (it holds half of the broken code), so what runs is the source keyed."""
    from evsys_build.errors import ConfigError
    from evsys_rules.config.loading import load_config
    from evsys_rules.plugins.code_identity import code_identity
    from evsys_rules.plugins.registry import transforms

    good = (
        "from evsys_sdk import register_transform\n"
        "SUFFIX = '-good'\n"
        "@register_transform('revert_test')\n"
        "class T:\n"
        "    def __init__(self, **kw): pass\n"
        "    def __call__(self, rows): return [{'q': r['q'] + SUFFIX} for r in rows]\n"
    )
    plugin = tmp_path / "revert_plug.py"
    plugin.write_text(good)
    (tmp_path / "data.jsonl").write_text('{"q": "Hi"}\n')
    config = tmp_path / "config.yaml"
    config.write_text("plugins: [revert_plug.py]\ndata: {source_kind: jsonl, path: data.jsonl}\ntransforms: [{kind: revert_test}]\nmodel: {name: evsys/tiny-qwen3}\n")
    monkeypatch.chdir(tmp_path)
    load_config(config)
    first = code_identity(transforms.get("revert_test"))
    plugin.write_text(good.replace("SUFFIX = '-good'\n", "SUFFIX = '-bad'\nraise RuntimeError('half way')\n"))
    with pytest.raises(ConfigError, match="half way"):
        load_config(config)
    plugin.write_text(good)
    load_config(config)
    assert transforms.get("revert_test")()([{"q": "a"}]) == [{"q": "a-good"}]
    assert code_identity(transforms.get("revert_test")) == first
