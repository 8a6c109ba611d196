"""The oldest supported Spark line, PySpark 3.5, end to end in its own virtualenv.

The venv holds PySpark 3.5 (and its py4j) from PyPI and vidspark's wheel; every other package comes
from the packed executor environment of `make dist` (pinned by constraints.txt, no pyspark), through
a path file. Clusters on the 3.5 line (EMR, Dataproc, Databricks) bring this Spark with them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.distenv import ROOT, Dist, built_dist
from vidspark.synthetic import LocalSink, write_labeled_set

pytestmark = pytest.mark.slow

PYSPARK = "3.5.0"  # the oldest release pyproject.toml's spark extra allows (pyspark>=3.5); 3.5.9 passes too


@pytest.fixture(scope="module")
def dist(pytestconfig, tmp_path_factory) -> Dist:
    return built_dist(pytestconfig.cache.mkdir("vidspark-dist"), tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def venv35(dist, tmp_path_factory) -> Path:
    """A venv with PySpark 3.5 and the wheel installed, over the packed env's packages; returns its bin/."""
    t0 = time.monotonic()
    venv = tmp_path_factory.mktemp("spark35") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True).stdout.strip()
    deps = next((dist.env_dir / "lib").glob("python3*/site-packages"))
    Path(site, "vidspark-deps.pth").write_text(f"{deps}\n")  # after the venv's own site-packages: its pyspark 3.5 wins
    pins = venv.parent / "constraints-spark35.txt"  # the tested pins, but this Spark's own pyspark and py4j
    pins.write_text("".join(line for line in (ROOT / "constraints.txt").read_text().splitlines(keepends=True) if not line.lower().startswith(("pyspark==", "py4j=="))))
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    for args in ([f"pyspark=={PYSPARK}", "-c", str(pins)], ["--no-deps", str(dist.wheel)]):
        res = subprocess.run([*pip, *args], capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
    probe = subprocess.run([python, "-c", "import pyspark, py4j, vidspark, tensorflow; print(pyspark.__version__, vidspark.__file__)"], capture_output=True, text=True, cwd="/")
    assert probe.returncode == 0, probe.stderr[-2000:]
    version, where = probe.stdout.split()[-2:]
    assert version == PYSPARK and where.startswith(site), probe.stdout
    print(f"PySpark {PYSPARK} venv built in {time.monotonic() - t0:.0f} s")
    return venv / "bin"


def env35(bin_dir: Path, **extra: str) -> dict[str, str]:
    """The calling environment with Spark's Python on the 3.5 venv (conftest points it at this one)."""
    drop = ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "SPARK_HOME", "SPARK_MASTER", "SPARK_SUBMIT", "SPARK_SUBMIT_ARGS", "VIDSPARK_ENV", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "PYSPARK_PYTHON": str(bin_dir / "python"), "PYSPARK_DRIVER_PYTHON": str(bin_dir / "python"), **extra}


def test_demo_on_pyspark_35(venv35, tmp_path):
    """`vidspark demo`: stills, frame folders and video files featurized, a model trained, videos classified."""
    t0 = time.monotonic()
    work = tmp_path / "demo"
    res = subprocess.run(
        [str(venv35 / "vidspark"), "demo", "--workdir", str(work), "--set", "featurizer.weights=random", "--set", "featurizer.image_size=32", "--set", "train.num_boost_round=30"],
        capture_output=True, text=True, timeout=900, env=env35(venv35), cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-4000:]
    assert res.stdout.startswith("vidspark demo summary") and "3 errors {'decode': 3}" in res.stdout, res.stdout
    out = work / "output"
    records = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    assert records and all(r["status"] == "ok" for r in records)
    frames = pq.read_table(out / "predictions" / "frames").num_rows
    assert frames > 150 and pq.read_table(out / "features").num_rows == 120 + frames  # the labeled set's 120 stills and the cameras' frames
    assert pq.read_table(out / "errors").num_rows == 3
    videos = pq.read_table(out / "predictions" / "videos").to_pylist()
    assert len(videos) == 10 and {v["camera_id"] for v in videos} == {"cam1", "cam2", "cam3"}
    meta = json.loads((out / "model" / "model.json").read_text())
    assert meta["classes"] == ["bicycle", "car", "person"] and meta["feature_dim"] == 2048
    print(f"PySpark {PYSPARK}: demo took {time.monotonic() - t0:.0f} s")


def test_submit_with_pyspark_35s_spark_submit(venv35, dist, tmp_path):
    """submit.sh with Spark 3.5's spark-submit: the wheel from --py-files on the driver and the Python workers."""
    t0 = time.monotonic()
    write_labeled_set(LocalSink(tmp_path / "in"), per_class=3, seed=2)
    (tmp_path / "in" / "car" / "broken.jpg").write_bytes(b"nope")
    env = env35(venv35, VIDSPARK_PYTHON=str(venv35 / "python"), VIDSPARK_DIST=str(dist.wheel.parent))
    res = subprocess.run(
        [str(ROOT / "submit.sh"), "featurize", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out" / "features"),
         "--conf", "conf/local.yaml", "--set", "featurizer.weights=random", "--set", "featurizer.image_size=32",
         "--set", "job.max_error_fraction=0.5", "--set", "spark.driver.memory=1g", "--run-id", "spark35"],
        capture_output=True, text=True, timeout=900, env=env, cwd=ROOT,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-4000:]
    assert f"{venv35.parent}/lib/" in res.stdout.splitlines()[0] and "/pyspark/bin/spark-submit" in res.stdout  # 3.5's spark-submit
    record = json.loads((tmp_path / "out" / "runs" / "spark35.json").read_text())
    assert record["summary"]["featurized"] == 6 and record["summary"]["errors_by_stage"] == {"decode": 1}
    print(f"PySpark {PYSPARK}: submit.sh featurize took {time.monotonic() - t0:.0f} s")
