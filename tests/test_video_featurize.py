"""Video objects through `vidspark featurize` on local[2] Spark: sampling, splitting into tasks, errors."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from pyspark.sql import functions as F

from tests.conftest import TEST_FEATURIZER
from vidspark.cli import main
from vidspark.outputs import read_table
from vidspark.schemas import ERRORS_SCHEMA, FEATURES_SCHEMA
from vidspark.synthetic import LocalSink, encode_video, jpeg_bytes, scene

START = datetime(2026, 11, 20, 23, 59, 58, tzinfo=timezone.utc)  # recordings cross midnight
FPS = 8
N = 40


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("video-archive")
    sink = LocalSink(root)
    rng = np.random.default_rng(5)
    frames = [scene("car", rng, size=(160, 120), phase=i / 3) for i in range(N)]
    mp4 = encode_video(frames, fps=FPS, gop=6)
    avi = encode_video(frames, fps=FPS, codec="mjpeg", container_format="avi")
    sink.put(f"cam1/{START:%Y%m%dT%H%M%S}.mp4", mp4)
    sink.put(f"cam2/{START:%Y%m%dT%H%M%S}.avi", avi)
    sink.put(f"cam2/{START + timedelta(minutes=5):%Y%m%dT%H%M%S}.avi", avi[: len(avi) // 2])  # truncated upload
    sink.put(f"cam3/{START:%Y%m%dT%H%M%S}", mp4)  # no extension: recognised by content
    sink.put(f"cam4/{START:%Y%m%dT%H%M%S}.jpg", jpeg_bytes(frames[0]))  # a still beside the videos
    return root


def featurize(spark, archive, out, *sets: str) -> int:
    argv = ["featurize", "--input", str(archive), "--output", str(out / "features"), "--layout", "{camera_id}/{ts}"]
    argv += [*TEST_FEATURIZER, "--set", "video.every_n_frames=3", "--set", "job.max_error_fraction=0.5"]
    for s in sets:
        argv += ["--set", s]
    return main(argv, spark=spark)


def test_videos_become_sampled_timed_frames_and_split_tasks_agree(spark, archive, tmp_path):
    assert featurize(spark, archive, tmp_path / "one") == 0
    # every video larger than 0 bytes is probed and cut at keyframes into ~1 s segments
    assert featurize(spark, archive, tmp_path / "split", "video.split_min_bytes=0", "video.segment_seconds=1.0") == 0

    one = read_table(spark, str(tmp_path / "one" / "features"), FEATURES_SCHEMA).toPandas()
    split = read_table(spark, str(tmp_path / "split" / "features"), FEATURES_SCHEMA).toPandas()

    stem = f"{START:%Y%m%dT%H%M%S}"
    mp4 = one[one["camera_id"] == "cam1"].sort_values("frame_idx")
    assert list(mp4["frame_idx"]) == list(range(0, N, 3))
    expected_ts = [START + timedelta(seconds=i / FPS) for i in range(0, N, 3)]
    assert [t.to_pydatetime().replace(tzinfo=timezone.utc) for t in mp4["frame_ts"]] == expected_ts
    assert set(mp4["video_id"]) == {f"cam1/{stem}"}  # the key without extension
    assert {d.isoformat() for d in mp4["date"]} == {"2026-11-20", "2026-11-21"}  # frames after midnight land in the next day
    assert set(one[one["camera_id"] == "cam3"]["frame_idx"]) == set(range(0, N, 3))  # sniffed as a video
    assert len(one[one["camera_id"] == "cam4"]) == 1 and one[one["camera_id"] == "cam4"]["video_id"].isna().all()

    # split decoding: the same frames, each once, with the same features
    key = ["uri", "frame_idx"]
    a, b = one.sort_values(key).reset_index(drop=True), split.sort_values(key).reset_index(drop=True)
    assert a[[*key, "frame_ts"]].equals(b[[*key, "frame_ts"]])
    assert not b.duplicated(key).any()
    np.testing.assert_allclose(np.stack(a["features"]), np.stack(b["features"]), rtol=1e-4, atol=1e-5)

    # the truncated AVI: its decodable frames, and exactly one errors row naming where it stopped
    for run in ("one", "split"):
        errors = read_table(spark, str(tmp_path / run / "errors"), ERRORS_SCHEMA).toPandas()
        assert len(errors) == 1, errors
        err = errors.iloc[0]
        assert err["uri"].endswith(f"{START + timedelta(minutes=5):%Y%m%dT%H%M%S}.avi") and err["stage"] == "decode"
        assert "frame" in err["message"] and "t=" in err["message"]  # where decoding stopped
        cut = (one if run == "one" else split).query("uri == @err['uri']")
        assert 0 < len(cut) < len(range(0, N, 3))


def test_run_record_counts_videos_and_frames(spark, archive, tmp_path):
    import json

    assert featurize(spark, archive, tmp_path, "video.fps=2", "video.every_n_frames=1", "video.max_frames=4") == 0
    record = json.loads(next((tmp_path / "runs").glob("*.json")).read_text())
    s = record["summary"]
    assert s["listed"] == 5 and s["videos"] == 3  # by extension; the extensionless one is found by content on the executor
    feats = read_table(spark, str(tmp_path / "features"), FEATURES_SCHEMA)
    per_video = {r["uri"].rsplit("/", 2)[-2]: r["n"] for r in feats.groupBy("uri").agg(F.count("*").alias("n")).collect()}
    assert per_video["cam1"] == 4 and per_video["cam3"] == 4  # max_frames caps each video
    # 4 videos x 4 frames + 1 still; the truncated AVI reaches its 4 frames before the cut, so no error
    assert s["featurized"] == feats.count() == 17 and s["errors_by_stage"] == {}


def test_run_record_says_where_featurize_time_went(spark, tmp_path):
    """The run record's task timings account for every frame; an errors-free run leaves an empty errors table."""
    import json

    from vidspark.outputs import read_table as read

    rng = np.random.default_rng(9)
    sink = LocalSink(tmp_path / "in")
    for i in range(10):
        sink.put(f"camA/{START + timedelta(seconds=i):%Y%m%dT%H%M%S}.jpg", jpeg_bytes(scene("car", rng, size=(96, 72), phase=i)))
    out = tmp_path / "out"
    argv = ["featurize", "--input", str(tmp_path / "in"), "--output", str(out / "features"), "--layout", "{camera_id}/{ts}", "--run-id", "r1"]
    argv += TEST_FEATURIZER
    assert main(argv, spark=spark) == 0
    summary = json.loads((out / "runs" / "r1.json").read_text())["summary"]
    tasks = summary["tasks"]
    assert summary["featurized"] == 10 and tasks["frames"] == 10
    assert tasks["tasks"] >= 1 and 0 < tasks["model_s"] <= tasks["task_s"]
    assert 0 <= tasks["wait_s"] <= tasks["task_s"] and tasks["decode_s"] > 0
    assert summary["task_slots"] == spark.sparkContext.defaultParallelism  # local[2], spark.task.cpus 1 in the test session
    assert read(spark, str(out / "errors"), ERRORS_SCHEMA).count() == 0

    # a new corrupt object: one task, no frame, one errors row
    bad = f"camA/{START + timedelta(seconds=60):%Y%m%dT%H%M%S}.jpg"
    sink.put(bad, b"not a jpeg")
    assert main([*argv[:-6], "--run-id", "r2", *argv[-6:]], spark=spark) == 4  # 1 of 11 failed: over max_error_fraction
    second = json.loads((out / "runs" / "r2.json").read_text())["summary"]
    assert second["skipped_unchanged"] == 10 and second["featurized"] == 0
    assert second["errors_by_stage"] == {"decode": 1} and second["tasks"]["frames"] == 0
    assert read(spark, str(out / "errors"), ERRORS_SCHEMA).count() == 1

    # nothing to do: the warm-up is cancelled, no featurize task runs, the errors history gets no row of r3
    (tmp_path / "in" / bad).unlink()
    assert main([*argv[:-6], "--run-id", "r3", *argv[-6:]], spark=spark) == 0
    third = json.loads((out / "runs" / "r3.json").read_text())["summary"]
    assert third["skipped_unchanged"] == 10 and third["work_units"] == 0 and "frames" not in third["tasks"]
    assert [r["run_id"] for r in read(spark, str(out / "errors"), ERRORS_SCHEMA).collect()] == ["r2"]
