"""The `evsys` command: thin click commands over plain functions that return data."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from . import cli_diff, cli_export, cli_runs, cli_sync, collector
from .plans import ArmLabels, run_plan
from . import interrupts
from .errors import ConfigError, EvsysError, Interrupted, UsageError
from .pools import EXECUTORS
from .project import frontend
from .store import Store, cache_location, open_built_store, open_store
from .streams import outliving_readers

cache_option = click.option("--cache-dir", default=None, help="store location: a folder, s3://bucket/prefix or gs://bucket/prefix (default: $EVSYS_CACHE or ./.evsys-cache)")


def _store(cache_dir: str | None, remote: str | None = None) -> Store:
    return open_store(cache_location(cache_dir), upstream=remote)


class EvsysGroup(click.Group):
    """Maps evsys errors to one line and the exit codes of DESIGN.md (0 ok, 1 node failed, 2 bad config)."""

    def invoke(self, ctx):
        collector.pause()  # while the command imports and compiles; running nodes resume it (collector.py)
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # `evsys plan | head`: the reader left; not an error of ours
            sys.stderr.close()
            os._exit(0)
        except KeyboardInterrupt:  # Ctrl-C before a build installs its own handlers (imports, compile) or during plan
            click.echo("evsys: interrupted", err=True)
            sys.exit(Interrupted.exit_code)
        except PermissionError as exc:  # a file or folder of the user's this user may not read or write: theirs to fix
            if exc.filename is None:
                raise
            click.echo(f"evsys: error: {exc.filename}: {exc.strerror} (uid {os.getuid()}); let this user read it (and search its folders), or point the config elsewhere", err=True)
            sys.exit(ConfigError.exit_code)
        except EvsysError as exc:
            tb = getattr(exc, "traceback", None)
            if tb:
                click.echo(tb.rstrip(), err=True)
            click.echo(f"evsys: error: {exc.message}", err=True)
            sys.exit(exc.exit_code)
        finally:
            collector.resume()  # a command invoked in a longer-lived process (tests, a notebook) gives it back


@click.group(cls=EvsysGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="evsys")
def main():
    """evsys: declarative, content-addressed builds for LLM post-training experiments."""
    interrupts.KEEP_HANDLERS_AFTER_STOP = True  # this process exits after an interrupted build


target_option = click.option(
    "--target", "targets", multiple=True, metavar="TARGET",
    help="only what this needs: a node name (tokenize, train, 'eval val@50'), a rule name, or node:<key prefix>; repeatable",
)


@main.command()
@click.argument("config", type=click.Path())
@click.option("--arm", default=None, help="build only this arm")
@click.option("-j", "--jobs", default=2, show_default=True, type=click.IntRange(min=1), help="nodes to run at once (--executor threads)")
@click.option("--executor", type=click.Choice(EXECUTORS), default="threads", show_default=True, help="where nodes run: threads of this process, inline (one at a time, for a debugger), or ray")
@click.option("--ray-address", default=None, help="with --executor ray: auto, ray://host:10001, or host:port (default: $RAY_ADDRESS, else a local Ray)")
@click.option("--remote", default=None, envvar="EVSYS_REMOTE", help="read through this store (s3://…, gs://… or a folder): nodes found there are copied into --cache-dir instead of rebuilt")
@target_option
@cache_option
def build(config, arm, jobs, executor, ray_address, remote, targets, cache_dir):
    """Build every node CONFIG implies (or only what --target needs); print one line per node, then the run dir."""
    if ray_address and executor != "ray":
        raise UsageError("--ray-address needs --executor ray")
    from .build import run_build  # lazily: the executor and its pools load for builds only

    store = _store(cache_dir, remote)
    with outliving_readers():  # `evsys build ... | head` or a closed terminal never fails a node
        try:
            code = run_build(Path(config), store, arm=arm, jobs=jobs, echo=click.echo, targets=list(targets) or None, executor=executor, ray_address=ray_address)
            if targets and code == 0:
                click.echo(f"built {', '.join(targets)} (a partial build: no run dir; `evsys build {config}` builds the rest)")
        except Interrupted as exc:
            resume = f"evsys build {config}" + (f" --arm {arm}" if arm else "") + "".join(f" --target '{t}'" for t in targets) + (f" --cache-dir {cache_dir}" if cache_dir else "")
            resume += (f" --executor {executor}" if executor != "threads" else "") + (f" --ray-address {ray_address}" if ray_address else "") + (f" --remote {remote}" if remote else "")
            click.echo(f"evsys: interrupted: {exc.message}; finished work is stored, run `{resume}` to resume", err=True)
            interrupts.exit_now(exc.exit_code)
        sys.exit(code)


@main.command()
@click.argument("config", type=click.Path())
@click.option("--arm", default=None, help="plan only this arm")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--remote", default=None, envvar="EVSYS_REMOTE", help="also look in this store (s3://…, gs://… or a folder), as `build --remote` would; nothing is copied")
@target_option
@cache_option
def plan(config, arm, as_json, remote, targets, cache_dir):
    """Dry run: which nodes would run, and why."""
    render = plan_json_lines if as_json else plan_lines
    store = _store(cache_dir, remote)
    if remote:
        from .look_through import LookThroughStore

        store = LookThroughStore(store)
    run_plan(Path(config), store, arm, "json" if as_json else "text", render, click.echo, list(targets) or None)


def plan_json_lines(entries, notes) -> list[str]:
    return [json.dumps({"nodes": [e.as_json() for e in entries], "notes": notes}, indent=1)]


def plan_lines(entries, notes) -> list[str]:
    """The plan as `evsys plan` prints it: a legend of arms, one line per node, counts, notes."""
    colors = {"cached": "green", "run": "yellow", "maybe": "cyan"}
    labels = ArmLabels(list(dict.fromkeys(a for e in entries for a in e.arms or [])))
    lines = [labels.legend()] if labels.legend() else []
    for e in entries:
        why = "; ".join(e.reasons + _built_on(e))
        status = click.style(f"{e.status:<6}", fg=colors[e.status])
        key = e.node.key[:12] if e.node.key else "?" * 12
        cost = f"  [{e.cost['summary']}]" if e.cost and e.cost.get("summary") else ""
        arms = f"{labels.label(e.arms)} " if e.arms and e.arms != ["default"] else ""
        lines.append(f"{status} {key}  {arms}{e.node.name}" + (f"  ({why})" if why else "") + cost)
    counts = {s: sum(e.status == s for e in entries) for s in colors}
    lines.append(f"{counts['run']} to run, {counts['maybe']} may run, {counts['cached']} cached")
    return lines + [f"note: {note}" for note in notes]


def _built_on(entry) -> list[str]:
    """Where a cached training node was built (device, dtype), when it recorded that."""
    built = (entry.manifest or {}).get("built_on") or {}
    if entry.status != "cached" or "device" not in built:
        return []
    return [f"built on {built.get('host', '?')}: {built['device']} {built.get('dtype', '')} {built.get('attention', '')}".rstrip()]


@main.command()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="print the manifest (and rows) as JSON")
@click.option("--rows", default=None, type=click.IntRange(min=0), help="rows to preview")
@cache_option
def show(ref, as_json, rows, cache_dir):
    """Show a node: `evsys show node:<key or unique prefix>`."""
    from .show import show_node

    click.echo(show_node(open_built_store(cache_location(cache_dir)), ref, as_json=as_json, rows=rows, color=sys.stdout.isatty()))


@main.command()
@click.argument("config", type=click.Path())
@click.option("--deep", is_flag=True, help="also check every kind/params block, data files, templates, benchmarks, verifiers")
def validate(config, deep):
    """Check CONFIG offline (no GPU, no network)."""
    if deep:
        collector.resume()  # a deep check reads every row
    for line in frontend().validate(Path(config), deep=deep):
        click.echo(line)
    click.echo(f"{config}: ok" + (" (deep)" if deep else ""))


@main.command()
@click.argument("config", type=click.Path())
def fetch(config):
    """Download what CONFIG needs from the network ahead of a build (the model's tokenizer, or the model)."""
    fetch_hook = getattr(frontend(), "fetch", None)
    if fetch_hook is None:
        raise UsageError("evsys fetch: this frontend has nothing to fetch")
    for line in fetch_hook(Path(config)):
        click.echo(line)


@main.command()
@click.argument("config", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["mermaid", "dot"]), default="mermaid", show_default=True)
@cache_option
def dag(config, fmt, cache_dir):
    """Print the build graph as mermaid or dot."""
    project = frontend().open_project(Path(config), _store(cache_dir))
    click.echo(project.graph.to_mermaid() if fmt == "mermaid" else project.graph.to_dot(), nl=False)


@main.command()
@click.option("--dry-run", is_flag=True, help="only say what would be removed, by run and node, with sizes")
@click.option("--keep-last", default=5, show_default=True, type=click.IntRange(min=0), help="runs kept per experiment, newest first")
@click.option("--keep-within", default="14d", show_default=True, help="also keep runs younger than this (e.g. 14d, 36h, 0d)")
@click.option("--keep-stopped-within", default="forever", show_default=True,
              help="keep a killed, interrupted or failed run for its resume this long (e.g. 30d); an older one falls under the policy above")
@cache_option
def gc(dry_run, keep_last, keep_within, keep_stopped_within, cache_dir):
    """Remove what no retained run references (waits for running builds to finish)."""
    from .gc import collect_garbage

    store = open_built_store(cache_location(cache_dir))
    days = _days(keep_within)
    stopped_days = None if keep_stopped_within == "forever" else _days(keep_stopped_within, "--keep-stopped-within")
    report = collect_garbage(store, keep_last, days, dry_run, on_wait=lambda: click.echo("evsys: waiting for running builds to finish...", err=True),
                             keep_stopped_within_days=stopped_days)
    verb = "would remove" if dry_run else "removed"
    by_run: dict[str, list] = {}
    for node in report.removed_nodes:
        by_run.setdefault(", ".join(node.runs) or "(no run references it)", []).append(node)
    for run in report.removed_runs:
        nodes = by_run.pop(run["id"], [])
        click.echo(f"{verb} run {run['experiment']}/{run['id']} ({run['status']}, started {run['started']}): {len(nodes)} nodes, {_mb(sum(n.size for n in nodes))}")
        for n in nodes:
            click.echo(f"    {n.name:<28} node:{n.key[:12]}  {_mb(n.size)}")
    for owner, nodes in by_run.items():
        click.echo(f"{verb} {len(nodes)} nodes of {owner}: {_mb(sum(n.size for n in nodes))}")
        for n in nodes:
            click.echo(f"    {n.name:<28} node:{n.key[:12]}  {_mb(n.size)}")
    click.echo(
        f"kept {report.kept_runs} runs and {report.kept_nodes} nodes; {verb} {len(report.removed_runs)} runs, "
        f"{len(report.removed_nodes)} nodes, {report.removed_objects} objects ({_mb(report.freed_bytes)}), "
        f"{report.removed_memos} memos, {report.removed_staging} staging files"
        + (f"; {'would prune' if dry_run else 'pruned'} {report.pruned_indexes} stage indexes" if report.pruned_indexes else "")
    )
    for service, paths in report.service_refs.items():
        how = "`tinker checkpoint delete PATH...`" if all(p.startswith("tinker://") for p in paths) else "the service's tools"
        click.echo(f"{service}: {len(paths)} checkpoints named only by nodes gc {verb} stay on the service (gc never deletes them: "
                   f"another store may hold a copy of those nodes); free them with {how} if nothing needs them:")
        for path in paths:
            click.echo(f"    {path}")


def _days(text: str, option: str = "--keep-within") -> float:
    units = {"d": 1.0, "h": 1 / 24, "w": 7.0}
    try:
        days = float(text[:-1]) * units[text[-1]]
    except (KeyError, ValueError, IndexError):
        days = -1.0
    if not days >= 0:
        raise UsageError(f"{option} {text!r}: give a number and a unit, e.g. 14d, 36h or 2w") from None
    return days


def _mb(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


@main.command()
@click.option("--repair", is_flag=True, help="quarantine what is bad (the next build rebuilds it)")
@cache_option
def verify(repair, cache_dir):
    """Re-hash every object, check every manifest and memo; name each bad object's node. Exit 1 on a problem."""
    from .gc import verify_store

    store = open_built_store(cache_location(cache_dir))
    problems = verify_store(store, repair=repair, check_remote=getattr(frontend(), "check_remote", None))
    for p in problems:
        click.echo(p)
    n_objects = sum(1 for _ in store.iter_objects())
    n_nodes = sum(1 for _ in store.iter_manifests())
    click.echo(f"verified {n_objects} objects, {n_nodes} nodes: {len(problems)} problem(s)" + (" (repaired)" if repair and problems else ""))
    sys.exit(1 if problems and not repair else 0)


cli_runs.register(main, cache_option)
cli_sync.register(main, cache_option)
cli_diff.register(main, cache_option)
cli_export.register(main, cache_option)


def command_line() -> None:
    """The `evsys` executable (and `python -m evsys_build.cli`): the commands, then an exit that
    skips the collector's last pass over everything the command imported (collector.py)."""
    interrupts.terminate_like_ctrl_c()
    try:
        main()
    finally:
        interrupts.terminate_by_default()
        collector.before_exit()


if __name__ == "__main__":  # `python -m evsys_build.cli ...`
    command_line()
