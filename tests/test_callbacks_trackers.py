"""Callbacks see every run exactly once per build: live while nodes run, and the stored history of
what a build served from cache (so a logger added after training records the whole run). The
wandb (offline, no network) and tensorboard callbacks get the same events; their files are read
back with their own formats' readers."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from evsys_testkit import copy_project, edit_config, evsys, ok, ran_names

RECORDER = '''\
import json
from evsys_sdk import register_callback


@register_callback("recorder")
class Recorder:
    def __init__(self, echo=print, path="events.jsonl"):
        self.path = path

    def _write(self, *event):
        with open(self.path, "a") as f:
            f.write(json.dumps(event) + "\\n")

    def on_run_start(self, arm, info):
        self._write("start", arm, info["experiment"])

    def on_train_step(self, arm, step, metrics):
        self._write("step", step, metrics["train_mean_nll"], sorted(metrics))

    def on_eval(self, arm, step, benchmark, metrics):
        self._write("eval", step, benchmark, metrics)

    def on_run_end(self, arm, run_dir, status):
        self._write("end", str(run_dir), status)
'''

TRACKERS = """\
plugins: [tag.py, recorder.py]
callbacks:
  - kind: recorder
  - kind: tensorboard
  - kind: wandb
    params: {mode: offline}
"""


@pytest.fixture(scope="module")
def tracked(built_evals, tmp_path_factory) -> Path:
    """built_evals (trained, evaluated at steps 1 and 2) with loggers added afterwards, built again:
    nothing runs, every event is replayed."""
    project = copy_project(built_evals, tmp_path_factory.mktemp("tracked") / "project")
    (project / "recorder.py").write_text(RECORDER)
    edit_config(project, "plugins: [tag.py]\n", "")
    (project / "config.yaml").write_text((project / "config.yaml").read_text() + TRACKERS)
    out = ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project, env=wandb_env(project))).stdout
    assert ran_names(out) == set()
    return project


def wandb_env(project: Path) -> dict:
    return {"WANDB_MODE": "offline", "WANDB_DIR": str(project / "wandb-files"), "WANDB_SILENT": "true", "WANDB_CONSOLE": "off"}


def events(project: Path) -> list[list]:
    return [json.loads(line) for line in (project / "events.jsonl").read_text().splitlines()]


def metrics_rows(project: Path) -> list[dict]:
    return [json.loads(line) for line in (project / "out" / "cutoff" / "metrics.jsonl").read_text().splitlines()]


def expected_events(project: Path) -> list[list]:
    """The run as metrics.jsonl holds it, in the order a callback must see it."""
    out = []
    for row in metrics_rows(project):
        if row["split"] == "train":
            out.append(["step", row["step"], row["metrics"]["train_mean_nll"], sorted(k for k in row["metrics"] if k != "step")])  # live and replayed alike
        else:
            out.append(["eval", row["step"], "val", row["metrics"]])
    return out


def test_a_logger_added_after_training_records_the_whole_run(tracked):
    seen = events(tracked)
    assert seen[0] == ["start", "default", "cutoff"]
    assert seen[1:-1] == expected_events(tracked)
    assert [e[1] for e in seen[1:-1]] == [1, 1, 2, 2]
    assert seen[-1] == ["end", "out/cutoff", "completed"]


def test_tensorboard_event_files_read_back(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folders = list((tracked / "out" / "tensorboard").iterdir())
    assert [f.name for f in folders] == ["cutoff"]
    acc = EventAccumulator(str(folders[0]))
    acc.Reload()
    losses = {e.step: e.value for e in acc.Scalars("train/train_mean_nll")}
    scores = {e.step: e.value for e in acc.Scalars("val/val/pass@1")}
    rows = metrics_rows(tracked)
    assert losses == pytest.approx({r["step"]: r["metrics"]["train_mean_nll"] for r in rows if r["split"] == "train"})
    assert scores == pytest.approx({r["step"]: r["metrics"]["val/val/pass@1"] for r in rows if r["split"] == "val"})


def test_wandb_offline_run_files_hold_the_run(tracked):
    from wandb.proto import wandb_internal_pb2

    (run_file,) = (tracked / "wandb-files" / "wandb").glob("offline-run-*/run-*.wandb")
    records = [wandb_internal_pb2.Record.FromString(data) for data in wandb_log_records(run_file.read_bytes())]
    kinds = [r.WhichOneof("record_type") for r in records]
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.project, run.display_name, run.run_group) == ("cutoff", "cutoff", "cutoff")
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["arm"] == "default" and config["algorithm"]["params"]["max_steps"] == 2
    assert config["algorithm"]["params"]["lr_schedule"] == "constant"  # the kind's defaults filled in
    history = [
        {(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in r.history.item}
        for r in records if r.WhichOneof("record_type") == "history"
    ]
    losses = {h["step"]: h["train/train_mean_nll"] for h in history if "train/train_mean_nll" in h}
    scores = {h["step"]: h["val/val/pass@1"] for h in history if "val/val/pass@1" in h}
    rows = metrics_rows(tracked)
    assert losses == pytest.approx({r["step"]: r["metrics"]["train_mean_nll"] for r in rows if r["split"] == "train"})
    assert scores == pytest.approx({r["step"]: r["metrics"]["val/val/pass@1"] for r in rows if r["split"] == "val"})
    summary = {(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for r in records if r.WhichOneof("record_type") == "summary" for item in r.summary.update}
    assert summary["evsys_status"] == "completed"
    assert kinds[-1] == "exit" and records[-1].exit.exit_code == 0


def test_live_events_are_not_logged_twice(tracked, tmp_path):
    project = copy_project(tracked, tmp_path / "project")
    (project / "events.jsonl").unlink()
    edit_config(project, "learning_rate: 1.0e-3", "learning_rate: 2.0e-3")
    out = ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project, env=wandb_env(project))).stdout
    assert {"train", "eval val@1", "eval val@2"} <= ran_names(out)  # this time the events came live
    seen = events(project)
    key = json.dumps  # live, an eval may come after a later train step: each event once, in any order
    assert sorted(map(key, seen[1:-1])) == sorted(map(key, expected_events(project))) and seen[-1][-1] == "completed"
    (tensorboard,) = (project / "out" / "tensorboard").iterdir()
    assert len(list(tensorboard.glob("events.out.tfevents.*"))) == 1  # each build rewrites the arm's file


def test_editing_a_logger_reruns_nothing(tracked, tmp_path):
    from evsys_rules.nodes.eval import run_eval
    from evsys_rules.nodes.train import run_train
    from evsys_rules.plugins.code_identity import _Collector

    for runner in (run_train, run_eval):  # the runners reach callbacks only through @not_keyed functions
        followed = [line for line in _Collector(runner).text().splitlines() if line.startswith("# ")]
        assert followed and not [f for f in followed if "notify" in f or "printing_to" in f or "Callbacks" in f or "Logger" in f], followed
    project = copy_project(tracked, tmp_path / "project")
    (project / "recorder.py").write_text(RECORDER.replace('"step", step', '"train step", step'))
    plan = json.loads(ok(evsys("plan", "config.yaml", "--json", "--cache-dir", "cache", cwd=project)).stdout)["nodes"]
    assert {n["status"] for n in plan} == {"cached"}


def wandb_log_records(data: bytes):
    """The records of a W&B transaction log (`run-*.wandb`): a 7-byte header (`:W&B`, magic,
    version), then LevelDB-log blocks of 32 KiB holding records (crc32, length, type: full,
    first, middle, last) whose payloads are protobuf `Record`s."""
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk


ARM_RECORDER = RECORDER.replace('self._write("step", step', 'self._write("step", arm, step').replace('self._write("eval", step', 'self._write("eval", arm, step').replace('self._write("end", str', 'self._write("end", arm, str')
SPLIT_ARMS = """\
plugins: [tag.py, recorder.py]
callbacks:
  - kind: recorder
arms:
  - {name: A, set: {metadata.benchmark.0.split: valA}}
  - {name: B, set: {metadata.benchmark.0.split: valB}}
"""


def test_arms_sharing_a_training_each_get_its_events_live_and_an_arm_left_out_gets_none(built_evals, tmp_path):
    """Arms A and B differ only in their benchmark's split: they share the training and its evals.
    `build --arm B` runs them for B alone: no event reaches A's callbacks (its tracker would be
    started and never ended). A build of both feeds each arm live, evals named by its own split."""
    project = copy_project(built_evals, tmp_path / "project")
    (project / "recorder.py").write_text(ARM_RECORDER)
    edit_config(project, "plugins: [tag.py]\n", "")
    (project / "config.yaml").write_text((project / "config.yaml").read_text().replace("learning_rate: 1.0e-3", "learning_rate: 3.0e-3") + SPLIT_ARMS)
    out = ok(evsys("build", "config.yaml", "--arm", "B", "--cache-dir", "cache", cwd=project)).stdout
    assert {"[B] train", "[B] eval val@1", "[B] eval val@2"} <= ran_names(out)
    seen = events(project)
    assert {e[1] for e in seen} == {"B"}, seen
    assert [e[0] for e in seen] == ["start", "step", "eval", "step", "eval", "end"] or sorted(e[0] for e in seen[1:-1]) == ["eval", "eval", "step", "step"]
    assert all(set(e[4]) == {"valB/val/pass@1"} for e in seen if e[0] == "eval")
    (project / "events.jsonl").unlink()
    edit_config(project, "learning_rate: 3.0e-3", "learning_rate: 4.0e-3")
    out = ok(evsys("build", "config.yaml", "--cache-dir", "cache", cwd=project)).stdout
    assert "[A,B] train" in ran_names(out)
    seen = events(project)
    for arm in ("A", "B"):
        mine = [e for e in seen if e[1] == arm]
        assert sorted(e[0] for e in mine) == ["end", "eval", "eval", "start", "step", "step"], seen
        assert all(set(e[4]) == {f"val{arm}/val/pass@1"} for e in mine if e[0] == "eval"), mine
        assert [e[2] for e in mine if e[0] == "step"] == [1, 2]
