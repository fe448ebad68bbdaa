"""`evsys push` and `evsys pull`: copy nodes (and the runs that keep them) between the local store
and a remote one, as DVC copies between a cache and its remote."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from .errors import UsageError
from .planner import resolve_keys
from .plans import resolve_arm
from .project import frontend
from .store import Store, cache_location, open_built_store, open_store

if TYPE_CHECKING:
    from .sync import SyncReport


def _selection(store: Store, config: str | None, arm: str | None) -> tuple[list[str], list[dict]]:
    """Node keys and runs to copy from `store`: a config's nodes (every arm's, or one) that `store`
    holds and, per arm, the newest complete run that names them all; without a config, every run
    and its nodes."""
    from .sync import run_node_keys, runs_naming  # only push and pull import sync (and its thread pool)

    if config is None:
        if arm:
            raise UsageError("--arm needs a CONFIG")
        runs = list(store.iter_runs())
        return run_node_keys(store, runs), runs
    project = frontend().open_project(Path(config), store)
    arm = resolve_arm(project.arm_names, arm)
    if arm is not None and arm not in project.arm_names:
        raise UsageError(f"--arm {arm}: no such arm; the config has: {', '.join(project.arm_names)}")
    arms = [arm] if arm else project.arm_names
    graph = project.graph_for(arm)
    cached = resolve_keys(store, graph)
    arm_keys = {name: {cached[n.id]["key"] for n in graph.by_arm.get(name, []) if n.id in cached} for name in arms}
    runs, uncovered = runs_naming(store, project.experiment, arm_keys)
    for name in uncovered:
        click.echo(f"evsys: arm {name}: no complete build of {config} is recorded in {store} (only a --target, failed or interrupted one), "
                   "so no run goes with its nodes and the destination's gc may remove them; build it completely, then copy again", err=True)
    return [m["key"] for m in cached.values()], runs


def _remote(remote: str | None) -> str:
    if not remote:
        raise UsageError("name the remote store: --remote s3://bucket/prefix (or gs://…, or a folder), or set $EVSYS_REMOTE")
    return remote


def _say(verb: str, src: Store, dst: Store, report: SyncReport) -> None:
    click.echo(
        f"{verb} {report.nodes_copied} node(s) ({report.objects_copied} objects, {report.bytes_copied / 1e6:.2f} MB) "
        f"and {report.runs_copied} run(s) from {src} to {dst}; {report.nodes_present} node(s) were there already"
    )
    if report.nodes_unavailable:
        click.echo(f"{len(report.nodes_unavailable)} node(s) are not complete in {src} and were skipped (e.g. node:{report.nodes_unavailable[0][:12]})", err=True)


def register(main: click.Group, cache_option) -> None:
    remote_option = click.option("--remote", default=None, envvar="EVSYS_REMOTE", help="the remote store: s3://bucket/prefix, gs://bucket/prefix or a folder (default: $EVSYS_REMOTE)")

    @main.command()
    @click.argument("config", required=False, type=click.Path())
    @click.option("--arm", default=None, help="push only this arm's nodes")
    @remote_option
    @cache_option
    def push(config, arm, remote, cache_dir):
        """Copy built nodes from the local store to the remote: CONFIG's nodes and the runs that built them, or, without CONFIG, every run and its nodes."""
        src, dst = open_built_store(cache_location(cache_dir)), open_store(_remote(remote))
        keys, runs = _selection(src, config, arm)
        from .sync import sync_nodes

        _say("pushed", src, dst, sync_nodes(src, dst, keys, runs))

    @main.command()
    @click.argument("config", required=False, type=click.Path())
    @click.option("--arm", default=None, help="pull only this arm's nodes")
    @remote_option
    @cache_option
    def pull(config, arm, remote, cache_dir):
        """Copy nodes from the remote store into the local one: CONFIG's nodes and the runs that built them, or, without CONFIG, every run and its nodes."""
        src, dst = open_store(_remote(remote)), open_store(cache_location(cache_dir))
        keys, runs = _selection(src, config, arm)
        from .sync import sync_nodes

        _say("pulled", src, dst, sync_nodes(src, dst, keys, runs))
