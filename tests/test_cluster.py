"""submit.sh against a real Spark standalone cluster on 127.0.0.1 (master + one worker, small memory).

The executors run the packed environment `make dist` builds (shipped with --archives ...#env), in
which `import vidspark` fails, and the client-mode driver runs that environment unpacked: both can
only get the package from the wheel submit.sh ships (--py-files). pyspark comes from the Spark
distribution (here pip's pyspark as SPARK_HOME: python/lib/pyspark.zip), not from the environment.
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
from tests.distenv import Dist, built_dist
from vidspark.synthetic import S3Sink, write_camera_archive, write_labeled_set

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SPARK_HOME = Path(pyspark.__file__).resolve().parent


@pytest.fixture(scope="module")
def dist(pytestconfig, tmp_path_factory) -> Dist:
    """The wheel of this tree and the packed env (cached across runs: minutes to build), checked to lack vidspark and pyspark."""
    d = built_dist(pytestconfig.cache.mkdir("vidspark-dist"), tmp_path_factory.mktemp("dist"))
    python = str(d.env_dir / "bin" / "python")
    probe = subprocess.run([python, "-c", "import numpy, av, lightgbm, tensorflow, pandas, pyarrow"], cwd="/", capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    assert probe.returncode == 0, probe.stderr[-2000:]
    for module in ("vidspark", "pyspark"):
        missing = subprocess.run([python, "-c", f"import {module}"], cwd="/", capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
        assert missing.returncode != 0 and f"No module named '{module}'" in missing.stderr
    return d


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A standalone master and one worker started with spark-class, stopped after the module."""
    work = tmp_path_factory.mktemp("cluster")
    port, ui, wui = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")}
    env.update({"SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_DAEMON_MEMORY": "512m", "PYTHONPATH": ""})
    cls = str(SPARK_HOME / "bin" / "spark-class")
    logs = [open(work / "master.log", "w"), open(work / "worker.log", "w")]  # noqa: SIM115 - closed below
    master = subprocess.Popen([cls, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui)], env=env, stdout=logs[0], stderr=subprocess.STDOUT)
    url = f"spark://127.0.0.1:{port}"
    worker = subprocess.Popen(
        [cls, "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1", "--cores", "2", "--memory", "3g", "--webui-port", str(wui), "--work-dir", str(work / "work")],
        env=env,
        stdout=logs[1],
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while "Successfully registered with master" not in (work / "worker.log").read_text():
            assert master.poll() is None and worker.poll() is None, (work / "master.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the worker did not register"
            time.sleep(0.5)
        yield {"url": url, "work": work}
    finally:
        for proc in (worker, master):
            proc.terminate()
        for proc in (worker, master):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()
        shutil.rmtree(work / "work", ignore_errors=True)  # an unpacked env per application: gigabytes


def submit(cluster: dict, dist: Dist, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "SPARK_SUBMIT_ARGS", "VIDSPARK_ENV")}
    env.update(
        {
            "SPARK_MASTER": cluster["url"],
            "VIDSPARK_DIST": str(dist.wheel.parent),
            "VIDSPARK_ENV": str(dist.env_archive),  # the cached build of `make dist`'s env
            "PYSPARK_DRIVER_PYTHON": str(dist.env_dir / "bin" / "python"),  # client-mode driver: no vidspark, no pyspark
            "VIDSPARK_PYTHON": sys.executable,  # only reads the conf and finds spark-submit
            "SPARK_SUBMIT_ARGS": "--executor-memory 1g --driver-memory 1g --conf spark.executor.cores=2",
            "PYTHONPATH": "",
        }
    )
    t0 = time.monotonic()
    res = subprocess.run([str(ROOT / "submit.sh"), *args], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    print(f"standalone cluster: {args[0]} took {time.monotonic() - t0:.0f} s")
    return res


def test_featurize_train_predict_on_a_standalone_cluster(cluster, dist, s3_client, bucket, tmp_path):
    t0 = time.monotonic()
    sink = S3Sink(s3_client, bucket)
    write_labeled_set(sink, per_class=12, seed=31, prefix="labeled/", size=(160, 120))
    write_camera_archive(sink, cameras=("cam1",), videos_per_camera=2, frames_per_video=6, seed=32, prefix="cams/", size=(160, 120))
    out = tmp_path / "out"
    common = ["--conf", "conf/local.yaml", "--set", "featurizer.weights=random", "--set", "featurizer.batch_size=16", "--set", "train.num_boost_round=40"]

    res = submit(cluster, dist, "featurize", "--input", f"s3://{bucket}/labeled", "--output", str(out / "features"), "--run-id", "c-featurize", *common)
    assert res.returncode == 0, res.stderr[-4000:]
    for needle in (f"--py-files {dist.wheel}", f"--archives {dist.env_archive}#env", "spark.pyspark.python=./env/bin/python", f"spark.executorEnv.PYTHONPATH={dist.wheel.name}", cluster["url"]):
        assert needle in res.stdout, needle
    rec = json.loads((out / "runs" / "c-featurize.json").read_text())
    assert rec["summary"]["featurized"] == 24

    res = submit(cluster, dist, "train", "--features", str(out / "features"), "--model", str(out / "model"), "--folds", "3", "--run-id", "c-train", *common)
    assert res.returncode == 0, res.stderr[-4000:]
    assert json.loads((out / "model" / "model.json").read_text())["classes"] == ["car", "person"]

    run_args = ["--input", f"s3://{bucket}/cams", "--layout", "{camera_id}/{video_id}/**", "--model", str(out / "model"), "--output", str(out), "--run-id", "c-run"]
    res = submit(cluster, dist, "run", *run_args, *common)
    assert res.returncode == 0, res.stderr[-4000:]
    rec = json.loads((out / "runs" / "c-run.json").read_text())
    assert rec["summary"]["predict"]["frames"] == 12 and rec["summary"]["predict"]["videos"] == 2

    # The work ran on the cluster's executors, each of which received the wheel and unpacked the env.
    executors = [d for app in (cluster["work"] / "work").glob("app-*") for d in app.iterdir() if d.is_dir()]
    assert len({d.parent for d in executors}) >= 3
    for d in executors:
        assert (d / dist.wheel.name).is_file() and (d / "env" / "bin" / "python").exists(), sorted(p.name for p in d.iterdir())
    print(f"standalone cluster: featurize + train + run took {time.monotonic() - t0:.0f} s")
