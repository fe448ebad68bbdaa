"""No-op rebuild, side by side: a fully cached `evsys build` of the offline walkthrough against
`dvc repro` of an up-to-date three-stage DVC pipeline over the same data (to chat rows,
tokenize, train), both as whole processes, alternated; medians of --repeat runs and the ratio.

    python benchmarks/noop_rebuild.py --dvc /path/to/venv/bin/dvc --repeat 7

DVC is not an evsys dependency: install it in its own venv (`python -m venv dvcenv &&
dvcenv/bin/pip install "dvc>=3"`) and pass its executable. The evsys side copies the example
store (.evsys-cache-example, the offline walkthrough built by scripts/build-example-store), so
nothing trains.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = "examples/sft_walkthrough/offline.yaml"

STAGES = {
    "to_chat.py": """
        import json, sys
        with open(sys.argv[1]) as src, open(sys.argv[2], "w") as out:
            for line in src:
                row = json.loads(line)
                out.write(json.dumps({"messages": [{"role": "user", "content": row["query"]}, {"role": "assistant", "content": row["tool_slug"]}]}) + "\\n")
    """,
    "tokenize.py": """
        import json, sys
        with open(sys.argv[1]) as src, open(sys.argv[2], "w") as out:
            for line in src:
                out.write(json.dumps([ord(c) for m in json.loads(line)["messages"] for c in m["content"]]) + "\\n")
    """,
    "train.py": """
        import json, sys
        counts = {}
        for line in open(sys.argv[1]):
            for t in json.loads(line):
                counts[t] = counts.get(t, 0) + 1
        json.dump(counts, open(sys.argv[2], "w"))
    """,
}
DVC_YAML = """\
stages:
  to_chat:
    cmd: python to_chat.py train.jsonl chat.jsonl
    deps: [to_chat.py, train.jsonl]
    outs: [chat.jsonl]
  tokenize:
    cmd: python tokenize.py chat.jsonl tokens.jsonl
    deps: [tokenize.py, chat.jsonl]
    outs: [tokens.jsonl]
  train:
    cmd: python train.py tokens.jsonl model.json
    deps: [train.py, tokens.jsonl]
    outs: [model.json]
"""


def timed(cmd: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def dvc_project(root: Path, dvc: str) -> Path:
    project = root / "dvc"
    project.mkdir()
    shutil.copyfile(REPO / "examples/sft_walkthrough/data/train.jsonl", project / "train.jsonl")
    for name, code in STAGES.items():
        (project / name).write_text(textwrap.dedent(code))
    (project / "dvc.yaml").write_text(DVC_YAML)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run([dvc, "init", "-q"], cwd=project, check=True)
    subprocess.run([dvc, "config", "core.analytics", "false"], cwd=project, check=True)
    subprocess.run([dvc, "repro", "-q"], cwd=project, check=True)
    out = subprocess.run([dvc, "status"], cwd=project, capture_output=True, text=True).stdout
    if "up to date" not in out.lower():
        raise SystemExit(f"the DVC pipeline is not up to date after repro:\n{out}")
    return project


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dvc", default=shutil.which("dvc"), help="the dvc executable (a DVC 3.x install)")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    if not args.dvc:
        raise SystemExit("no dvc executable: pass --dvc (see the docstring)")
    root = Path(tempfile.mkdtemp(prefix="evsys-noop-bench-"))
    try:
        store = root / "store"
        shutil.copytree(REPO / ".evsys-cache-example", store)
        evsys = [sys.executable, "-m", "evsys_build.cli", "build", CONFIG, "--cache-dir", str(store)]
        first = subprocess.run(evsys, cwd=REPO, capture_output=True, text=True)
        if first.returncode != 0 or any(line.startswith("ran ") for line in first.stdout.splitlines()):
            raise SystemExit(f"the example store is not fully cached for today's code (rebuild it with scripts/build-example-store):\n{first.stdout}{first.stderr}")
        project = dvc_project(root, args.dvc)
        ours, theirs = [], []
        for _ in range(args.repeat):  # alternated, so both see the same machine load
            ours.append(timed(evsys, REPO))
            theirs.append(timed([args.dvc, "repro", "-q"], project))
        e, d = statistics.median(ours), statistics.median(theirs)
        version = subprocess.run([args.dvc, "--version"], capture_output=True, text=True).stdout.strip()
        print(f"evsys build (cached)  median {e:.3f} s  runs {', '.join(f'{t:.3f}' for t in ours)}")
        print(f"dvc repro {version:<9} median {d:.3f} s  runs {', '.join(f'{t:.3f}' for t in theirs)}")
        print(f"ratio evsys/dvc: {e / d:.2f}x  (goal <= 0.30x)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
