"""A sweep on a two-node local Ray cluster (`ray.cluster_utils.Cluster`): the head and a node that
carries a custom `gpu` resource, sharing one store on a real S3-protocol server (moto).

One build of 4 arms sharing one tokenization is killed in the middle — the `gpu` node dies while a
training runs on it (SIGKILL) and a replacement joins — and still completes; then a rerun submits
no task. The build's results are the same bytes as an inline build's.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from evsys_testkit import evsys, tool_rows, write_jsonl

ray = pytest.importorskip("ray", reason="needs the dev extra (ray)")
pytestmark = [pytest.mark.ray, pytest.mark.s3]

LEARNING_RATES = [f"{i}.0e-3" for i in range(1, 5)]
SWEEP_CONFIG = """\
experiment: {name: raysweep}
output_dir: out
plugins: [marks.py]
data: {source_kind: jsonl, path: data/train.jsonl}
transforms:
  - kind: jsonl_to_chat
    params: {user_template: "{query}", assistant_template: "<answer>{tool_slug}</answer>"}
model: {name: evsys/tiny-qwen3}
backend: {kind: local}
algorithm:
  kind: sft
  params: {learning_rate: 1.0e-3, max_steps: 2, batch_size: 2, lora_rank: 1}
metadata:
  benchmark:
    - {name: val, path: val, max_tokens: 2}
callbacks:
  - kind: step_marks
    params: {dir: MARKS}
resources:
  train: {num_cpus: 0, resources: {gpu: 1}}
sweep:
  algorithm.params.learning_rate: [LRS]
"""

# A callback (never keyed) that leaves a file per training step and attempt; the first training to
# reach step 1 waits there until the test says `release`, so the test can kill its node mid-run.
MARKS_PLUGIN = '''\
import os
import time

from evsys_sdk import register_callback


@register_callback("step_marks")
class StepMarks:
    def __init__(self, echo=print, dir=""):
        self.dir = dir

    def on_train_step(self, arm, step, metrics):
        open(os.path.join(self.dir, f"{arm}.{step}.{os.getpid()}"), "w").close()
        deadline = time.monotonic() + 180
        while step == 1 and not os.path.exists(os.path.join(self.dir, "release")) and time.monotonic() < deadline:
            time.sleep(0.05)

    def on_eval(self, arm, step, benchmark, metrics):
        pass

    def on_run_end(self, arm, run_dir, status):
        pass
'''


@pytest.fixture(scope="module")
def ray_cluster(tiny_model_dir, moto_s3):
    """Head (1 CPU) and a `gpu` node (1 CPU + {gpu: 1}); workers inherit this process's
    environment (the models home, the S3 endpoint and fake credentials, a short lease)."""
    from ray.cluster_utils import Cluster

    os.environ["EVSYS_LEASE_TTL"] = "3"  # a killed worker's lease expires in seconds, not the default 30
    node = {"num_cpus": 1, "object_store_memory": 80 * 2**20}
    cluster = Cluster(
        initialize_head=True,
        head_node_args=dict(
            node,
            include_dashboard=False,
            no_monitor=True,
            _system_config={  # notice a SIGKILLed raylet in about a second, not fifteen
                "health_check_initial_delay_ms": 0,
                "health_check_period_ms": 500,
                "health_check_timeout_ms": 500,
                "health_check_failure_threshold": 2,
                "task_retry_delay_ms": 0,
            },
        ),
    )
    cluster.gpu_node = cluster.add_node(resources={"gpu": 1}, **node)
    cluster.node_args = node
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        os.environ.pop("EVSYS_LEASE_TTL", None)


def sweep_project(root: Path) -> Path:
    marks = root / "marks"
    marks.mkdir(parents=True)
    config = SWEEP_CONFIG.replace("MARKS", str(marks)).replace("LRS", ", ".join(LEARNING_RATES))
    (root / "config.yaml").write_text(config)
    (root / "marks.py").write_text(MARKS_PLUGIN)
    write_jsonl(root / "data" / "train.jsonl", tool_rows(12))
    write_jsonl(root / "val" / "tasks.jsonl", [{"task_id": "t0", "instruction": "query 0", "verifier": {"kind": "in_process", "fn_name": "contains", "expected": "A"}}])
    return root


def attempts(marks: Path, step: int = 1) -> dict[str, set[str]]:
    """Arm -> the worker processes that reached `step` of its training."""
    found: dict[str, set[str]] = {}
    for f in marks.iterdir():
        parts = f.name.rsplit(".", 2)  # arm names hold dots (learning_rate=0.001)
        if len(parts) == 3 and parts[1] == str(step):
            found.setdefault(parts[0], set()).add(parts[2])
    return found


def kill_gpu_node_mid_training(cluster, marks: Path, log: list) -> None:
    """Wait until a training is at step 1 on the gpu node, SIGKILL that node, add a replacement,
    then let the training go on. Ray reruns the task on the new node; the killed node's worker may
    also live on and finish (a zombie, as after a network partition): the lease keeps the two from
    running at once, and create-only writes make whichever finishes second adopt the first's work."""
    try:
        deadline = time.monotonic() + 480  # under a loaded machine a local cluster is slow to start a worker
        while not attempts(marks) and time.monotonic() < deadline:
            time.sleep(0.05)
        (arm, _), = attempts(marks).items()
        old = cluster.gpu_node
        cluster.remove_node(old, allow_graceful=False)
        cluster.gpu_node = cluster.add_node(resources={"gpu": 1}, **cluster.node_args)
        log.append((arm, old.node_id, cluster.gpu_node.node_id))
    except Exception as exc:  # noqa: BLE001 - reported by the test
        log.append(("error", repr(exc), ""))
    finally:
        (marks / "release").touch()


@pytest.fixture(scope="module")
def sweep(ray_cluster, tmp_path_factory, moto_s3):
    """The 4-arm sweep built once on the cluster, its gpu node killed mid-training; then rebuilt."""
    from evsys_build.build import build_project
    from evsys_build.ray_pool import RayPool
    from evsys_build.store import open_store
    from evsys_rules.frontend import open_project

    root = sweep_project(tmp_path_factory.mktemp("raysweep"))
    bucket = f"sweep-{os.getpid()}"
    moto_s3.create_bucket(bucket)
    url = f"s3://{bucket}/team"
    cwd = os.getcwd()
    os.chdir(root)
    try:
        store = open_store(url)
        project = open_project(Path("config.yaml"), store)
        lines, killed, outcome = [], [], {}
        first = RayPool(project)
        # the build in a thread, the killing in this one (Ray starts a node from the main thread only)
        builder = threading.Thread(target=lambda: outcome.update(code=build_project(project, store, executor=first, echo=lines.append)), daemon=True)
        builder.start()
        kill_gpu_node_mid_training(ray_cluster, root / "marks", killed)
        builder.join(timeout=600)
        code = outcome.get("code")
        rerun_lines: list[str] = []
        second = RayPool(project)
        rerun_code = build_project(open_project(Path("config.yaml"), store), store, executor=second, echo=rerun_lines.append)
    finally:
        os.chdir(cwd)
    return {"root": root, "url": url, "project": project, "code": code, "lines": lines, "killed": killed, "pool": first,
            "rerun_code": rerun_code, "rerun_lines": rerun_lines, "rerun_pool": second, "cluster": ray_cluster}


def test_a_sweep_survives_losing_a_node_and_tokenizes_once(sweep):
    assert sweep["code"] == 0, "\n".join(sweep["lines"])
    assert sweep["killed"][0][0] != "error", sweep["killed"]
    ran = [line for line in sweep["lines"] if line.startswith("ran ")]
    assert len([line for line in ran if "] tokenize  " in line]) == 1 and not [line for line in sweep["lines"] if "] tokenize  " in line and not line.startswith("ran ")]
    assert len([line for line in ran if "] report  " in line]) == len(LEARNING_RATES)
    assert len(list((sweep["root"] / "out").glob("*/*/metrics.jsonl"))) == len(LEARNING_RATES)
    assert set(attempts(sweep["root"] / "marks", step=2)) == {f"learning_rate={float(lr)}" for lr in LEARNING_RATES}  # every arm trained
    arm = sweep["killed"][0][0]
    assert len(attempts(sweep["root"] / "marks")[arm] - {str(os.getpid())}) >= 2  # on the killed node, then again on its replacement


def test_nodes_land_where_their_resources_are_and_arms_use_both_nodes(sweep):
    graph, placement = sweep["project"].graph, sweep["pool"].placement
    (_, old_gpu, new_gpu), = sweep["killed"]
    head = sweep["cluster"].head_node.node_id
    trains = [n for n in graph.nodes() if n.rule == "train"]
    assert {placement[n.id] for n in trains} <= {old_gpu, new_gpu}
    arm_nodes = [n for n in graph.nodes() if n.rule in ("eval", "report", "train") and n.id in placement]
    assert {head, new_gpu} <= {placement[n.id] for n in arm_nodes} | {old_gpu}
    assert head in {placement[n.id] for n in arm_nodes}
    assert {placement[n.id] for n in arm_nodes} & {old_gpu, new_gpu}


def test_a_rerun_submits_no_task(sweep):
    assert sweep["rerun_code"] == 0
    assert sweep["rerun_pool"].submitted == 0
    assert not [line for line in sweep["rerun_lines"] if line.startswith("ran ")]


def test_the_cli_connects_to_the_cluster_and_finds_everything_cached(sweep, moto_s3):
    proc = evsys("build", "config.yaml", "--cache-dir", sweep["url"], "--executor", "ray", "--ray-address", sweep["cluster"].address, cwd=sweep["root"])
    assert proc.returncode == 0, proc.stderr
    assert "evsys: ray: 0 task(s) submitted" in proc.stderr
    assert "ran " not in proc.stdout and proc.stdout.count("cached ") > 8


def test_ray_results_are_the_bytes_an_inline_build_makes(sweep, tmp_path):
    """Same runners, same store format: every node's output digest matches an inline build of the arm
    whose node was killed (training's own history aside: it records wall-clock throughput, which no
    two runs share; its checkpoints and final state are compared). Float sums on CPU depend on how
    many threads share them, so the inline build uses as many torch threads as a Ray task gets."""
    import torch

    from evsys_build.build import build_project
    from evsys_build.store import Store, open_store
    from evsys_rules.frontend import open_project

    @ray.remote(num_cpus=0, resources={"gpu": 1})
    def worker_threads() -> int:
        import torch

        return torch.get_num_threads()

    arm = sweep["killed"][0][0]  # the arm whose training lost its node
    cwd, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(sweep["root"])
    torch.set_num_threads(ray.get(worker_threads.remote()))
    try:
        local = Store(tmp_path / "inline")
        assert build_project(open_project(Path("config.yaml"), local), local, arm=arm, executor="inline", echo=lambda line: None) == 0
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    ray_nodes = open_store(sweep["url"]).read_ref("raysweep", arm)["nodes"]
    inline_nodes = local.read_ref("raysweep", arm)["nodes"]
    assert set(ray_nodes) == set(inline_nodes)
    for name, entry in inline_nodes.items():
        if entry["rule"] in ("train", "report"):
            continue
        assert ray_nodes[name]["digest"] == entry["digest"], name
    ray_train = open_store(sweep["url"]).read_manifest(ray_nodes["train"]["key"])["outputs"]
    inline_train = local.read_manifest(inline_nodes["train"]["key"])["outputs"]
    assert ray_train["checkpoint-final"] == inline_train["checkpoint-final"] and ray_train["state-final"] == inline_train["state-final"]


def test_workers_get_evsys_and_hugging_face_settings_but_no_credential():
    from evsys_build.ray_pool import forwarded_env

    environ = {"EVSYS_LEASE_TTL": "3", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "HF_TOKEN": "hf_x",
               "HUGGING_FACE_HUB_TOKEN": "hf_y", "EVSYS_TINKER_API_KEY": "k", "AWS_SECRET_ACCESS_KEY": "s", "PATH": "/bin"}
    assert forwarded_env(environ) == {"EVSYS_LEASE_TTL": "3", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
