"""Outputs: callbacks, the run dir, experiment.md, and `evsys show` previews."""
