"""submit.sh: the spark-submit line it builds, and a real spark-submit run on local Spark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vidspark.synthetic import LocalSink, write_labeled_set

ROOT = Path(__file__).resolve().parents[1]


def submit(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VIDSPARK_PYTHON": sys.executable}
    return subprocess.run([str(ROOT / "submit.sh"), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def test_help_documents_cluster_recipes():
    out = submit("--help").stdout
    for needle in ("--py-files", "venv-pack", "yarn", "k8s://", "spark://", "--gpu", "cron", "Airflow"):
        assert needle in out


def test_dry_run_line_ships_package_and_conf():
    res = submit("--dry-run", "predict", "--features", "f", "--model", "m", "--output", "o", "--conf", "conf/cluster.yaml")
    assert res.returncode == 0, res.stderr
    line = res.stdout.strip().splitlines()[-1]
    assert "--py-files" in line and "dist/vidspark.zip" in line and "--files conf/cluster.yaml" in line
    assert "--conf spark.task.cpus=4" in line and line.rstrip().endswith("--conf conf/cluster.yaml")
    assert "jobs/predict.py" in line
    import zipfile

    names = zipfile.ZipFile(ROOT / "dist" / "vidspark.zip").namelist()
    assert "vidspark/featurize.py" in names and not any("__pycache__" in n for n in names)


def test_gpu_dry_run_has_the_gpu_settings_and_the_discovery_script_works():
    res = submit("--gpu", "--dry-run", "featurize", "--input", "s3://b/in", "--output", "s3://b/out/features")
    assert res.returncode == 0, res.stderr
    line = res.stdout.strip().splitlines()[-1]
    assert "--files" in line and "conf/gpu.yaml" in line
    for conf in ("spark.executor.resource.gpu.amount=1", "spark.task.resource.gpu.amount=0.25", "spark.executorEnv.CUDA_DEVICE_ORDER=PCI_BUS_ID"):
        assert f"--conf {conf}" in line
    assert "spark.executor.resource.gpu.discoveryScript=/" in line  # an absolute path on the nodes: discovery runs before --files arrive
    script = ROOT / "scripts" / "get_gpus_resources.sh"
    for visible, addresses in (("2,3", ["0", "1"]), ("-1", []), ("", [])):
        out = subprocess.run([str(script)], capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": visible})
        assert out.returncode == 0 and json.loads(out.stdout) == {"name": "gpu", "addresses": addresses}, (visible, out.stdout, out.stderr)


def test_unknown_job_exits_2():
    assert submit("frobnicate").returncode == 2


@pytest.mark.slow
def test_real_spark_submit_featurize(tmp_path):
    write_labeled_set(LocalSink(tmp_path / "in"), per_class=3, seed=2)
    (tmp_path / "in" / "car" / "broken.jpg").write_bytes(b"nope")
    res = submit(
        "featurize", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out" / "features"),
        "--conf", "conf/local.yaml", "--set", "featurizer.weights=random", "--set", "job.max_error_fraction=0.5",
        "--set", "spark.driver.memory=1g", "--run-id", "submit-test",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    record = json.loads((tmp_path / "out" / "runs" / "submit-test.json").read_text())
    assert record["summary"]["featurized"] == 6 and record["summary"]["errors_by_stage"] == {"decode": 1}
