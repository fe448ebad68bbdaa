"""`evsys plan` of a sweep, by number of arms: the offline walkthrough with a `sweep:` grid of
N learning rates against the example store (its data nodes are cached, every arm's training is
not), each as a whole process; medians of --repeat runs, seconds per arm, and how it grows.

    python benchmarks/sweep_plan.py 100 400 1000 --repeat 3

Goal (issue 12): 100 arms in <= 0.5 s, 1,000 arms in <= 3 s, growing linearly or better.
"""

from __future__ import annotations

import argparse
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


def timed_plan(config: Path, store: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "evsys_build.cli", "plan", str(config), "--cache-dir", str(store)],
                          cwd=config.parent, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"evsys plan failed:\n{proc.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arms", type=int, nargs="+")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        shutil.copytree(REPO / ".evsys-cache-example", store)
        results = []
        for arms in args.arms:
            config = Path(tmp) / f"sweep{arms}.yaml"
            config.write_text(sweep_config(arms))
            timed_plan(config, store)  # warm: the identity and stat caches are per store, as in daily use
            times = [timed_plan(config, store) for _ in range(args.repeat)]
            median = statistics.median(times)
            results.append((arms, median))
            runs = ", ".join(f"{t:.2f}" for t in times)
            print(f"plan {arms:5d} arms  median {median:6.2f} s over {len(times)} runs ({runs})  {1000 * median / arms:6.2f} ms/arm")
        if len(results) > 1:
            (a0, t0), (a1, t1) = results[0], results[-1]
            print(f"growth {a0} -> {a1} arms: time x{t1 / t0:.2f} for arms x{a1 / a0:.1f}")


if __name__ == "__main__":
    main()
