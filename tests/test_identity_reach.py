"""Keys follow code and data a plugin reaches without naming it: a helper module imported only
for what importing it does, another plugin looked up by name in a registry, a module that now
resolves to another file, a notebook global, a data file's suffix. Each of these once left a key
unchanged while the result changed (a silent stale cache hit)."""

from __future__ import annotations

import importlib
import json
import linecache
import os
import sys
import types
import uuid
from pathlib import Path

import pytest

from evsys_rules.plugins import code_identity as ci
from evsys_testkit import copy_project, evsys, make_project, ok, plan_json, tool_rows, write_jsonl
from test_code_identity import package  # noqa: F401  (the fixture)

TABLE = "FUNCS = {}\n"
IMPLS = """\
from .table import FUNCS


def shout(text):
    return text.upper()


FUNCS["style"] = shout
"""
TRANSFORM = """\
{import_line}
from .table import FUNCS


class Styled:
    def __call__(self, rows):
        return [{{**r, "query": FUNCS["style"](r["query"])}} for r in rows]
"""


@pytest.mark.parametrize("import_line", ["from . import impls  # noqa: F401  (fills FUNCS)", "import {name}.impls  # noqa: F401"])
def test_a_helper_imported_for_its_side_effect_is_part_of_the_key(package, import_line):
    name = f"probe_{uuid.uuid4().hex[:10]}"
    transform = TRANSFORM.format(import_line=import_line.format(name=name))
    pkg = package({"table.py": TABLE, "impls.py": IMPLS, "transforms.py": transform}, name)
    before = ci.code_identity(pkg.load("transforms").Styled)
    pkg.edit("impls.py", "text.upper()", "text.lower()")
    ci.forget_identities()
    assert ci.code_identity(pkg.load("transforms").Styled) != before


REGISTRY = """\
from evsys_rules.plugins.registry import Registry

STYLES = Registry("style")
"""
INNER = """\
from .reg import STYLES


@STYLES.register("shout")
class Shout:
    def __call__(self, text):
        return text.upper()
"""
OUTER = """\
from . import reg


class ByName:
    def __init__(self, inner):
        self.inner = inner

    def __call__(self, rows):
        style = reg.STYLES.get(self.inner)()
        return [{**r, "query": style(r["query"])} for r in rows]
"""


def test_a_plugin_that_runs_another_by_name_is_keyed_with_it(package):
    pkg = package({"reg.py": REGISTRY, "inner.py": INNER, "outer.py": OUTER})

    def identity():
        pkg.load("inner")  # registers Shout, as the config's plugins list would
        return ci.code_identity(importlib.import_module(f"{pkg.name}.outer").ByName)

    before = identity()
    pkg.edit("inner.py", "text.upper()", "text.lower()")
    ci.forget_identities()
    assert identity() != before


def test_a_cached_identity_is_not_served_once_a_module_resolves_to_another_file(tmp_path, monkeypatch, package):
    """Another checkout of a helper on PYTHONPATH: the plugin file and the old helper file are both
    unchanged, so their stat identities still match; the import now runs other code."""
    helper = f"helper_{uuid.uuid4().hex[:8]}"
    first, second = tmp_path / "checkout1", tmp_path / "checkout2"
    for root, word in ((first, "upper"), (second, "lower")):
        root.mkdir()
        (root / f"{helper}.py").write_text(f"def style(text):\n    return text.{word}()\n")
        os.utime(root / f"{helper}.py", (1_600_000_000, 1_600_000_000))  # old enough to be cached
    pkg = package({"transforms.py": f"import {helper}\n\n\nclass T:\n    def __call__(self, rows):\n        return [{helper}.style(r) for r in rows]\n"})
    monkeypatch.setattr(ci, "_disk", ci.IdentityCache(tmp_path / "identity-cache.json"))

    def identity(root):
        sys.modules.pop(helper, None)
        monkeypatch.setattr(sys, "path", [str(root), *[p for p in sys.path if p not in (str(first), str(second))]])
        ci.forget_identities()  # as a new process would start
        return ci.code_identity(pkg.load("transforms").T)

    with_first = identity(first)
    assert ci._disk.entries  # stored
    assert identity(first) == with_first  # served from disk
    with_second = identity(second)
    monkeypatch.setattr(ci, "_disk", None)
    assert with_second != with_first and with_second == identity(second)
    sys.modules.pop(helper, None)


def notebook_cell(module: types.ModuleType, number: int, source: str) -> None:
    """Run `source` as IPython runs a cell: compiled under a name linecache knows, in a module with no file."""
    name = f"<ipython-input-{number}-{uuid.uuid4().hex[:12]}>"
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    exec(compile(source, name, "exec"), module.__dict__)


def test_a_notebook_function_is_keyed_with_the_globals_it_reads(monkeypatch):
    notebook = types.ModuleType(f"notebook_{uuid.uuid4().hex[:8]}")  # no __file__, like a kernel's __main__
    monkeypatch.setitem(sys.modules, notebook.__name__, notebook)
    notebook_cell(notebook, 1, "ACCEPT = False\nALIASES = {'a': 1}\n\ndef accepts(prediction):\n    return ACCEPT and prediction in ALIASES\n")
    accepts = notebook.accepts
    before = ci.code_identity(accepts)
    assert ci.code_identity(accepts) == before  # the same globals: the same identity
    notebook_cell(notebook, 2, "ACCEPT = True\n")  # the same function object, another global value
    flipped = ci.code_identity(accepts)
    notebook_cell(notebook, 3, "ALIASES['b'] = 2\n")  # a dict changed in place
    assert len({before, flipped, ci.code_identity(accepts)}) == 3


def test_a_data_files_suffix_is_part_of_the_source_key(tmp_path, tiny_model_dir):
    """`source_kind: json` reads a .json file whole and a .jsonl file line by line: the same bytes
    under another suffix are other rows."""
    rows = tool_rows(3)
    project = make_project(tmp_path / "p", rows)
    write_jsonl(project / "data" / "train.json", rows)
    (project / "data" / "train.jsonl").unlink()
    config = (project / "config.yaml").read_text()
    (project / "config.yaml").write_text(config.replace("source_kind: jsonl", "source_kind: json").replace("data/train.jsonl", "data/train.json"))
    as_json = plan_json(project)["source"]["key"]
    (project / "data" / "train.json").rename(project / "data" / "train.jsonl")
    (project / "config.yaml").write_text(config.replace("source_kind: jsonl", "source_kind: json"))
    assert plan_json(project)["source"]["key"] != as_json


def test_a_tokenizer_library_upgrade_samples_the_evals_again(built_evals, tmp_path):
    """Completions are decoded by the tokenizer libraries: after an upgrade the eval reruns and
    takes none of its per-task answers from the memo the old version filled."""
    project = copy_project(built_evals, tmp_path / "p")
    fake = tmp_path / "site" / "tokenizers-0.23.99.dist-info"  # what `pip install -U tokenizers` leaves ahead on sys.path
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: tokenizers\nVersion: 0.23.99\n")
    env = {"PYTHONPATH": str(fake.parent)}
    ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project, env=env))
    evals = {name: node["key"] for name, node in plan_json(project, env=env).items() if name.startswith("eval ")}
    assert evals
    for name, key in evals.items():
        shown = ok(evsys("show", f"node:{key}", "--cache-dir", "cache", cwd=project)).stdout
        stats = json.loads(next(line for line in shown.splitlines() if line.startswith("stats")).split(None, 1)[1])
        assert stats["tasks_cached"] == 0 and stats["tasks_sampled"] > 0, (name, stats)


def test_a_folder_without_tokenizer_json_is_keyed_with_the_libraries_that_convert_it():
    """transformers builds the fast tokenizer of a `tokenizer.model` (sentencepiece, protobuf) or
    tiktoken folder itself: their versions decide the tokens there, and only there."""
    from evsys_rules.models.resolve import ResolvedModel
    from evsys_rules.nodes.tokenize import tokenizer_libraries

    def model(*files):
        return ResolvedModel("m", None, Path("m"), {}, {name: "0" * 32 for name in files})

    assert set(tokenizer_libraries(model("tokenizer.json", "tokenizer_config.json"))) == {"transformers", "tokenizers", "jinja2"}
    assert set(tokenizer_libraries(model("tokenizer.model", "tokenizer_config.json"))) == {
        "transformers", "tokenizers", "jinja2", "sentencepiece", "protobuf", "tiktoken"}


def test_the_tokenizer_snapshot_of_such_a_folder_is_keyed_by_the_same_libraries(tmp_path, monkeypatch):
    """The tokenize node reruns after a sentencepiece upgrade; the snapshot it loads (a memo, kept
    per machine too) must be a new one then, not the pipeline the old converter built."""
    from evsys_rules.data import tokenizer_snapshot

    for name in ("tokenizer.model", "tokenizer_config.json"):
        (tmp_path / name).write_text(name)
    before = tokenizer_snapshot._snapshot_key(str(tmp_path), ("stamp",), "code")
    real = tokenizer_snapshot.library_versions
    monkeypatch.setattr(tokenizer_snapshot, "library_versions", lambda *names: {**real(*names), **({"sentencepiece": "9.9"} if "sentencepiece" in names else {})})
    assert tokenizer_snapshot._snapshot_key.__wrapped__(str(tmp_path), ("stamp",), "code") != before
