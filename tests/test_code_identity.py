"""Code identities follow every way code reaches what it runs, so an edit that changes a result
always changes a key: helpers behind decorators (with or without `functools.wraps`), closures,
`partial`s and instances, modules imported inside functions, constants derived from or
re-exported by other modules, `import *`, annotations pydantic runs, `self.helper()`, `super()`
and `__init__` in a backend method, and private helpers and constants in evsys's own modules.
The on-disk identity cache must notice an edit in any of those files, and no identity may
depend on the process (run-time caches, hash seeds)."""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from evsys_rules.plugins import code_identity as ci


class Package:
    """A throwaway package on sys.path; `load` (re)imports it fresh after edits."""

    def __init__(self, root: Path, files: dict[str, str], name: str | None = None):
        self.name = name or f"probe_{uuid.uuid4().hex[:10]}"
        self.dir = root / self.name.replace(".", "/")
        self.dir.mkdir(parents=True)
        self.root = root
        for name_, text in {"__init__.py": "", **files}.items():
            self.write(name_, text)

    def write(self, name: str, text: str) -> None:
        path = self.dir / name
        path.write_text(textwrap.dedent(text))
        past = 1_600_000_000 + len(text) + uuid.uuid4().int % 100_000  # old enough to be cached, and new each time
        os.utime(path, (past, past))

    def edit(self, name: str, old: str, new: str) -> None:
        text = (self.dir / name).read_text()
        assert old in text, old
        self.write(name, text.replace(old, new))

    def load(self, module: str):
        for loaded in [m for m in sys.modules if m == self.name or m.startswith(self.name + ".")]:
            del sys.modules[loaded]
        importlib.invalidate_caches()
        return importlib.import_module(f"{self.name}.{module}")


@pytest.fixture
def package(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    return lambda files, name=None: Package(tmp_path, files, name)


def identity_of(pkg: Package, module: str, attr: str, owner: str | None = None) -> str:
    mod = pkg.load(module)
    if owner is None:
        return ci.code_identity(getattr(mod, attr))
    return ci.method_identity(getattr(mod, owner), attr)


def changes(pkg: Package, module: str, attr: str, file: str, old: str, new: str, owner: str | None = None) -> bool:
    before = identity_of(pkg, module, attr, owner)
    pkg.edit(file, old, new)
    return identity_of(pkg, module, attr, owner) != before


HELPERS = """\
import functools


@functools.lru_cache(maxsize=None)
def cached_suffix(x):
    return x + " A"


def local_mod_fn(x):
    return x + " B"


def norm(x, upper):
    return x.upper() if upper else x


class Fixer:
    def __init__(self, suffix):
        self.suffix = suffix

    def __call__(self, x):
        return x + self.suffix


def make_adder(n):
    def add(x):
        return x + " " * n
    return add


def shouting(fn):
    def wrapper(x):
        return fn(x).upper()
    return wrapper
"""

TRANSFORMS = """\
import functools

from PKG.helpers import Fixer, cached_suffix, make_adder, norm, shouting
from PKG.consts import SUFFIX
from PKG.api import fmt

NORM = functools.partial(norm, upper=False)
FIXER = Fixer(suffix=" !")


class TLru:
    def __call__(self, x):
        return cached_suffix(x)


class TLocalImport:
    def __call__(self, x):
        from PKG import helpers
        return helpers.local_mod_fn(x)


class TPartial:
    def __call__(self, x):
        return NORM(x)


class TInstance:
    def __call__(self, x):
        return FIXER(x)


class TConst:
    def __call__(self, x):
        return x + SUFFIX


class TReexport:
    def __call__(self, x):
        return fmt(x)


ADD = make_adder(3)


class TClosure:
    def __call__(self, x):
        return ADD(x)


@shouting
def decorated(x):
    return x + " d"


class TNoWraps:
    def __call__(self, x):
        return decorated(x)


class TImportModule:
    def __call__(self, x):
        import importlib
        return importlib.import_module("PKG.impl_b").fmt(x)


class TDunderImport:
    def __call__(self, x):
        return __import__("PKG.impl_c", fromlist=["fmt"]).fmt(x)


from PKG.derived import K  # noqa: E402
from PKG.star import *  # noqa: E402,F403


class TDerived:
    def __call__(self, x):
        return x * K


class TStar:
    def __call__(self, x):
        return x + STAR  # noqa: F405


from PKG.opts import Opt  # noqa: E402


class TAnnotated:
    opt: Opt  # pydantic and dataclasses run what annotations name

    def __call__(self, x):
        return x


import logging  # noqa: E402

log = logging.getLogger(__name__)
_CACHE = {}


class TRuntimeState:
    def __call__(self, x):
        log.debug("x")
        _CACHE.setdefault(x, len(_CACHE))
        return {k: k for k in {"alpha", "beta", "gamma"}}.get(x, x)
"""


@pytest.fixture
def plugin(package):
    pkg = package({})
    files = {
        "helpers.py": HELPERS,
        "consts.py": 'SUFFIX = " [c1]"\n',
        "impl_a.py": "def fmt(x):\n    return x + ' a'\n",
        "impl_b.py": "def fmt(x):\n    return x + ' b'\n",
        "impl_c.py": "def fmt(x):\n    return x + ' c'\n",
        "api.py": "from PKG.impl_a import fmt\n",
        "base.py": "BASE = 2\n",
        "derived.py": "from PKG.base import BASE\nK = BASE * 2\n",
        "star.py": "STAR = ' s'\n",
        "opts.py": "class Opt:\n    n: int = 1\n",
        "unused.py": "X = 1\n",
        "transforms.py": TRANSFORMS,
    }
    for name, text in files.items():
        pkg.write(name, text.replace("PKG", pkg.name))
    return pkg


@pytest.mark.parametrize(
    "attr, file, old, new",
    [
        ("TLru", "helpers.py", '" A"', '" AA"'),  # the body of an lru_cache'd helper
        ("TLocalImport", "helpers.py", '" B"', '" BB"'),  # a helper reached through a module imported inside the method
        ("TPartial", "transforms.py", "upper=False", "upper=True"),  # a partial's argument
        ("TPartial", "helpers.py", "x.upper() if upper", "x.lower() if upper"),  # the function behind it
        ("TInstance", "transforms.py", '" !"', '" ?"'),  # an instance's constructor argument
        ("TInstance", "helpers.py", "x + self.suffix", "self.suffix + x"),  # its class
        ("TConst", "consts.py", "[c1]", "[c2]"),  # a constant imported from another module
        ("TReexport", "api.py", "impl_a", "impl_b"),  # a function re-exported by another module
        ("TClosure", "transforms.py", "make_adder(3)", "make_adder(4)"),  # a closure's captured value
        ("TClosure", "helpers.py", '" " * n', '"-" * n'),  # the factory's body
        ("TNoWraps", "helpers.py", "fn(x).upper()", "fn(x).lower()"),  # a decorator without functools.wraps
        ("TNoWraps", "transforms.py", 'x + " d"', 'x + " e"'),  # the function it hides
        ("TDerived", "base.py", "BASE = 2", "BASE = 3"),  # a constant derived in another module
        ("TStar", "star.py", "' s'", "' t'"),  # a name from `import *`
        ("TAnnotated", "opts.py", "n: int = 1", "n: int = 2"),  # a class an annotation names
        ("TImportModule", "impl_b.py", "' b'", "' B'"),  # importlib.import_module("a constant")
        ("TDunderImport", "impl_c.py", "' c'", "' C'"),  # __import__("a constant")
    ],
)
def test_each_way_a_plugin_reaches_code_or_data_is_keyed(plugin, attr, file, old, new):
    assert changes(plugin, "transforms", attr, file, old, new)


@pytest.mark.parametrize(
    "attr, file, old, new",
    [
        ("TConst", "consts.py", "[c1]", "[c2]"),
        ("TReexport", "api.py", "impl_a", "impl_b"),
        ("TLocalImport", "helpers.py", '" B"', '" BB"'),
        ("TDerived", "base.py", "BASE = 2", "BASE = 3"),
        ("TStar", "star.py", "' s'", "' t'"),
        ("TClosure", "transforms.py", "make_adder(3)", "make_adder(4)"),
    ],
)
def test_the_identity_cache_notices_an_edit_in_any_file_the_identity_read(plugin, tmp_path, monkeypatch, attr, file, old, new):
    """A later process reads identities from disk, valid while their files are unchanged: the files
    must include the module a constant or a re-exported function came from."""
    cache = ci.IdentityCache(tmp_path / "identity-cache.json")
    monkeypatch.setattr(ci, "_disk", cache)
    before = identity_of(plugin, "transforms", attr)
    assert cache.entries and cache.dirty  # it was stored
    ci.forget_identities()  # as a new process would start
    assert identity_of(plugin, "transforms", attr) == before  # served from disk
    plugin.edit(file, old, new)
    ci.forget_identities()
    fresh = identity_of(plugin, "transforms", attr)
    monkeypatch.setattr(ci, "_disk", None)
    ci.forget_identities()
    assert fresh != before and fresh == identity_of(plugin, "transforms", attr)


def test_a_plugins_identity_ignores_run_time_state_and_hash_seeds(plugin):
    """A logger, a cache filled as the plugin runs and a set's iteration order are not code: the
    identity is the same in every process, before and after the plugin ran."""
    import subprocess

    script = (
        f"import sys; sys.path.insert(0, {str(plugin.root)!r}); import {plugin.name}.transforms as t; "
        "from evsys_rules.plugins.code_identity import code_identity; print(code_identity(t.TRuntimeState))"
    )
    seen = {
        subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, text=True, check=True).stdout.strip()
        for seed in ("1", "2", "3")
    }
    assert len(seen) == 1
    module = plugin.load("transforms")
    module.TRuntimeState()("alpha")
    assert ci.code_identity(module.TRuntimeState) in seen


def test_the_unit_of_a_plugin_is_its_module(plugin):
    """A comment or a reformat changes nothing; any code edit in a plugin's module reruns what
    every plugin in it computes (a closure or a decorator there could reach it), a docstring edit
    too (code may read `__doc__`); a module it does not use is not part of it."""
    assert not changes(plugin, "transforms", "TLru", "transforms.py", "class TLru:", "# a comment\nclass TLru:  # another\n")
    assert not changes(plugin, "transforms", "TLru", "transforms.py", "        return NORM(x)", "        return NORM(  x  )")
    assert changes(plugin, "transforms", "TLru", "transforms.py", "        return NORM(  x  )", "        'Docs.'\n        return NORM(x)")
    assert changes(plugin, "transforms", "TLru", "transforms.py", "return FIXER(x)", "return str(FIXER(x))")
    assert not changes(plugin, "transforms", "TLru", "unused.py", "X = 1", "X = 2")


def test_a_root_wrapped_by_a_decorator_without_wraps_is_keyed_through_the_wrapper(package):
    """A verifier registered through a decorator that returns a plain wrapper: the function it
    wraps lives in another module, reachable only from the wrapper's closure."""
    pkg = package({})
    pkg.write("deco.py", "def strict(fn):\n    def wrapper(p, e):\n        return bool(fn(p, e))\n    return wrapper\n")
    pkg.write("verifier.py", f"from {pkg.name}.deco import strict\n\n\n@strict\ndef exact(p, e):\n    return p == e\n")
    assert changes(pkg, "verifier", "exact", "verifier.py", "p == e", "p.strip() == e")


def test_a_version_must_be_a_string_or_a_number():
    class WithPropertyVersion:
        @property
        def version(self):
            return "1"

    assert ci.code_identity(WithPropertyVersion).startswith("source:")


BACKEND = """\
from PKG.base_backend import BaseBackend


class Config:
    rank_mult: int = 1


class Backend(BaseBackend):
    Config = Config
    SCALE = 2

    def __init__(self):
        self.offset = 1

    @property
    def factor(self):
        return 5

    def create_training_client(self, rank):
        return self._make(rank) * self.SCALE * self.factor + self.offset + super().base_step(rank)

    def _make(self, rank):
        return rank * 2
"""

BASE_BACKEND = """\
class BaseBackend:
    def base_step(self, rank):
        return rank + 10
"""


@pytest.mark.parametrize(
    "file, old, new",
    [
        ("backend.py", "rank * 2", "rank * 4"),  # a helper called through self
        ("backend.py", "SCALE = 2", "SCALE = 3"),  # a class attribute
        ("backend.py", "return 5", "return 6"),  # a property
        ("backend.py", "self.offset = 1", "self.offset = 2"),  # what __init__ sets
        ("backend.py", "rank_mult: int = 1", "rank_mult: int = 2"),  # a default of the module's Config
        ("base_backend.py", "rank + 10", "rank + 11"),  # a base method reached through super()
    ],
)
def test_a_backend_method_is_keyed_with_what_its_class_runs(package, file, old, new):
    pkg = package({})
    pkg.write("base_backend.py", BASE_BACKEND)
    pkg.write("backend.py", BACKEND.replace("PKG", pkg.name))
    assert changes(pkg, "backend", "create_training_client", file, old, new, owner="Backend")


def test_a_version_on_the_backend_class_pins_its_method_identities(package):
    pkg = package({"base_backend.py": BASE_BACKEND})
    pkg.write("backend.py", BACKEND.replace("PKG", pkg.name).replace("    SCALE = 2\n", '    SCALE = 2\n    version = "1"\n'))
    assert identity_of(pkg, "backend", "create_training_client", owner="Backend") == "version:1"
    assert not changes(pkg, "backend", "create_training_client", "backend.py", "rank * 2", "rank * 4", owner="Backend")
    assert changes(pkg, "backend", "create_training_client", "backend.py", 'version = "1"', 'version = "2"', owner="Backend")


EVSYS_MODULE = """\
import re

from evsys_rules.plugins.code_identity import not_keyed

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>")
_TABLE = {"a": 1}


def _weighted(x):
    return x * 0.5


def score(text):
    log(text)  # an observer
    match = _ANSWER_RE.search(text)
    return _weighted(_TABLE["a"]) if match else 0


@not_keyed
def log(text):
    print(text)
"""


def test_evsys_own_modules_are_keyed_whole_private_helpers_and_constants_included(tmp_path):
    """evsys's modules hold private helpers and constants a result depends on (`_weighted`, a
    regex, a table): an upgrade that changes them must rerun what they compute."""
    name = f"evsys_rules.probe_{uuid.uuid4().hex[:8]}"  # stands for a module of evsys's own package
    path = tmp_path / "probe.py"

    def score_identity(text: str) -> str:
        path.write_text(text)
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
            return ci._Collector(mod.score).text()
        finally:
            del sys.modules[name]

    base = score_identity(EVSYS_MODULE)
    for old, new in [("x * 0.5", "x * 0.25"), ("(.*?)</answer>", "(.+?)</answer>"), ('{"a": 1}', '{"a": 2}')]:
        assert score_identity(EVSYS_MODULE.replace(old, new)) != base, (old, new)
    unchanged = EVSYS_MODULE.replace("print(text)", "print('seen', text)").replace("  # an observer", "")
    assert score_identity(unchanged) == base  # an observer and a comment change nothing


def test_the_rules_keys_reach_the_modules_that_compute_their_outputs():
    """The tokenize key covers piece encoding and the loss-mask code; the eval key the verifiers."""
    from evsys_rules.nodes.eval import run_eval
    from evsys_rules.nodes.tokenize import run_tokenize
    from evsys_rules.nodes.train import run_train

    def modules_read(fn) -> set[str]:
        collector = ci._Collector(fn)
        collector.text()
        return set(collector.modules)

    for runner in (run_train, run_eval):  # callbacks are reached through @not_keyed functions only
        assert "evsys_rules.outputs.hub" not in modules_read(runner)
    tokenize = modules_read(run_tokenize)
    assert {"evsys_rules.data.piece_encoding", "evsys_rules.data.chat_tokens"} <= tokenize, sorted(tokenize)
    assert "evsys_rules.evals.verifiers" in modules_read(run_eval)


def test_an_eval_key_holds_the_seed_when_it_samples_and_the_libraries_that_render_and_decode(tmp_path, tiny_model_dir, monkeypatch):
    """Sampling at temperature > 0 depends on the seed (greedy decoding does not, so a greedy eval
    of the same checkpoint stays cached); prompts are rendered by the chat template (jinja2) and
    completions decoded by the tokenizer (tokenizers, transformers)."""
    from evsys_build.store import Store
    from evsys_rules.frontend import open_project
    from evsys_rules.plugins import registry
    from evsys_testkit import edit_config, make_evals_project

    for kinds in (registry.transforms, registry.verifiers):  # the project's plugin registers into copies
        monkeypatch.setattr(kinds, "_items", dict(kinds._items))
    project = make_evals_project(tmp_path / "project")
    monkeypatch.chdir(project)  # config paths are relative to the directory evsys runs from

    def eval_params() -> list[dict]:
        graph = open_project(project / "config.yaml", Store(project / "cache")).graph
        return [n.params for n in graph.nodes() if n.rule == "eval"]

    greedy = eval_params()
    assert greedy and all("seed" not in p for p in greedy)
    assert all(set(p["tokenizer_libraries"]) == {"transformers", "tokenizers", "jinja2"} for p in greedy)
    edit_config(project, "max_tokens: 4,", "max_tokens: 4, temperature: 0.7, num_samples: 2,")
    assert [p["seed"] for p in eval_params()] == [0] * len(greedy)
    edit_config(project, "output_dir: out\n", "output_dir: out\nseed: 1\n")
    assert [p["seed"] for p in eval_params()] == [1] * len(greedy)


IDENTITIES_SCRIPT = """
from evsys_rules.plugins import kinds
from evsys_rules.backends.local import LocalBackend
from evsys_rules.nodes import eval, tokenize, train
print(eval.code_identity(tokenize.run_tokenize), eval.code_identity(train.run_train), eval.code_identity(eval.run_eval),
      train.backend_code(LocalBackend, "create_training_client"), train.backend_code(LocalBackend, "sampling_client_from_weights"))
"""


def test_identities_do_not_depend_on_what_the_process_did_before(tmp_path, monkeypatch):
    """Module state set at run time (the fused loss class made on first use, the identity cache in
    use) must not enter an identity: a Ray worker, a notebook and a fresh CLI must agree."""
    import subprocess

    import torch

    from evsys_rules.backends.local.kernels import linear_weighted_nll

    fresh = subprocess.run([sys.executable, "-c", IDENTITIES_SCRIPT], capture_output=True, text=True, check=True).stdout.split()
    linear_weighted_nll(torch.zeros(2, 4), torch.zeros(3, 4), torch.zeros(2, dtype=torch.long), torch.ones(2), chunk=2)
    monkeypatch.setattr(ci, "_disk", ci.IdentityCache(tmp_path / "identity-cache.json"))
    ci.forget_identities()
    from evsys_rules.backends.local import LocalBackend
    from evsys_rules.nodes import eval as eval_rule
    from evsys_rules.nodes import tokenize, train

    here = [ci.code_identity(tokenize.run_tokenize), ci.code_identity(train.run_train), ci.code_identity(eval_rule.run_eval),
            train.backend_code(LocalBackend, "create_training_client"), train.backend_code(LocalBackend, "sampling_client_from_weights")]
    assert here == fresh


def test_a_cached_identity_sees_the_module_a_failed_import_fell_back_from_appear(package, tmp_path, monkeypatch):
    """`try: from .local_prompts import tag` / `except ImportError: from .default_prompts import tag`:
    once local_prompts.py exists the plugin runs other code, so an identity stored while it was
    missing must not be served (a fresh walk reads the module that now loads)."""
    pkg = package({
        "default_prompts.py": "def tag():\n    return 'DEFAULT '\n",
        "transforms.py": (
            "try:\n    from .local_prompts import tag\nexcept ImportError:\n    from .default_prompts import tag\n\n\n"
            "class TTry:\n    def __call__(self, rows):\n        return [tag() + r for r in rows]\n"
        ),
    })
    cache = ci.IdentityCache(tmp_path / "identity-cache.json")
    monkeypatch.setattr(ci, "_disk", cache)
    before = identity_of(pkg, "transforms", "TTry")
    assert cache.entries
    pkg.write("local_prompts.py", "def tag():\n    return 'LOCAL '\n")
    ci.forget_identities()  # as a new process would start
    after = identity_of(pkg, "transforms", "TTry")
    assert pkg.load("transforms").tag() == "LOCAL "
    monkeypatch.setattr(ci, "_disk", None)
    ci.forget_identities()
    assert after != before and after == identity_of(pkg, "transforms", "TTry")


def test_a_helper_with_no_source_file_is_keyed_by_its_bytes(package):
    """A helper shipped as a sourceless .pyc (or a compiled extension) runs its bytes: a new build
    of it is a new key, never silently the same one."""
    import py_compile

    pkg = package({"transforms.py": "from . import fastops\n\n\nclass TFast:\n    def __call__(self, rows):\n        return [fastops.tag() + r for r in rows]\n"})

    def compile_helper(value: str) -> None:
        pkg.write("fastops_src.py", f"def tag():\n    return {value!r}\n")
        py_compile.compile(str(pkg.dir / "fastops_src.py"), cfile=str(pkg.dir / "fastops.pyc"), doraise=True)
        (pkg.dir / "fastops_src.py").unlink()

    compile_helper("TAG-A ")
    before = identity_of(pkg, "transforms", "TFast")
    assert pkg.load("transforms").fastops.tag() == "TAG-A "
    compile_helper("TAG-B ")
    ci.forget_identities()
    after = identity_of(pkg, "transforms", "TFast")
    assert pkg.load("transforms").fastops.tag() == "TAG-B "
    assert after != before


def test_an_import_that_never_ran_neither_breaks_nor_defeats_the_identity_cache(package, tmp_path, monkeypatch):
    """`if TYPE_CHECKING:` imports and a `try:` around a package that raises on import (a missing
    native library): the cached identity is served again, and looking it up imports nothing."""
    broken = package({"__init__.py": "raise RuntimeError('libcuda.so not found')\n", "fast.py": "X = 1\n"})
    pkg = package({"transforms.py": (
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    import xml.dom.minidom\n"
        f"try:\n    from {broken.name}.fast import X\nexcept Exception:\n    X = 0\n\n\n"
        "class TQuiet:\n    def __call__(self, rows):\n        return [r * (X + 1) for r in rows]\n"
    )})
    cache = ci.IdentityCache(tmp_path / "identity-cache.json")
    monkeypatch.setattr(ci, "_disk", cache)
    before = identity_of(pkg, "transforms", "TQuiet")
    key = next(iter(cache.entries))
    ci.forget_identities()
    assert cache.get(key) == before  # served from disk: what never ran is where it was
    assert identity_of(pkg, "transforms", "TQuiet") == before
    assert broken.name not in sys.modules
