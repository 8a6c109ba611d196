"""Nightly incremental runs: two nights against a from-scratch run, and a driver killed mid-write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers import prob_matrix, train_model
from vidspark.cli import main
from vidspark.synthetic import LocalSink, encode_video, jpeg_bytes, scene

pytestmark = pytest.mark.slow

COMMON = ["--set", "featurizer.weights=random", "--set", "featurizer.batch_size=16", "--set", "train.num_boost_round=60", "--set", "video.every_n_frames=2"]
LAYOUT = "{camera_id}/{video_id}/** | {camera_id}/{ts}"
MIDNIGHT = datetime(2026, 11, 21, tzinfo=timezone.utc)


def put_video_folder(sink: LocalSink, cam: str, video: str, label: str, start: datetime, frames: range, seed: int) -> int:
    rng = np.random.default_rng(seed)
    for i in frames:
        shown = label if rng.uniform() > 0.25 else ("person" if label == "car" else "car")
        sink.put(f"{cam}/{video}/frame_{i:05d}.jpg", jpeg_bytes(scene(shown, rng, size=(160, 120), phase=i / 3)), start + timedelta(seconds=i))
    return len(frames)


def put_mp4(sink: LocalSink, cam: str, start: datetime, label: str, seed: int) -> int:
    rng = np.random.default_rng(seed)
    frames = [scene(label if rng.uniform() > 0.3 else "person", rng, size=(160, 120), phase=i / 3) for i in range(16)]
    sink.put(f"{cam}/{start:%Y%m%dT%H%M%S}.mp4", encode_video(frames, fps=4), start + timedelta(seconds=4))
    return 1


def night1(root: Path) -> int:
    sink = LocalSink(root)
    n = put_video_folder(sink, "cam1", "v1", "car", MIDNIGHT - timedelta(hours=2), range(8), 1)
    n += put_video_folder(sink, "cam1", "late", "person", MIDNIGHT - timedelta(seconds=8), range(8), 2)  # grows past midnight on night 2
    n += put_mp4(sink, "cam3", MIDNIGHT - timedelta(hours=1), "car", 3)
    return n


def night2(root: Path) -> int:
    sink = LocalSink(root)
    m = put_video_folder(sink, "cam1", "late", "person", MIDNIGHT - timedelta(seconds=8), range(8, 14), 4)  # after midnight
    m += put_video_folder(sink, "cam2", "v9", "car", MIDNIGHT + timedelta(hours=3), range(6), 5)
    m += put_mp4(sink, "cam3", MIDNIGHT + timedelta(hours=1), "person", 6)
    # one object changed in place: new content, new time (new etag)
    rng = np.random.default_rng(7)
    sink.put("cam1/v1/frame_00003.jpg", jpeg_bytes(scene("person", rng, size=(160, 120))), MIDNIGHT - timedelta(hours=2) + timedelta(seconds=3, milliseconds=500))
    return m


@pytest.fixture(scope="module")
def model_dir(spark, tmp_path_factory):
    return train_model(spark, tmp_path_factory.mktemp("model"), COMMON, per_class=16, seed=11, size=(160, 120), folds=4)


def run_night(spark, archive: Path, out: Path, model: Path, run_id: str, *extra: str) -> dict:
    code = main(["run", "--input", str(archive), "--layout", LAYOUT, "--model", str(model), "--output", str(out), "--window", "4", "--run-id", run_id, *COMMON, *extra], spark=spark)
    assert code == 0
    return json.loads((out / "runs" / f"{run_id}.json").read_text())


def table(spark, path: Path, key: list[str]) -> pd.DataFrame:
    pdf = spark.read.parquet(str(path)).toPandas()
    return pdf.sort_values(key).reset_index(drop=True)


def assert_same_predictions(spark, a: Path, b: Path) -> None:
    key = ["uri", "frame_idx"]
    fa, fb = table(spark, a / "predictions" / "frames", key), table(spark, b / "predictions" / "frames", key)
    assert len(fa) == len(fb) and fa[[*key, "camera_id", "date", "frame_ts"]].equals(fb[[*key, "camera_id", "date", "frame_ts"]])
    np.testing.assert_allclose(prob_matrix(fa["smoothed_probabilities"]), prob_matrix(fb["smoothed_probabilities"]), atol=1e-4)
    assert (fa["smoothed_label"] == fb["smoothed_label"]).mean() > 0.97  # float ties across batch sizes aside
    va, vb = table(spark, a / "predictions" / "videos", ["camera_id", "video_id"]), table(spark, b / "predictions" / "videos", ["camera_id", "video_id"])
    cols = ["camera_id", "video_id", "date", "start_ts", "end_ts", "n_frames", "label"]
    assert va[cols].equals(vb[cols])
    np.testing.assert_allclose(prob_matrix(va["mean_probabilities"]), prob_matrix(vb["mean_probabilities"]), atol=1e-4)


def test_two_nights_equal_a_run_from_scratch(spark, model_dir, tmp_path):
    archive, out = tmp_path / "archive", tmp_path / "out"
    n = night1(archive)
    r1 = run_night(spark, archive, out, model_dir, "night1")["summary"]["featurize"]
    assert r1["featurized_objects"] == n and r1["skipped_unchanged"] == 0
    m = night2(archive)
    rec2 = run_night(spark, archive, out, model_dir, "night2")
    r2 = rec2["summary"]["featurize"]
    assert r2["featurized_objects"] == m + 1, r2  # the M new objects and the changed one, nothing else
    assert r2["skipped_unchanged"] == n - 1 and r2["replaced_objects"] == 1
    assert rec2["status"] == "ok" and rec2["exit_code"] == 0 and {"list_s", "featurize_s", "write_s"} <= set(r2["timings"])
    # a frame folder has one time, its earliest frame's: frames uploaded after midnight stay in its day
    assert {(p["camera_id"], p["date"]) for p in r2["partitions"]} == {("cam1", "2026-11-20"), ("cam2", "2026-11-21"), ("cam3", "2026-11-21")}
    assert rec2["summary"]["predict"]["model_id"]

    scratch = tmp_path / "scratch"
    r = run_night(spark, archive, scratch, model_dir, "scratch")["summary"]["featurize"]
    assert r["featurized_objects"] == n + m
    assert_same_predictions(spark, out, scratch)
    # the folder that grew past midnight was smoothed with its frames from night 1
    late = table(spark, out / "predictions" / "frames", ["frame_idx"]).query("video_id == 'late'")
    assert list(late["frame_idx"]) == list(range(14)) and {d.isoformat() for d in late["date"]} == {"2026-11-20"}

    # a third night with nothing new featurizes nothing; --prune drops a deleted object's rows
    assert run_night(spark, archive, out, model_dir, "night3")["summary"]["featurize"]["featurized_objects"] == 0
    (archive / "cam2" / "v9" / "frame_00005.jpg").unlink()
    assert run_night(spark, archive, out, model_dir, "night4")["summary"]["featurize"]["pruned_objects"] == 0  # kept without --prune
    rec = run_night(spark, archive, out, model_dir, "night5", "--prune")["summary"]["featurize"]
    assert rec["pruned_objects"] == 1
    feats = spark.read.parquet(str(out / "features")).toPandas()
    assert not feats["uri"].str.endswith("v9/frame_00005.jpg").any() and feats.duplicated(["uri", "frame_idx"]).sum() == 0


def test_since_until_and_cameras_narrow_the_selection(spark, model_dir, tmp_path):
    archive, out = tmp_path / "archive", tmp_path / "out"
    night1(archive)
    night2(archive)
    rec = run_night(spark, archive, out, model_dir, "narrow", "--cameras", "cam3", "--since", "2026-11-21")["summary"]["featurize"]
    assert rec["featurized_objects"] == 1 and rec["selected"] == 1  # the cam3 video of 2026-11-21 only
    assert main(["run", "--input", str(archive), "--model", str(model_dir), "--output", str(out), "--since", "yesterday"], spark=spark) == 2


def _killed_run(archive: Path, out: Path, model: Path, run_id: str, wait_for: Path) -> None:
    """Start `vidspark run` in its own process (own JVM) and SIGKILL it as soon as ``wait_for`` appears."""
    argv = [sys.executable, "-m", "vidspark", "run", "--input", str(archive), "--layout", LAYOUT, "--model", str(model), "--output", str(out)]
    argv += ["--window", "4", "--run-id", run_id, "--master", "local[2]", *COMMON]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not wait_for.exists():
            assert proc.poll() is None, "the run ended before reaching the kill point"
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its JVM, mid-write
        proc.wait()


@pytest.mark.parametrize("kill_at", ["features", "predictions"])
def test_a_run_killed_mid_write_and_run_again_equals_a_clean_run(spark, model_dir, tmp_path, kill_at):
    archive, out, clean = tmp_path / "archive", tmp_path / "out", tmp_path / "clean"
    night1(archive)
    run_night(spark, archive, out, model_dir, "night1")
    before = table(spark, out / "features", ["uri", "frame_idx"])
    night2(archive)
    assert run_night(spark, archive, clean, model_dir, "clean")["status"] == "ok"  # the reference: a clean run over everything

    wait_for = out / "_staging" / "features" / "killed" / "data" if kill_at == "features" else out / "predictions" / "_staging" / "frames" / "killed"
    _killed_run(archive, out, model_dir, "killed", wait_for)

    # a second reader right after the kill: every visible partition is whole, old or new, never mixed
    after = table(spark, out / "features", ["uri", "frame_idx"])
    final = table(spark, clean / "features", ["uri", "frame_idx"])
    assert not after.duplicated(["uri", "frame_idx"]).any()

    def keys(pdf: pd.DataFrame, cam: str, day: object) -> set:
        part = pdf[(pdf["camera_id"] == cam) & (pdf["date"] == day)]
        return set(zip(part["uri"], part["frame_idx"], part["etag"], strict=True))

    for (cam, day), _ in after.groupby(["camera_id", "date"]):
        assert keys(after, cam, day) in (keys(before, cam, day), keys(final, cam, day)), (cam, day)

    rec = run_night(spark, archive, out, model_dir, "rerun")
    assert rec["status"] == "ok"
    if kill_at == "predictions":  # features were complete: nothing to featurize, but the pending partitions are predicted
        assert rec["summary"]["featurize"]["featurized_objects"] == 0 and rec["summary"]["recovered_partitions"]
    assert not (out / "_state").exists() or not any((out / "_state").iterdir())
    got = table(spark, out / "features", ["uri", "frame_idx"])
    assert got[["uri", "etag", "frame_idx", "camera_id", "date"]].equals(final[["uri", "etag", "frame_idx", "camera_id", "date"]])
    assert_same_predictions(spark, out, clean)
