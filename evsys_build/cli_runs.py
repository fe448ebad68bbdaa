"""`evsys runs`: list the runs of the store, show one, and rewrite an earlier run's run dir."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .errors import UsageError
from .processes import process_alive
from .project import frontend
from .store import Store, cache_location, open_built_store


def list_runs(store: Store, experiment: str | None) -> list[dict]:
    return list(store.iter_runs(experiment))


def shown_status(run: dict) -> str:
    """The run's status, or `killed` for a `running` record whose build process is gone from this
    host (SIGKILL, a second Ctrl-C): its record never got its nodes; gc keeps what it saved until
    a later build of the experiment finishes."""
    import socket  # lazily: every command imports this module, few list runs

    status = run.get("status", "?")
    if status == "running" and run.get("host") == socket.gethostname() and isinstance(run.get("pid"), int) and not process_alive(run["pid"]):
        return "killed"
    return status


def find_run(store: Store, run_id: str) -> dict:
    """The run whose id is (or starts with) `run_id`, in any experiment."""
    matches = [r for r in store.iter_runs() if r["id"].startswith(run_id)]
    if not matches:
        raise UsageError(f"no run {run_id!r} in {store}; `evsys runs` lists them")
    if len(matches) > 1:
        raise UsageError(f"run id {run_id!r} is ambiguous ({', '.join(r['id'] for r in matches[:5])}); give more characters")
    return matches[0]


def headline(run: dict) -> str:
    """Each arm's headline metric (the first its config lists; a run recorded before headlines
    were: the first validation metric by name)."""
    parts = []
    for arm, entry in run.get("arms", {}).items():
        metrics = entry.get("metrics") or {}
        key = entry.get("headline") or next((k for k in metrics if k.startswith("val/")), next(iter(metrics), None))
        if key is not None:
            value = metrics[key]
            parts.append(f"{arm}: {key}={value:.4f}" if isinstance(value, float) else f"{arm}: {key}={value}")
    return "; ".join(parts)


class RunsGroup(click.Group):
    """`evsys runs [EXPERIMENT]` lists; `evsys runs show RUN` shows: a first word that is not a
    subcommand is the experiment to list."""

    def parse_args(self, ctx, args):
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["--experiment", args[0], *args[1:]]
        return super().parse_args(ctx, args)


def register(main: click.Group, cache_option) -> None:
    @main.group(cls=RunsGroup, invoke_without_command=True)
    @click.option("--experiment", default=None, hidden=True)
    @click.option("--json", "as_json", is_flag=True, help="machine-readable output")
    @cache_option
    @click.pass_context
    def runs(ctx, experiment, as_json, cache_dir):
        """List the runs of the store (`evsys runs EXPERIMENT`: of one experiment), oldest first."""
        ctx.obj = cache_dir  # `runs --cache-dir X show RUN`; `runs show RUN --cache-dir X` wins
        if ctx.invoked_subcommand is not None:
            return
        found = list_runs(open_built_store(cache_location(cache_dir)), experiment)
        if as_json:
            click.echo(json.dumps([{k: r.get(k) for k in ("id", "experiment", "run_name", "status", "started", "finished", "partial", "targets", "error")} for r in found], indent=1))
            return
        for r in found:
            status = shown_status(r) + (" (partial)" if r.get("partial") else "")
            click.echo(f"{r['id']}  {r['experiment']:<24} {status:<11} {', '.join(r.get('arms', {}))}  {headline(r)}")
        click.echo(f"{len(found)} run(s)")

    @runs.command("show")
    @click.argument("run_id")
    @click.option("--write", "write_dir", type=click.Path(file_okay=False), default=None, help="rewrite the run's run dir into this folder")
    @cache_option
    @click.pass_obj
    def show_run(group_cache_dir, run_id, write_dir, cache_dir):
        """Show one run (config, arms, node keys, metrics); with --write, rewrite its run dir from the store."""
        store = open_built_store(cache_location(cache_dir or group_cache_dir))
        run = find_run(store, run_id)
        if write_dir:
            written = frontend().write_run(store, run, Path(write_dir))
            click.echo(f"wrote {len(written)} files of run {run['id']} into {write_dir}")
            return
        click.echo(f"run        {run['id']} ({shown_status(run)}{', partial: ' + ', '.join(run.get('targets') or []) if run.get('partial') else ''})")
        if run.get("error"):
            click.echo(f"error      {run['error']}")
        click.echo(f"experiment {run['experiment']}  run_name {run.get('run_name')}")
        click.echo(f"config     {run.get('config', {}).get('path')}")
        click.echo(f"time       {run.get('started')} → {run.get('finished')} on {run.get('host')}")
        for arm, entry in run.get("arms", {}).items():
            click.echo(f"arm {arm}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in (entry.get("metrics") or {}).items()))
            for name, node in entry.get("nodes", {}).items():
                click.echo(f"    {name:<28} node:{(node.get('key') or '?' * 12)[:12]}")
