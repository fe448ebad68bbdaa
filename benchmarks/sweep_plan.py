"""`evsys plan` of a sweep, by number of arms: the offline walkthrough with a `sweep:` grid of
N learning rates against the example store (its data nodes are cached, every arm's training is
not), each as a whole process; medians of --repeat runs, seconds per arm, and how it grows.

Two plans are timed, alternated: `compiled`, the plan right after the config changed (it loads,
validates and compiles every arm: EVSYS_NO_FASTPATH=1), and `unchanged`, the same plan again,
which prints from the last plan's snapshot once nothing it read has changed (fastpath.py).

    python benchmarks/sweep_plan.py 100 400 1000 --repeat 3
    python benchmarks/sweep_plan.py 100 --repeat 11 --baseline f6a2bf6   # alternated with that commit

With --baseline, each compiled plan of this tree alternates with the same plan run by the code
of that git revision (each against its own example store, both imported from their source
folders), so a machine that drifts by the minute slows both alike; it prints both medians and
their ratio.

Goal (issue 12): 100 arms in <= 0.5 s, 1,000 arms in <= 3 s, growing linearly or better.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "examples" / "sft_walkthrough" / "offline.yaml"


def sweep_config(arms: int) -> str:
    """The walkthrough's config with `arms` learning rates as a grid (data paths made absolute)."""
    text = CONFIG.read_text().replace("examples/sft_walkthrough/", f"{REPO}/examples/sft_walkthrough/")
    rates = ", ".join(f"{1e-4 * (i + 1):.6g}" for i in range(arms))
    return text + f"\nsweep:\n  algorithm.params.learning_rate: [{rates}]\n"


COMPILED = {**os.environ, "EVSYS_NO_FASTPATH": "1"}


def written_a_minute_ago(path: Path) -> None:
    """A config written just now is not trusted by a snapshot (its stat may not show the next
    edit); users plan configs they saved more than 2 s ago."""
    past = time.time() - 60
    os.utime(path, (past, past))


def timed_plan(config: Path, store: Path, env: dict | None = None) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "evsys_build.cli", "plan", str(config), "--cache-dir", str(store)],
                          cwd=config.parent, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"evsys plan failed:\n{proc.stderr}")
    return elapsed


def source_tree(tree: Path, where: Path) -> dict:
    """An environment that imports evsys from `tree` (a checkout) before anything installed: a
    folder of links named as the packages are installed (the repository keeps evsys_rules in rules/)."""
    where.mkdir(parents=True)
    (where / "evsys_build").symlink_to(tree / "evsys_build")
    (where / "evsys_rules").symlink_to(tree / "rules")
    return {**os.environ, "PYTHONPATH": str(where), "EVSYS_NO_FASTPATH": "1"}


def compare(arms: int, repeat: int, revision: str, tmp: Path) -> None:
    """This tree's plan alternated with `revision`'s, each with its own example store."""
    base = tmp / "baseline"
    base.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
    sides = {"this tree": (source_tree(REPO, tmp / "here_path"), REPO / ".evsys-cache-example"),
             revision: (source_tree(base, tmp / "base_path"), base / ".evsys-cache-example")}
    times: dict[str, list[float]] = {name: [] for name in sides}
    config = tmp / f"sweep{arms}.yaml"
    config.write_text(sweep_config(arms))
    stores = {}
    for name, (env, example) in sides.items():
        stores[name] = tmp / f"store-{len(stores)}"
        shutil.copytree(example, stores[name])
        timed_plan(config, stores[name], env)  # warm each side's identity and stat caches
    for _ in range(repeat):
        for name, (env, _) in sides.items():
            times[name].append(timed_plan(config, stores[name], env))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    for name, ts in times.items():
        print(f"plan {arms:5d} arms  {name:>12}  median {medians[name]:6.2f} s  ({', '.join(f'{t:.2f}' for t in ts)})")
    print(f"ratio this tree / {revision}: {medians['this tree'] / medians[revision]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arms", type=int, nargs="+")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", metavar="REV", help="alternate each plan with the same plan run by this git revision's code")
    args = parser.parse_args()
    if args.baseline:
        for arms in args.arms:
            with tempfile.TemporaryDirectory() as tmp:
                compare(arms, args.repeat, args.baseline, Path(tmp))
        return
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        shutil.copytree(REPO / ".evsys-cache-example", store)
        results = []
        for arms in args.arms:
            config = Path(tmp) / f"sweep{arms}.yaml"
            config.write_text(sweep_config(arms))
            written_a_minute_ago(config)
            timed_plan(config, store)  # warm: the identity and stat caches are per store, as in daily use; leaves the snapshot
            times: dict[str, list[float]] = {"compiled": [], "unchanged": []}
            for _ in range(args.repeat):
                times["compiled"].append(timed_plan(config, store, COMPILED))
                times["unchanged"].append(timed_plan(config, store))
            medians = {mode: statistics.median(ts) for mode, ts in times.items()}
            results.append((arms, medians))
            for mode, ts in times.items():
                runs = ", ".join(f"{t:.2f}" for t in ts)
                print(f"plan {arms:5d} arms  {mode:>9}  median {medians[mode]:6.2f} s over {len(ts)} runs ({runs})  {1000 * medians[mode] / arms:6.2f} ms/arm")
        if len(results) > 1:
            (a0, t0), (a1, t1) = results[0], results[-1]
            for mode in t0:
                print(f"growth {a0} -> {a1} arms, {mode}: time x{t1[mode] / t0[mode]:.2f} for arms x{a1 / a0:.1f}")

if __name__ == "__main__":
    main()
