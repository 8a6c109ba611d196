"""Injected faults: a flaky S3 endpoint (500/503/SlowDown, connections cut mid-body) and a killed Python worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.faultproxy import FaultProxy
from vidspark.cli import main
from vidspark.synthetic import LocalSink, S3Sink, jpeg_bytes, scene, write_labeled_set

pytestmark = pytest.mark.slow

COMMON = ["--set", "featurizer.weights=random", "--set", "featurizer.batch_size=16"]


def features_by_uri(spark, path: Path) -> dict[str, np.ndarray]:
    return {r["uri"]: np.asarray(r["features"]) for r in spark.read.parquet(str(path)).select("uri", "features").collect()}


@pytest.fixture(scope="module")
def flaky_bucket(s3_endpoint):
    from vidspark.config import StorageConf
    from vidspark.storage import make_s3_client

    client = make_s3_client(StorageConf(endpoint_url=s3_endpoint))
    bucket = "faults"
    client.create_bucket(Bucket=bucket)
    sink = S3Sink(client, bucket)
    keys = write_labeled_set(sink, classes=("car", "person"), per_class=100, seed=40, size=(96, 72))
    rng = np.random.default_rng(41)
    for i in range(3):  # objects whose every read fails, past all retries
        sink.put(f"car/persist_{i}.jpg", jpeg_bytes(scene("car", rng, size=(96, 72))))
    return {"bucket": bucket, "objects": len(keys)}


@pytest.fixture(scope="module")
def clean_features(spark, flaky_bucket, tmp_path_factory):
    """The same featurize straight to the S3 server, without faults."""
    clean = tmp_path_factory.mktemp("clean")
    assert main(["featurize", "--input", f"s3://{flaky_bucket['bucket']}", "--output", str(clean / "features"), *COMMON], spark=spark) == 0
    return features_by_uri(spark, clean / "features")


@pytest.mark.parametrize("mode", ["standard", "adaptive"])
def test_flaky_storage_loses_nothing(spark, s3_endpoint, flaky_bucket, clean_features, tmp_path, mode):
    b = flaky_bucket["bucket"]

    out = tmp_path / "flaky"
    with FaultProxy(s3_endpoint, error_rate=0.10, drop_rate=0.08, seed=7) as proxy:
        args = ["featurize", "--input", f"s3://{b}", "--output", str(out / "features"), "--run-id", "flaky", *COMMON]
        args += ["--set", f"storage.endpoint_url={proxy.url}", "--set", f"storage.retry_mode={mode}", "--set", "storage.max_attempts=6"]
        assert main(args, spark=spark) == 0
    counts = dict(proxy.counts)
    print(f"fault proxy ({mode}): {counts}")
    assert counts["dropped_mid_body"] >= 5 and counts["SlowDown"] + counts["InternalError"] + counts["ServiceUnavailable"] >= 10

    record = json.loads((out / "runs" / "flaky.json").read_text())["summary"]
    n = flaky_bucket["objects"]
    assert record["listed"] == n + 3 and record["featurized"] == n
    assert record["errors_by_stage"] == {"fetch": 3}  # the persistent ones, reported, not lost
    errors = spark.read.parquet(str(out / "errors")).collect()
    assert sorted(e["uri"].rsplit("/", 1)[-1] for e in errors) == ["persist_0.jpg", "persist_1.jpg", "persist_2.jpg"]
    assert all(e["stage"] == "fetch" and "SlowDown" in (e["message"] or "") for e in errors)
    # every object that got through is the same as without faults
    got, ref = features_by_uri(spark, out / "features"), clean_features
    assert set(got) == {u for u in ref if "persist" not in u}
    for uri, vec in got.items():
        np.testing.assert_allclose(vec, ref[uri], rtol=1e-4, atol=1e-5)


def _python_workers() -> list[int]:
    """PIDs of PySpark Python workers: the processes a `pyspark.daemon` forked (same command line, daemon parent)."""
    daemons, parent = set(), {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parent[int(pid)] = ppid
        if b"pyspark.daemon" in cmd:
            daemons.add(int(pid))
    return [pid for pid, ppid in parent.items() if ppid in daemons and pid in daemons]  # forked children share the cmdline


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, ValueError, IndexError):
        return 0


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def test_killed_python_worker_is_retried_and_rows_are_exact(tmp_path):
    write_labeled_set(LocalSink(tmp_path / "in"), classes=("car", "person"), per_class=60, seed=42, size=(96, 72))
    argv = [sys.executable, "-m", "vidspark", "featurize", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "features"), "--run-id", "k"]
    argv += ["--master", "local[2,4]", "--set", "job.rows_per_task=20", "--set", "featurizer.batch_size=4", "--set", "featurizer.weights=random"]
    argv += ["--set", "featurizer.warm_up=false"]  # the worker with TensorFlow loaded is then surely running a featurize task
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        loaded = [pid for pid in _python_workers() if _rss_mb(pid) > 400]  # TensorFlow loaded
        before = {pid: _cpu_ticks(pid) for pid in loaded}
        time.sleep(0.3)
        busy = [pid for pid in loaded if _cpu_ticks(pid) - before[pid] > 5]  # and running a task right now
        if busy:
            killed = busy[0]
            os.kill(killed, signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    assert killed is not None, "no Python worker was seen featurizing"
    assert proc.returncode == 0, err[-3000:]
    assert "Lost task" in err or "Python worker exited unexpectedly" in err, err[-3000:]  # Spark saw the task fail (4.x: the scheduler's line; 3.5: the block manager's), and retried it
    record = json.loads((tmp_path / "runs" / "k.json").read_text())
    assert record["summary"]["featurized"] == 120 and record["summary"]["error_count"] == 0
    import pyarrow.dataset as ds

    table = ds.dataset(str(tmp_path / "features"), format="parquet", partitioning="hive").to_table(columns=["uri"])
    uris = table.column("uri").to_pylist()
    assert len(uris) == 120 and len(set(uris)) == 120  # exactly one row per frame, none lost, none twice
