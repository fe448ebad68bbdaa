"""training.png is a function of the metrics alone: a user's matplotlib settings (a `matplotlibrc`
beside the config, rcParams a plugin set) never reach it, since the report's key holds none."""

from __future__ import annotations

import pytest

ROWS = [{"step": s, "split": "train", "metrics": {"train_mean_nll": 1.0 / s}} for s in range(1, 9)] + [
    {"step": 4, "split": "val", "metrics": {"accuracy": 0.5, "val/nll": 0.7}},
    {"step": 8, "split": "val", "metrics": {"accuracy": 0.75, "val/nll": 0.6}},
]


def test_matplotlib_settings_do_not_change_the_plot():
    matplotlib = pytest.importorskip("matplotlib")
    from evsys_rules.outputs.report_files import training_plot

    plain = training_plot(ROWS)
    saved = matplotlib.rcParams.copy()
    try:
        matplotlib.rcParams.update({"lines.linewidth": 12, "axes.facecolor": "black", "figure.dpi": 50, "font.size": 20})
        assert training_plot(ROWS) == plain
    finally:
        matplotlib.rcParams.update(saved)
    assert training_plot(ROWS[:3]) != plain  # other metrics, another picture

