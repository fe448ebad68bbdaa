"""Materialize the report nodes into <output_dir>/<run_name>/ (written on every build)."""

from __future__ import annotations


def materialize(project, store, results: dict, arms: list[str], echo) -> None:
    for nodes in project.arm_nodes:
        if nodes.arm.name not in arms or nodes.report is None:
            continue
        from .report import write_run_dir

        write_run_dir(project, store, results, nodes, echo)
