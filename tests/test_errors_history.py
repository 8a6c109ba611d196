"""errors/ is a history: each run appends its rows, partitioned by camera and camera-local date, with run id and last-modified."""

from __future__ import annotations

import os
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from vidspark.cli import main
from vidspark.outputs import read_table
from vidspark.schemas import ERRORS_SCHEMA

MTIME = datetime(2026, 11, 21, 22, 30, tzinfo=timezone.utc)  # 2026-11-21 23:30 in Berlin, 2026-11-22 in Tokyo


def make_input(root: Path) -> None:
    (root / "cam1").mkdir(parents=True)
    (root / "cam2").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / "cam1" / "20261120T230000.jpg")
    (root / "cam1" / "20261120T230500.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "cam2" / "20261121T003000.jpg").write_bytes(b"")  # 2026-11-20T23:30Z: a UTC date would be the 20th
    (root / "notes.txt").write_text("no camera folder: does not fit the layout")
    for p in root.rglob("*"):
        os.utime(p, (MTIME.timestamp(), MTIME.timestamp()))


def featurize(spark, inp: Path, out: Path, run_id: str, test_conf_args: list[str]) -> int:
    args = ["featurize", "--input", str(inp), "--output", str(out / "features"), "--layout", "{camera_id}/{ts}", "--run-id", run_id]
    args += [*test_conf_args, "--set", "job.max_error_fraction=1", "--set", "input.timezone=Europe/Berlin"]
    return main(args, spark=spark)


def test_errors_accumulate_per_run_by_camera_and_local_date(spark, tmp_path, test_conf_args):
    inp, out = tmp_path / "in", tmp_path / "out"
    make_input(inp)
    # an errors table of vidspark 0.1 (one unpartitioned file) is moved aside, not lost and not mixed in
    (out / "errors").mkdir(parents=True)
    spark.createDataFrame([("s3://b/old.jpg", "decode", "X", "old", "r0")], "uri string, stage string, error_type string, message string, run_id string").toPandas().to_parquet(
        out / "errors" / "part-00000.parquet"
    )
    assert featurize(spark, inp, out, "r1", test_conf_args) == 0
    assert (out / "errors.v0.1" / "part-00000.parquet").is_file()
    assert featurize(spark, inp, out, "r2", test_conf_args) == 0  # the broken objects are tried again, and fail again

    errors = read_table(spark, str(out / "errors"), ERRORS_SCHEMA)
    rows = errors.collect()
    assert sorted({r["run_id"] for r in rows}) == ["r1", "r2"] and len(rows) == 6
    latest = [r for r in rows if r["run_id"] == "r2"]
    by_uri = {Path(r["uri"]).name: r for r in latest}
    assert {k: (v["stage"], v["camera_id"], v["date"]) for k, v in by_uri.items()} == {
        "20261120T230500.jpg": ("decode", "cam1", date(2026, 11, 20)),
        "20261121T003000.jpg": ("decode", "cam2", date(2026, 11, 21)),  # the camera's local day
        "notes.txt": ("layout", "unknown", date(2026, 11, 21)),  # no camera in the key: its last-modified day in input.timezone
    }
    assert all(r["last_modified"].replace(tzinfo=timezone.utc) == MTIME for r in latest)
    folders = sorted(f"{p.parent.name}/{p.name}" for p in (out / "errors").glob("camera_id=*/date=*"))
    assert folders == ["camera_id=cam1/date=2026-11-20", "camera_id=cam2/date=2026-11-21", "camera_id=unknown/date=2026-11-21"]


def test_a_clean_run_leaves_an_empty_readable_table(spark, tmp_path, test_conf_args):
    inp, out = tmp_path / "in", tmp_path / "out"
    (inp / "cam1").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(inp / "cam1" / "20261120T230000.jpg")
    assert featurize(spark, inp, out, "r1", test_conf_args) == 0
    assert read_table(spark, str(out / "errors"), ERRORS_SCHEMA).count() == 0
