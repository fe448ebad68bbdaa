"""The engine stays free of ML imports: importing it (and starting the CLI) loads no heavy library."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "peft", "tinker", "numpy", "networkx", "evsys_rules", "ray", "fsspec", "s3fs", "gcsfs", "botocore")


def test_engine_import_loads_no_ml_library():
    code = (
        "import sys\n"
        "import evsys_build.cli, evsys_build.build, evsys_build.executor, evsys_build.planner, evsys_build.store, evsys_build.chunks, evsys_build.gc\n"
        "import evsys_build.pools, evsys_build.ray_pool, evsys_build.ray_worker, evsys_build.sync, evsys_build.remote_bucket\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "evsys_build.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("build", "plan", "show", "validate", "dag", "gc", "verify", "runs", "diff", "export", "push", "pull"):
        assert f"  {command} " in out
