"""The reference docs stay true: docs/config.md is what the generator writes from the models today,
and every example in docs/plugins.md runs (all six plugin kinds built together in one config)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from evsys_testkit import SLUGS, evsys, ok, ran_names, tool_rows, write_jsonl

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```(?:python|yaml)\n# file: (\S+)\n(.*?)```", re.DOTALL)


def test_config_reference_is_up_to_date():
    generated = subprocess.run([sys.executable, "-m", "evsys_rules.config.docs"], capture_output=True, text=True, check=True).stdout
    assert generated == (REPO / "docs" / "config.md").read_text(), "docs/config.md is stale: run `python -m evsys_rules.config.docs > docs/config.md`"


def test_config_reference_covers_every_kind_and_param():
    from evsys_rules.plugins import kinds

    text = (REPO / "docs" / "config.md").read_text()
    for registry in (kinds.sources, kinds.transforms, kinds.backends, kinds.algorithms, kinds.callbacks, kinds.verifiers):
        for name in registry.names():
            if (getattr(registry.get(name), "__module__", "") or "").split(".")[0] in ("evsys_rules", "evsys_sdk"):  # built-ins, not a test's plugin
                assert f"### `{name}`" in text, name
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert rows and not [r for r in rows if r.rstrip().endswith("|  |")], "a param without a meaning"
    for param in ("num_epochs", "gradient_accumulation_steps", "warmup_steps", "max_tokens_per_pass", "kind"):
        assert f"| `{param}` |" in text


def test_every_plugin_example_runs(tmp_path, tiny_model_dir):
    doc = (REPO / "docs" / "plugins.md").read_text()
    files = dict(BLOCK.findall(doc))
    assert {"my_plugins/tsv_source.py", "my_plugins/transforms.py", "my_plugins/verifiers.py", "my_plugins/callbacks.py", "my_plugins/backend.py", "my_plugins/algorithm.py", "config.yaml"} == set(files)
    project = tmp_path / "demo"
    for name, text in files.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(f"# file: {name}\n{text}")
    rows = tool_rows(12)
    rows[3]["query"] = "mail ada@example.org about the invoice"
    (project / "data").mkdir(exist_ok=True)
    (project / "data" / "pairs.tsv").write_text("query\ttool_slug\n" + "".join(f"{r['query']}\t{r['tool_slug']}\n" for r in rows))
    tasks = [{"task_id": f"t{i}", "instruction": f"request {i}", "verifier": {"kind": "in_process", "fn_name": "slug_prefix", "prefix": "GMAIL"}} for i in range(2)]
    write_jsonl(project / "data" / "val" / "tasks.jsonl", tasks)

    assert "config.yaml: ok (deep)" in ok(evsys("validate", "config.yaml", "--deep", cwd=project)).stdout
    out = ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project)).stdout
    assert {"source", "transform[0] strip_emails", "train", "eval val@2"} <= ran_names(out)
    store_rows = ok(evsys("show", "node:" + _key(out, "transform[0] strip_emails"), "--rows", "12", "--cache-dir", "cache", cwd=project)).stdout
    assert "mail <email> about the invoice" in store_rows and "ada@example.org" not in store_rows  # source + transform
    assert (project / "steps.log").read_text().splitlines() == ["lr=0.005", "lr=0.01"]  # backend + algorithm (warmup over both steps)
    events = [json.loads(line) for line in (project / "events" / "default.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["step", "step", "eval", "end"] and events[-1]["status"] == "completed"  # callback
    preds = [json.loads(line) for line in (project / "out" / "plugins_demo" / "predictions" / "val.jsonl").read_text().splitlines()]
    assert len(preds) == 2 and all(isinstance(p["correct"], bool) for p in preds)  # verifier
    assert SLUGS  # the data's slugs are the walkthrough's


def _key(out: str, name: str) -> str:
    line = next(line for line in out.splitlines() if line.startswith("ran") and f" {name} " in line)
    return line.rsplit(" ", 1)[-1]
