"""The `evsys` command pauses the cyclic garbage collector while it imports and compiles
(evsys_build/collector.py): nodes must still run with it on, and a process that had it off
keeps it off."""

from __future__ import annotations

import gc
import json

from evsys_testkit import BASE_CONFIG, evsys, make_project, ok, tool_rows

GC_PROBE = '''\
import gc
import json
import os

from evsys_sdk import register_transform


@register_transform("gc_probe")
class GcProbe:
    """Writes whether the collector is on while the node runs (a side channel for the test)."""

    def __init__(self, **kw):
        pass

    def __call__(self, rows):
        with open(os.environ["GC_PROBE_OUT"], "w") as out:
            json.dump({"enabled": gc.isenabled()}, out)
        return list(rows)
'''


def test_nodes_of_a_cli_build_run_with_the_collector_on(tmp_path):
    config = BASE_CONFIG.replace("seed: 0\n", "seed: 0\nplugins: [gc_probe.py]\n").replace("transforms:\n", "transforms:\n  - kind: gc_probe\n")
    project = make_project(tmp_path / "p", tool_rows(8), config)
    (project / "gc_probe.py").write_text(GC_PROBE)
    probe = tmp_path / "probe.json"
    ok(evsys("build", "config.yaml", "--cache-dir", "cache", "--target", "transform", cwd=project, env={"GC_PROBE_OUT": str(probe)}))
    assert json.loads(probe.read_text()) == {"enabled": True}


def test_pause_and_resume_leave_a_collector_that_was_off_as_it_was():
    from evsys_build import collector

    was = gc.isenabled()
    try:
        gc.enable()
        collector.pause()
        assert not gc.isenabled()
        collector.resume()
        assert gc.isenabled()
        collector.resume()  # twice: nothing more
        assert gc.isenabled()
        gc.disable()
        collector.pause()
        collector.resume()
        assert not gc.isenabled()  # off before the command: still off
    finally:
        (gc.enable if was else gc.disable)()
