"""`evsys diff A B`: compare two configs, arms or past runs (see diff.py)."""

from __future__ import annotations

import json

import click

from .store import cache_location, open_store


def register(main: click.Group, cache_option) -> None:
    @main.command()
    @click.argument("a")
    @click.argument("b")
    @click.option("--json", "as_json", is_flag=True, help="machine-readable output (every metric at every equal step)")
    @click.option("--all-steps", is_flag=True, help="every train step, not only the eval steps and the last one")
    @cache_option
    def diff(a, b, as_json, all_steps, cache_dir):
        """Compare two configs, arms or runs: A and B are each a config file (config.yaml, or
        config.yaml@ARM) or a run id prefix from `evsys runs` (RUN, or RUN@ARM). Prints the config
        paths that differ, the nodes they share and do not, and metric deltas at equal steps."""
        from .diff import diff_sides, format_diff, load_side  # only `diff` pays for importing it

        store = open_store(cache_location(cache_dir))
        result = diff_sides(load_side(store, a), load_side(store, b))
        if as_json:
            click.echo(json.dumps(result.as_json(), indent=1))
            return
        for line in format_diff(result, all_steps):
            click.echo(line)
