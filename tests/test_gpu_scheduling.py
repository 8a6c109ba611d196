"""Spark's GPU scheduling, for real, on a machine without a GPU (issue 17).

A standalone master and a worker whose GPUs come from a discovery script (two indices, or two
UUIDs); ``vidspark featurize`` runs on it with executor and task GPU amounts, and every task
records, in the run record's ``executor_gpus``: the address Spark assigned it, how the model was
placed (narrow: ``CUDA_VISIBLE_DEVICES`` set to that GPU before TensorFlow started; shared:
placed on ``/GPU:<index>``), what the worker could see, and the TensorFlow device chosen. TensorFlow
runs on the CPU here (``VIDSPARK_GPU_SIMULATE=1`` on the executors: the device chosen is recorded,
the model runs on ``/CPU:0``); what Spark assigned, and what vidspark did with it, is real.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyspark
import pytest

from tests.conftest import free_port
from vidspark.synthetic import LocalSink, write_labeled_set

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SPARK_HOME = Path(pyspark.__file__).resolve().parent
VIDSPARK = str(Path(sys.executable).with_name("vidspark"))
UUIDS = ["GPU-5f3a9c1e-0000-4000-8000-00000000000a", "GPU-5f3a9c1e-0000-4000-8000-00000000000b"]


def standalone(work: Path, addresses: list[str], *, visible: str | None = None):
    """A master and a worker of 2 cores whose two GPUs a discovery script reports as ``addresses``.

    ``visible``: the worker's (and so its executors') ``CUDA_VISIBLE_DEVICES``, and the shipped
    ``scripts/get_gpus_resources.sh`` discovers the GPUs from it instead of a script printing ``addresses``.
    """
    if visible is not None:
        script = ROOT / "scripts" / "get_gpus_resources.sh"
    else:
        script = work / "gpus.sh"
        script.write_text("#!/usr/bin/env bash\n" + f"echo '{json.dumps({'name': 'gpu', 'addresses': addresses})}'\n")
        script.chmod(0o755)
    port, ui, wui = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "CUDA_VISIBLE_DEVICES")}
    env.update(
        {
            "SPARK_HOME": str(SPARK_HOME),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_DAEMON_MEMORY": "512m",
            "SPARK_WORKER_OPTS": f"-Dspark.worker.resource.gpu.amount=2 -Dspark.worker.resource.gpu.discoveryScript={script}",
        }
    )
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    cls = str(SPARK_HOME / "bin" / "spark-class")
    logs = [open(work / "master.log", "w"), open(work / "worker.log", "w")]  # noqa: SIM115 - closed by the caller's stop()
    master = subprocess.Popen([cls, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui)], env=env, stdout=logs[0], stderr=subprocess.STDOUT)
    url = f"spark://127.0.0.1:{port}"
    cmd = [cls, "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1", "--cores", "2", "--memory", "3g", "--webui-port", str(wui), "--work-dir", str(work / "work")]
    worker = subprocess.Popen(cmd, env=env, stdout=logs[1], stderr=subprocess.STDOUT)

    def stop() -> None:
        for proc in (worker, master):
            proc.terminate()
        for proc in (worker, master):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()
        shutil.rmtree(work / "work", ignore_errors=True)

    deadline = time.monotonic() + 120
    while "Successfully registered with master" not in (work / "worker.log").read_text():
        if master.poll() is not None or worker.poll() is not None or time.monotonic() > deadline:
            stop()
            raise AssertionError("the worker did not register: " + (work / "worker.log").read_text()[-3000:])
        time.sleep(0.5)
    return url, stop


def featurize(url: str, work: Path, run_id: str, sets: list[str]) -> dict:
    (work / "events").mkdir(exist_ok=True)
    write_labeled_set(LocalSink(work / "in"), per_class=6, size=(48, 32))
    args = ["featurize", "--master", url, "--input", str(work / "in"), "--output", str(work / "out" / "features"), "--run-id", run_id]
    sets = [
        "featurizer.weights=random",
        "featurizer.image_size=32",
        "featurizer.batch_size=4",
        "featurizer.warm_up=false",
        "job.rows_per_task=2",
        "spark.executor.memory=1g",
        "spark.executorEnv.VIDSPARK_GPU_SIMULATE=1",
        "spark.executorEnv.CUDA_DEVICE_ORDER=PCI_BUS_ID",
        "spark.eventLog.enabled=true",
        f"spark.eventLog.dir=file://{work / 'events'}",
        "spark.eventLog.compress=false",
        "spark.eventLog.rolling.enabled=false",
        *sets,
    ]
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update({"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable})
    out = subprocess.run([VIDSPARK, *args, *(a for s in sets for a in ("--set", s))], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-4000:]
    record = json.loads((work / "out" / "runs" / f"{run_id}.json").read_text())
    summary = record["summary"]
    assert summary["featurized"] == len([f for f in (work / "in").rglob("*") if f.is_file()]) and summary["error_count"] == 0
    return summary


def placed_on(work: Path, addresses: list[str], run_id: str, sets: list[str], *, visible: str | None = None) -> tuple[dict, list[dict]]:
    """featurize on a fresh standalone cluster (:func:`standalone`): the run summary and where each task's model went."""
    url, stop = standalone(work, addresses, visible=visible)
    try:
        summary = featurize(url, work, run_id, sets)
    finally:
        stop()
    placed = summary["executor_gpus"]
    print(json.dumps(placed))
    assert placed, summary  # every featurize task recorded where its model went
    return summary, placed


@pytest.mark.parametrize("task_amount", ["0.5", "1"])
def test_two_gpus_per_executor_each_task_on_the_gpu_spark_gave_it(tmp_path, task_amount):
    """The issue's shape: 2 GPUs per executor, half a GPU per task (Spark fills GPU 0 first), and a whole GPU per
    task (two tasks at once hold both): shared placement, model on /GPU:<address>."""
    sets = ["spark.executor.resource.gpu.amount=2", f"spark.task.resource.gpu.amount={task_amount}", "spark.executor.cores=2", "spark.task.cpus=1"]
    _, placed = placed_on(tmp_path, ["0", "1"], "shared", sets)
    assert sum(p["tasks"] for p in placed) >= 6, placed  # every featurize task recorded where its model went
    for p in placed:
        assert p["address"] in ("0", "1") and p["mode"] == "shared", p
        assert p["tf_device"] == f"/GPU:{p['address']}" and p["device"] == "/CPU:0", p  # chosen from the address; run on the CPU here
        assert p["visible"] is None, p  # several GPUs per executor: visibility left whole
    if task_amount == "1":  # two tasks at a time, a whole GPU each: both GPUs served
        assert {p["address"] for p in placed} == {"0", "1"}, placed


def test_one_gpu_per_executor_narrows_each_worker_to_its_uuid(tmp_path):
    """One GPU per executor (conf/gpu.yaml's shape), UUID addresses: each worker sees its GPU alone, /GPU:0."""
    _, placed = placed_on(tmp_path, UUIDS, "narrow", ["spark.executor.resource.gpu.amount=1", "spark.task.resource.gpu.amount=1", "spark.executor.cores=1", "spark.task.cpus=1"])
    for p in placed:
        assert p["address"] in UUIDS and p["mode"] == "narrow", p
        assert p["visible"] == p["address"] and p["tf_device"] == "/GPU:0", p  # CUDA_VISIBLE_DEVICES named this GPU alone before TensorFlow started
    assert {p["address"] for p in placed} == set(UUIDS)  # two executors, one GPU each: both used


def test_uuids_from_the_shipped_discovery_script_shared_by_tasks_warm_up_included(tmp_path):
    """CUDA_VISIBLE_DEVICES lists two GPU UUIDs for the worker (as a resource manager sets it); scripts/get_gpus_resources.sh
    reports them as written; executors of 2 GPUs, half a GPU per featurize task, the warm-up on: each task's model goes to
    the TensorFlow index of its UUID in that list, and the warm-up ran under the featurize stage's GPU profile."""
    sets = ["spark.executor.resource.gpu.amount=2", "spark.executor.cores=2", "spark.task.cpus=1", "featurizer.task_gpus=0.5", "featurizer.task_cpus=1", "featurizer.warm_up=true"]
    summary, placed = placed_on(tmp_path, [], "uuids", sets, visible=",".join(UUIDS))
    for p in placed:
        assert p["address"] in UUIDS and p["mode"] == "shared" and p["visible"] == ",".join(UUIDS), p  # the worker's list, left whole
        assert p["tf_device"] == f"/GPU:{UUIDS.index(p['address'])}", p  # TensorFlow numbers the listed GPUs 0, 1 in that order
    assert summary["tasks"].get("workers_warmed", 0) >= 1, summary["tasks"]
    profiles, stages = stage_profiles(tmp_path / "events")
    gpu_profiles = {pid for pid, req in profiles.items() if req.get("gpu") == 0.5}
    assert len([s for s in stages if s[2] in gpu_profiles]) >= 2, stages  # the warm-up and the featurize stage, both under the GPU share


def stage_profiles(events: Path) -> tuple[dict[int, dict], list[tuple[int, str, int]]]:
    """From Spark's event log: each ResourceProfile's task requests, and each stage (id, name, profile id)."""
    profiles, stages = {}, []
    for log in (f for f in events.rglob("*") if f.is_file() and not f.name.startswith("appstatus")):
        for line in log.read_text().splitlines():
            event = json.loads(line)
            if event["Event"] == "SparkListenerResourceProfileAdded":
                profiles[event["Resource Profile Id"]] = {k: v["Amount"] for k, v in event["Task Resource Requests"].items()}
            elif event["Event"] == "SparkListenerStageSubmitted":
                info = event["Stage Info"]
                stages.append((info["Stage ID"], info["Stage Name"], info["Resource Profile Id"]))
    return profiles, stages


def test_only_the_featurize_stage_asks_for_a_gpu(tmp_path):
    """Executors with a GPU each, no global task GPU amount: featurizer.task_gpus becomes the featurize stage's own
    ResourceProfile; every other stage (listing, parse, diff, group-bys, writes) runs on the default profile, holding no GPU."""
    sets = ["spark.executor.resource.gpu.amount=1", "spark.executor.cores=1", "spark.task.cpus=1", "featurizer.task_gpus=0.5", "featurizer.task_cpus=1"]
    _, placed = placed_on(tmp_path, ["0", "1"], "stage", sets)
    assert {p["address"] for p in placed} <= {"0", "1"} and all(p["mode"] == "narrow" and p["visible"] == p["address"] for p in placed), placed
    profiles, stages = stage_profiles(tmp_path / "events")
    gpu_profiles = {pid for pid, req in profiles.items() if req.get("gpu") == 0.5 and req.get("cpus") == 1}
    assert gpu_profiles and all(pid != 0 for pid in gpu_profiles), profiles
    on_gpu = [s for s in stages if s[2] in gpu_profiles]
    off_gpu = [s for s in stages if s[2] not in gpu_profiles]
    assert on_gpu and len(off_gpu) >= 3, stages  # the featurize stage asked; listing, diff and writes did not
    assert all(s[2] == 0 for s in off_gpu), stages
    assert "gpu" not in profiles.get(0, {}), profiles  # the default profile asks for no GPU per task
