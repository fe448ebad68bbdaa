"""Built-in kinds that load on first use (Registry.provide): the names resolve to what their
modules register, a config that never names them never imports them, and a plugin that took
one of their names keeps it when the module is imported later."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def run_python(code: str) -> dict:
    """Run `code` in a fresh interpreter (nothing imported yet); it prints one JSON line."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_provided_kinds_are_not_imported_until_named_and_resolve_to_what_their_modules_register():
    out = run_python("""
        import importlib, json, sys
        from evsys_rules.plugins import kinds
        provided = {r.kind: dict(r._providers) for r in (kinds.sources, kinds.transforms, kinds.algorithms, kinds.backends, kinds.callbacks, kinds.verifiers)}
        loaded_before = sorted({m for names in provided.values() for m in names.values() if m in sys.modules})
        listed = {r.kind: r.names() for r in (kinds.backends, kinds.sources, kinds.callbacks)}
        registries = (kinds.sources, kinds.transforms, kinds.algorithms, kinds.backends, kinds.callbacks, kinds.verifiers)
        table = [(r, name, r._items[name]) for r in registries for name in r._providers]  # before anything is imported
        for _, _, entry in table:
            importlib.import_module(entry.module)  # the module's decorators register their objects
        mismatched = [f"{r.kind} {name}" for r, name, entry in table
                      if r._items[name] is not getattr(sys.modules[entry.module], entry.attribute) or r.get(name) is not r._items[name]]
        print(json.dumps({"provided": provided, "loaded_before": loaded_before, "listed": listed, "mismatched": mismatched,
                          "sdk_loaded": [m for m in ("tinker", "datasets", "wandb", "tensorboard") if m in sys.modules]}))
    """)
    assert out["provided"]["backend"] == {"tinker": "evsys_rules.backends.tinker"}
    assert set(out["provided"]["callback"]) == {"tensorboard", "wandb"} and "hf" in out["provided"]["source"]
    assert out["loaded_before"] == []  # importing the registries imports none of them
    assert "tinker" in out["listed"]["backend"] and {"wandb", "tensorboard"} <= set(out["listed"]["callback"])
    assert out["mismatched"] == []
    assert out["sdk_loaded"] == []


def test_a_plugin_keeps_a_provided_name_when_the_builtin_module_is_imported_after_it():
    out = run_python("""
        import json
        from evsys_rules.plugins import kinds
        from evsys_rules.plugins.registry import register_callback

        @register_callback("wandb")
        class MyWandb:
            def __init__(self, echo=print, **params):
                pass

        kinds.callbacks.get("tensorboard")  # imports the trackers module, which registers its own wandb
        from evsys_rules.outputs import trackers
        print(json.dumps({"wandb": kinds.callbacks.get("wandb").__name__, "tensorboard": kinds.callbacks.get("tensorboard").__name__,
                          "module_class": trackers.WandbLogger.__name__}))
    """)
    assert out == {"wandb": "MyWandb", "tensorboard": "TensorBoardLogger", "module_class": "WandbLogger"}


def test_a_plugin_registered_after_the_builtin_module_replaces_it():
    out = run_python("""
        import json
        from evsys_rules.plugins import kinds
        from evsys_rules.plugins.registry import register_backend
        builtin = kinds.backends.get("tinker")

        @register_backend("tinker")
        class MyTinker(builtin):
            pass

        print(json.dumps({"tinker": kinds.backends.get("tinker").__name__}))
    """)
    assert out == {"tinker": "MyTinker"}
