"""The walkthrough's runner: load the config and run it through the SDK.

    python examples/sft_walkthrough/run.py                   # the walkthrough config (hosted Tinker)
    python examples/sft_walkthrough/run.py offline.yaml      # fully offline, local backend
"""

import sys
from pathlib import Path

from evsys_build.errors import EvsysError
from evsys_sdk import Experiment

here = Path(__file__).parent
cfg = Path(sys.argv[1]) if len(sys.argv) > 1 else here / "config.yaml"
if not cfg.exists():
    cfg = here / cfg
try:
    result = Experiment(cfg).run()
except EvsysError as exc:  # a bad config or a missing key: one line, no traceback
    print(f"evsys: error: {exc.message}", file=sys.stderr)
    sys.exit(exc.exit_code)
print(f"Status:     {result.status}")
print(f"Artifacts:  {list(result.artifacts)}")
print(f"Conclusion: {result.conclusion}")
print(f"Logs:       {result.logs} - metrics.jsonl, predictions/, summary.md, experiment.md")
sys.exit(0 if result.status == "completed" else 1)
