"""Command-line options end to end on the local S3 server: --errors, --full, --until, access denied on check and fetch."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from tests.faultproxy import FaultProxy
from vidspark.cli import main
from vidspark.synthetic import S3Sink, jpeg_bytes, scene

pytestmark = pytest.mark.slow

COMMON = ["--set", "featurizer.weights=random", "--set", "featurizer.image_size=32", "--layout", "{camera_id}/{ts}"]
T0 = datetime(2026, 11, 20, 23, 0, tzinfo=timezone.utc)


@pytest.fixture()
def archive(s3_client, bucket):
    rng = np.random.default_rng(1)
    sink = S3Sink(s3_client, bucket, "cams")
    keys = []
    for i in range(6):  # three stills before midnight, three after
        key = f"cam1/{T0 + timedelta(minutes=30 * i):%Y%m%dT%H%M%S}.jpg"
        sink.put(key, jpeg_bytes(scene("car", rng, size=(48, 32))))
        keys.append(key)
    sink.put("cam1/20261121T020000-forbidden.jpg", b"")  # a key the layout rejects, for the errors table
    return f"s3://{bucket}/cams", keys


def record(out, run_id: str) -> dict:
    return json.loads((out / "runs" / f"{run_id}.json").read_text())


def test_errors_full_and_until(spark, archive, tmp_path):
    uri, _ = archive
    out, errors = tmp_path / "out", tmp_path / "elsewhere" / "errors"
    base = ["featurize", "--input", uri, "--output", str(out / "features"), *COMMON, "--set", "job.max_error_fraction=0.5"]
    assert main([*base, "--run-id", "r1", "--errors", str(errors), "--until", "2026-11-21"], spark=spark) == 0
    r1 = record(out, "r1")["summary"]
    assert r1["errors"] == str(errors) and spark.read.parquet(str(errors)).count() == 1  # --errors: written where asked
    assert r1["selected"] == 2 + 1 and r1["featurized_objects"] == 2  # --until: 23:00 and 23:30 only (and the key that fits no layout)
    dates = {r["date"].isoformat() for r in spark.read.parquet(str(out / "features")).select("date").collect()}
    assert dates == {"2026-11-20"}
    assert main([*base, "--run-id", "r2"], spark=spark) == 0
    r2 = record(out, "r2")["summary"]
    assert r2["skipped_unchanged"] == 2 and r2["featurized_objects"] == 4
    assert main([*base, "--run-id", "r3", "--full"], spark=spark) == 0
    r3 = record(out, "r3")["summary"]
    assert r3["skipped_unchanged"] == 0 and r3["featurized_objects"] == 6 and r3["replaced_objects"] == 6  # --full: everything again, no duplicates
    assert spark.read.parquet(str(out / "features")).count() == 6


def test_access_denied_on_check_and_on_fetch(spark, s3_endpoint, archive, tmp_path, capsys):
    uri, _ = archive
    bucket = uri.split("/")[2]
    with FaultProxy(s3_endpoint, error_rate=0.0, drop_rate=0.0, deny=f"/{bucket}") as proxy:  # the whole bucket
        args = ["featurize", "--input", uri, "--output", str(tmp_path / "a" / "features"), *COMMON, "--set", f"storage.endpoint_url={proxy.url}"]
        assert main(args, spark=spark) == 3  # the check before any Spark work: storage unreachable
    assert "was denied (403)" in capsys.readouterr().err and proxy.counts["AccessDenied"] >= 1
    with FaultProxy(s3_endpoint, error_rate=0.0, drop_rate=0.0, deny="T000000.jpg") as proxy:  # objects of whole hours only
        out = tmp_path / "b"
        args = ["featurize", "--input", uri, "--output", str(out / "features"), *COMMON, "--run-id", "denied", "--set", f"storage.endpoint_url={proxy.url}"]
        args += ["--set", "job.max_error_fraction=0.9", "--set", "storage.max_attempts=2"]
        assert main(args, spark=spark) == 0
    rows = {r["uri"].rsplit("/", 1)[-1]: r for r in spark.read.parquet(str(out / "errors")).collect()}
    denied = {k for k in rows if k.endswith("T000000.jpg")}
    assert denied == {"20261121T000000.jpg"}
    assert rows["20261121T000000.jpg"]["stage"] == "fetch" and "AccessDenied" in rows["20261121T000000.jpg"]["error_type"] + rows["20261121T000000.jpg"]["message"]
    assert record(out, "denied")["summary"]["featurized_objects"] == 5
