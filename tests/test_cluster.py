"""submit.sh against a real Spark standalone cluster on 127.0.0.1 (master + one worker, small memory).

The executors (and the client-mode driver) run a Python environment in which `import vidspark`
fails: they can only get the package from what submit.sh ships (--py-files dist/vidspark.zip).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pyspark
import pytest

from tests.conftest import free_port
from vidspark.synthetic import S3Sink, write_camera_archive, write_labeled_set

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SPARK_HOME = Path(pyspark.__file__).resolve().parent


@pytest.fixture(scope="module")
def python_without_vidspark(tmp_path_factory) -> str:
    """A venv that sees this environment's packages (pyspark, TensorFlow, PyAV...) but not vidspark."""
    env = tmp_path_factory.mktemp("workerenv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    site = next((env / "lib").glob("python3*/site-packages"))
    # a plain path entry: the editable install's own .pth hook is not run, so vidspark stays invisible
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = str(env / "bin" / "python")
    probe = subprocess.run([python, "-c", "import pyspark, numpy, av, lightgbm, tensorflow"], cwd="/", capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr[-2000:]
    missing = subprocess.run([python, "-c", "import vidspark"], cwd="/", capture_output=True, text=True)
    assert missing.returncode != 0 and "No module named 'vidspark'" in missing.stderr
    return python


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, python_without_vidspark):
    """A standalone master and one worker started with spark-class, stopped after the module."""
    work = tmp_path_factory.mktemp("cluster")
    port, ui, wui = free_port(), free_port(), free_port()
    env = {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_DAEMON_MEMORY": "512m", "PYTHONPATH": ""}
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


def submit(cluster: dict, python: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SPARK_MASTER": cluster["url"],
        "PYSPARK_PYTHON": python,  # executors and the client-mode driver: no vidspark installed
        "PYSPARK_DRIVER_PYTHON": python,
        "VIDSPARK_PYTHON": sys.executable,  # only zips the package and reads the conf
        "SPARK_SUBMIT_ARGS": "--executor-memory 1g --driver-memory 1g --conf spark.executor.cores=2",
        "PYTHONPATH": "",
    }
    return subprocess.run([str(ROOT / "submit.sh"), *args], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)


def test_featurize_train_predict_on_a_standalone_cluster(cluster, python_without_vidspark, s3_client, bucket, tmp_path):
    t0 = time.monotonic()
    sink = S3Sink(s3_client, bucket)
    write_labeled_set(sink, per_class=12, seed=31, prefix="labeled/", size=(160, 120))
    write_camera_archive(sink, cameras=("cam1",), videos_per_camera=2, frames_per_video=6, seed=32, prefix="cams/", size=(160, 120))
    out = tmp_path / "out"
    common = ["--conf", "conf/local.yaml", "--set", "featurizer.weights=random", "--set", "featurizer.batch_size=16", "--set", "train.num_boost_round=40"]

    res = submit(cluster, python_without_vidspark, "featurize", "--input", f"s3://{bucket}/labeled", "--output", str(out / "features"), "--run-id", "c-featurize", *common)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "--py-files" in res.stdout and cluster["url"] in res.stdout
    rec = json.loads((out / "runs" / "c-featurize.json").read_text())
    assert rec["summary"]["featurized"] == 24

    res = submit(cluster, python_without_vidspark, "train", "--features", str(out / "features"), "--model", str(out / "model"), "--folds", "3", "--run-id", "c-train", *common)
    assert res.returncode == 0, res.stderr[-4000:]
    assert json.loads((out / "model" / "model.json").read_text())["classes"] == ["car", "person"]

    run_args = ["--input", f"s3://{bucket}/cams", "--layout", "{camera_id}/{video_id}/**", "--model", str(out / "model"), "--output", str(out), "--run-id", "c-run"]
    res = submit(cluster, python_without_vidspark, "run", *run_args, *common)
    assert res.returncode == 0, res.stderr[-4000:]
    rec = json.loads((out / "runs" / "c-run.json").read_text())
    assert rec["summary"]["predict"]["frames"] == 12 and rec["summary"]["predict"]["videos"] == 2

    # the work ran on the cluster's executor, which received the zip
    apps = list((cluster["work"] / "work").glob("app-*"))
    assert len(apps) >= 3
    assert any(p.name == "vidspark.zip" for app in apps for p in app.rglob("*.zip"))
    print(f"standalone cluster: featurize + train + run took {time.monotonic() - t0:.0f} s")
