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


def in_a_thread(x):
    import threading
    out = []
    t = threading.Thread(target=lambda: out.append(os.environ.get("HIDDEN_" + x)))
    t.start(); t.join()
    return out
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    path = tmp_path / "env_plugin.py"
    path.write_text(PLUGIN)
    spec = importlib.util.spec_from_file_location("env_plugin", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "env_plugin", module)
    spec.loader.exec_module(module)
    return module


def run(fn, *args):
    with environment_checked(fn, f"the verifier {fn.__name__}"):
        return fn(*args)


def test_keyed_reads_and_library_reads_pass(plugin):
    run(plugin.keyed, "x")
    run(plugin.through_a_library, "x")
    run(plugin.in_a_thread, "X")  # another thread's reads are not attributed to this call


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

