"""The seam between the engine and the rules that compile a config (the "frontend").

The engine imports the frontend lazily by module name, so `evsys_build` never imports ML code.
A frontend module provides:
  open_project(config_path, store) -> object with .graph, .experiment, .arm_names,
      .graph_for(arm | None), .refs(store), .record(store, arms), .finish(store, results, arms, echo)
  validate(config_path, deep) -> list[str]          (raises ConfigError on the first mistake)
  preview(store, manifest, rows, color, text=True) -> (text, rows_as_json)
"""

from __future__ import annotations

import importlib
import os

DEFAULT_FRONTEND = "rules.project"


def frontend():
    return importlib.import_module(os.environ.get("EVSYS_FRONTEND", DEFAULT_FRONTEND))
