"""The `evsys` command: thin click commands over plain functions that return data."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from .build import plan_entries, run_build
from .errors import EvsysError
from .gc import collect_garbage, verify_store
from .project import frontend
from .show import show_node
from .store import Store, default_cache_dir

cache_option = click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="store location (default: $EVSYS_CACHE or ./.evsys-cache)")


class EvsysGroup(click.Group):
    """Maps evsys errors to one line and the exit codes of DESIGN.md (0 ok, 1 node failed, 2 bad config)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # `evsys plan | head`: the reader left; not an error of ours
            sys.stderr.close()
            os._exit(0)
        except EvsysError as exc:
            tb = getattr(exc, "traceback", None)
            if tb:
                click.echo(tb.rstrip(), err=True)
            click.echo(f"evsys: error: {exc.message}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=EvsysGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="evsys")
def main():
    """evsys: declarative, content-addressed builds for LLM post-training experiments."""


@main.command()
@click.argument("config", type=click.Path())
@click.option("--arm", default=None, help="build only this arm")
@click.option("-j", "--jobs", default=2, show_default=True, help="nodes to run at once")
@cache_option
def build(config, arm, jobs, cache_dir):
    """Build every node CONFIG implies; print one line per node, then the run dir."""
    store = Store(default_cache_dir(cache_dir))
    code = run_build(Path(config), store, arm=arm, jobs=jobs, echo=click.echo)
    sys.exit(code)


@main.command()
@click.argument("config", type=click.Path())
@click.option("--arm", default=None, help="plan only this arm")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@cache_option
def plan(config, arm, as_json, cache_dir):
    """Dry run: which nodes would run, and why."""
    entries = plan_entries(Path(config), Store(default_cache_dir(cache_dir)), arm)
    if as_json:
        click.echo(json.dumps({"nodes": [e.as_json() for e in entries]}, indent=1))
        return
    for e in entries:
        why = "; ".join(e.reasons)
        status = click.style(f"{e.status:<6}", fg="green" if e.status == "cached" else "yellow")
        click.echo(f"{status} {e.node.key[:12]}  {_label(e.node, e.arms)}" + (f"  ({why})" if why else ""))
    n_run = sum(e.status == "run" for e in entries)
    click.echo(f"{n_run} to run, {len(entries) - n_run} cached")


def _label(node, arms) -> str:
    arm = f"[{','.join(arms)}] " if arms and arms != ["default"] else ""
    return f"{arm}{node.name}"


@main.command()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="print the manifest (and rows) as JSON")
@click.option("--rows", default=None, type=int, help="rows to preview")
@cache_option
def show(ref, as_json, rows, cache_dir):
    """Show a node: `evsys show node:<key or unique prefix>`."""
    click.echo(show_node(Store(default_cache_dir(cache_dir)), ref, as_json=as_json, rows=rows, color=sys.stdout.isatty()))


@main.command()
@click.argument("config", type=click.Path())
@click.option("--deep", is_flag=True, help="also check every kind/params block, data files, templates, benchmarks, verifiers")
def validate(config, deep):
    """Check CONFIG offline (no GPU, no network)."""
    for line in frontend().validate(Path(config), deep=deep):
        click.echo(line)
    click.echo(f"{config}: ok" + (" (deep)" if deep else ""))


@main.command()
@click.argument("config", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["mermaid", "dot"]), default="mermaid", show_default=True)
@cache_option
def dag(config, fmt, cache_dir):
    """Print the build graph as mermaid or dot."""
    project = frontend().open_project(Path(config), Store(default_cache_dir(cache_dir)))
    click.echo(project.graph.to_mermaid() if fmt == "mermaid" else project.graph.to_dot(), nl=False)


@main.command()
@click.option("--dry-run", is_flag=True, help="only say what would be removed")
@cache_option
def gc(dry_run, cache_dir):
    """Remove nodes and objects that no ref reaches."""
    report = collect_garbage(Store(default_cache_dir(cache_dir)), dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    click.echo(
        f"kept {report.kept_nodes} nodes; {verb} {len(report.removed_nodes)} nodes, "
        f"{len(report.removed_objects)} objects ({report.freed_bytes / 1e6:.2f} MB), {report.removed_memos} chunk memos"
    )


@main.command()
@cache_option
def verify(cache_dir):
    """Re-hash every object and check every manifest; exit 1 on any mismatch."""
    store = Store(default_cache_dir(cache_dir))
    problems = verify_store(store)
    for p in problems:
        click.echo(p)
    n_objects = sum(1 for _ in store.iter_objects())
    n_nodes = sum(1 for _ in store.iter_manifests())
    click.echo(f"verified {n_objects} objects, {n_nodes} nodes: {len(problems)} problem(s)")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":  # `python -m evsys_build.cli ...`
    main()
