"""While a plugin's code runs, a read of an environment variable its key does not hold (a computed
name, the whole environment) fails with its file:line; keyed reads, and reads made by the
libraries it calls, pass."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from evsys_build.errors import ConfigError
from evsys_rules.plugins.environment_watch import environment_checked

PLUGIN = """\
import os
import tempfile
from os import environ as E

NAME = "KEYED_B"


def keyed(x):
    return os.environ.get("KEYED_A", "") + os.getenv(NAME, "") + str("KEYED_C" in E) + x


def computed(x):
    return os.environ.get("HIDDEN_" + x, "")


def whole(x):
    return str(sorted(os.environ.items())[:1])


def through_a_library(x):
    return tempfile.gettempdir()  # the stdlib reads TMPDIR: not the plugin's read


def set_then_read(x):
    os.environ["SET_HERE_" + x.upper()] = "1"
    return os.environ["SET_HERE_" + x.upper()]


def through_environb(x):
    return os.environb.get(("HIDDEN_" + x).encode(), b"")


def lazily(rows):
    for row in rows:
        yield os.environ.get("HIDDEN_" + row, "")


def with_a_credential(x):
    return os.environ["OPENAI_API_KEY"][:0] + x


def in_a_thread(x):
    import threading
    out = []
    t = threading.Thread(target=lambda: out.append(os.environ.get("HIDDEN_" + x)))
    t.start(); t.join()
    return out
"""


def user_module(folder, name: str, text: str, monkeypatch):
    """`text` imported as a module of the user's, from its own file."""
    path = folder / f"{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    return user_module(tmp_path, "env_plugin", PLUGIN, monkeypatch)


def run(fn, *args):
    with environment_checked(fn, f"the verifier {fn.__name__}"):
        return fn(*args)


def test_keyed_reads_library_reads_and_credentials_pass(plugin):
    run(plugin.keyed, "x")
    run(plugin.through_a_library, "x")
    run(plugin.computed, "API_KEY")  # HIDDEN_API_KEY: a credential keys nothing


def test_a_read_on_a_thread_the_plugin_started_is_caught(plugin):
    with pytest.raises(ConfigError, match=r"env_plugin.py:\d+: the verifier in_a_thread reads the environment variable HIDDEN_X"):
        run(plugin.in_a_thread, "X")


def test_a_generators_reads_are_caught_while_it_is_consumed_inside_the_check(plugin):
    with pytest.raises(ConfigError, match="reads the environment variable HIDDEN_ROW"):
        with environment_checked(plugin.lazily, "the transform lazily"):
            list(plugin.lazily(["ROW"]))


def test_environment_values_are_keyed_by_digest_and_credentials_not_at_all(plugin, monkeypatch):
    from evsys_rules.plugins.environment_reads import environment_read_by

    monkeypatch.setenv("KEYED_A", "plain value")
    keyed = environment_read_by(plugin.keyed, "the verifier keyed")
    assert set(keyed) == {"KEYED_A", "KEYED_B", "KEYED_C"} and "plain value" not in str(keyed)
    assert keyed["KEYED_A"].startswith("sha256:")
    assert "OPENAI_API_KEY" not in environment_read_by(plugin.with_a_credential, "the verifier with_a_credential")


def test_a_computed_name_fails_with_the_plugins_line(plugin):
    with pytest.raises(ConfigError, match=r"env_plugin.py:13: the verifier computed reads the environment variable HIDDEN_X, which its key does not hold"):
        run(plugin.computed, "X")


def test_a_read_of_the_whole_environment_fails(plugin):
    with pytest.raises(ConfigError, match=r"env_plugin.py:17: the verifier whole reads the whole environment"):
        run(plugin.whole, "x")


def test_a_plugin_that_declares_identity_is_not_checked(plugin):
    class Declared:
        def identity(self):
            return {"hidden": "declared"}

    Declared.__module__ = "env_plugin"
    with environment_checked(Declared, "the transform declared"):
        plugin.computed("X")



BACKEND = """\
import os


class CappedBackend:
    def sampling_client_from_weights(self, model_dir, blobs):
        return int(os.environ.get("CAPPED_MAX_TOKENS", "6"))

    def score_from_weights(self, model_dir, blobs, datums):
        return int(os.environ.get("CAPPED_MAX_TOKENS", "6"))
"""


def test_a_plugin_backends_variables_key_its_evals(tmp_path, monkeypatch):
    """A sampler that reads a variable changes completions: eval keys hold it, as train keys do."""
    from evsys_rules.config.schema import BenchmarkConfig
    from evsys_rules.nodes.eval import eval_params

    module = user_module(tmp_path, "capped_backend", BACKEND, monkeypatch)
    bench = BenchmarkConfig(name="b", path=str(tmp_path))
    params = {}
    for value in ("6", "1"):
        monkeypatch.setenv("CAPPED_MAX_TOKENS", value)
        params[value] = eval_params(bench, [], None, module.CappedBackend, {})["sampler"]
    assert params["6"] != params["1"] and set(params["6"]["environment"]) == {"CAPPED_MAX_TOKENS"}


def test_reading_back_what_the_plugin_set_and_environb_reads(plugin):
    run(plugin.set_then_read, "x")
    with pytest.raises(ConfigError, match="reads the environment variable HIDDEN_B"):
        run(plugin.through_environb, "B")
