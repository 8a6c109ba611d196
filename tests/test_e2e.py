"""End to end on local[2] Spark from the local S3 server: featurize -> train -> predict/run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from vidspark.cli import main
from vidspark.outputs import read_table
from vidspark.schemas import ERRORS_SCHEMA, FEATURES_SCHEMA, FRAME_PREDICTIONS_SCHEMA, VIDEO_PREDICTIONS_SCHEMA
from vidspark.synthetic import CLASSES, LocalSink, S3Sink, jpeg_bytes, scene, write_camera_archive, write_labeled_set

pytestmark = pytest.mark.slow

COMMON = ["--set", "featurizer.weights=random", "--set", "featurizer.batch_size=16", "--set", "train.num_boost_round=80"]


def run_cli(spark, *argv: str) -> int:
    return main([*argv, *COMMON], spark=spark)


def last_run_record(folder: Path) -> dict:
    records = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(records[-1].read_text())


@pytest.fixture(scope="module")
def two_class_archive(s3_endpoint):
    """Labeled stills (2 classes), two cameras of frame folders, and broken objects, in one bucket."""
    from vidspark.config import StorageConf
    from vidspark.storage import make_s3_client

    client = make_s3_client(StorageConf(endpoint_url=s3_endpoint))
    bucket = "e2e-two-class"
    client.create_bucket(Bucket=bucket)
    sink = S3Sink(client, bucket)
    labeled = write_labeled_set(sink, classes=CLASSES[:2], per_class=24, seed=10, prefix="labeled/")
    # Broken inputs: zero bytes, truncated JPEG, text with an image name, a key outside the layout.
    good = jpeg_bytes(scene("car", __import__("numpy").random.default_rng(0)))
    sink.put("labeled/car/empty.jpg", b"")
    sink.put("labeled/person/cut.jpg", good[: len(good) // 3])
    sink.put("labeled/person/notes.jpg", b"not an image at all")
    sink.put("labeled/stray.jpg", good)
    truths = write_camera_archive(sink, cameras=("cam1", "cam2"), videos_per_camera=3, frames_per_video=12, classes=CLASSES[:2], flicker=0.2, seed=11, prefix="cameras/")
    return {"bucket": bucket, "labeled": len(labeled), "broken": 4, "truths": truths, "client": client}


def test_two_class_pipeline_from_s3(spark, two_class_archive, tmp_path):
    a = two_class_archive
    out = tmp_path / "out"
    features = str(out / "features")

    # featurize: every listed object is either a features row or an errors row
    assert run_cli(spark, "featurize", "--input", f"s3://{a['bucket']}/labeled", "--output", features, "--set", "job.max_error_fraction=0.1") == 0
    feats = read_table(spark, features, FEATURES_SCHEMA)
    errors = read_table(spark, str(out / "errors"), ERRORS_SCHEMA)
    n_feat, n_err = feats.count(), errors.count()
    assert n_feat == a["labeled"]
    assert n_feat + n_err == a["labeled"] + a["broken"]
    stages = {r["uri"].rsplit("/", 1)[-1]: r["stage"] for r in errors.collect()}
    assert stages == {"empty.jpg": "decode", "cut.jpg": "decode", "notes.jpg": "decode", "stray.jpg": "layout"}
    assert feats.select(F.size("features")).distinct().collect()[0][0] == 2048
    assert {r["featurizer"] for r in feats.select("featurizer").distinct().collect()} == {"resnet50/random-seed0@224"}
    record = last_run_record(out / "runs")
    assert record["status"] == "ok" and record["summary"]["featurized"] == n_feat and record["summary"]["errors_by_stage"] == {"decode": 3, "layout": 1}

    # re-running the same job replaces features, never appends; errors/ is a history: the second run's rows beside the first's
    assert run_cli(spark, "featurize", "--input", f"s3://{a['bucket']}/labeled", "--output", features, "--set", "job.max_error_fraction=0.1") == 0
    assert read_table(spark, features, FEATURES_SCHEMA).count() == n_feat
    history = read_table(spark, str(out / "errors"), ERRORS_SCHEMA).groupBy("run_id").count().collect()
    assert sorted(r["count"] for r in history) == [n_err, n_err]

    # train: grouped stratified CV must learn with random weights
    model = out / "model"
    assert run_cli(spark, "train", "--features", features, "--model", str(model), "--folds", "5") == 0
    meta = json.loads((model / "model.json").read_text())
    report = json.loads((model / "cv_report.json").read_text())
    assert meta["classes"] == ["car", "person"] and meta["feature_dim"] == 2048
    assert meta["cv"]["out_of_fold"]["accuracy"] >= 0.9, meta["cv"]
    assert len(report["folds"]) == 5 and all(f["roc_auc"] is not None for f in report["folds"])
    assert sum(map(sum, report["overall_out_of_fold"]["confusion_matrix"])) == n_feat
    assert (model / "confusion_matrix.png").stat().st_size > 1000

    # nightly run over two cameras: features for the cameras, predictions per frame and per video
    assert (
        run_cli(
            spark,
            "run",
            "--input",
            f"s3://{a['bucket']}/cameras",
            "--layout",
            "{camera_id}/{video_id}/**",
            "--model",
            str(model),
            "--output",
            str(out),
            "--window",
            "6",
        )
        == 0
    )
    frames = read_table(spark, str(out / "predictions" / "frames"), FRAME_PREDICTIONS_SCHEMA)
    videos = read_table(spark, str(out / "predictions" / "videos"), VIDEO_PREDICTIONS_SCHEMA)
    n_camera_frames = sum(len(t.frame_labels) for t in a["truths"])
    assert frames.count() == n_camera_frames
    assert frames.where(F.col("camera_id") == "unknown").count() == 0  # labeled stills were not predicted by run
    assert read_table(spark, features, FEATURES_SCHEMA).count() == n_feat + n_camera_frames
    rows = {(r["camera_id"], r["video_id"]): r for r in videos.collect()}
    assert len(rows) == len(a["truths"]) == 6
    correct = sum(rows[(t.camera_id, t.video_id)]["label"] == t.label for t in a["truths"])
    assert correct >= 5, {k: v["label"] for k, v in rows.items()}
    for t in a["truths"]:
        r = rows[(t.camera_id, t.video_id)]
        assert r["n_frames"] == len(t.frame_labels) and r["start_ts"] <= r["end_ts"]
        assert r["smoothed_label_switches"] <= r["raw_label_switches"] + 1
    assert sum(r["smoothed_label_switches"] for r in rows.values()) < sum(r["raw_label_switches"] for r in rows.values())
    frame_idx = sorted(r["frame_idx"] for r in frames.where((F.col("camera_id") == "cam1") & (F.col("video_id") == "cam1-000")).collect())
    assert frame_idx == list(range(12))

    # a model trained on other features is refused with a clear message and exit 2
    other = str(tmp_path / "other-features")
    assert (
        main(
            ["featurize", "--input", f"s3://{a['bucket']}/cameras/cam2", "--layout", "{video_id}/**", "--output", other, *COMMON, "--set", "featurizer.seed=1"],
            spark=spark,
        )
        == 0
    )
    assert run_cli(spark, "predict", "--features", other, "--model", str(model), "--output", str(tmp_path / "p")) == 2


def test_three_class_set_from_local_folder(spark, tmp_path):
    write_labeled_set(LocalSink(tmp_path / "in"), classes=CLASSES, per_class=15, seed=3)
    features, model = str(tmp_path / "features"), tmp_path / "model"
    assert run_cli(spark, "featurize", "--input", f"file://{tmp_path / 'in'}", "--output", features) == 0
    assert run_cli(spark, "train", "--features", features, "--model", str(model), "--folds", "3") == 0
    meta = json.loads((model / "model.json").read_text())
    report = json.loads((model / "cv_report.json").read_text())
    assert meta["classes"] == sorted(CLASSES) and meta["objective"] == "multiclass"
    oof = report["overall_out_of_fold"]
    assert oof["average"] == "macro" and len(oof["confusion_matrix"]) == 3 and oof["roc_auc"] is not None
    assert oof["accuracy"] >= 0.8, oof
    assert meta["training_set"]["per_class"] == {c: 15 for c in CLASSES}
    # predict the labeled set itself: per-class probabilities in model class order
    assert run_cli(spark, "predict", "--features", features, "--model", str(model), "--output", str(tmp_path / "pred")) == 0
    frames = read_table(spark, str(tmp_path / "pred" / "frames"), FRAME_PREDICTIONS_SCHEMA).collect()
    assert len(frames) == 45 and all(len(r["probabilities"]) == 3 for r in frames)
    assert sum(r["predicted_label"] == r["label"] for r in frames) >= 40

    # the README's queries: DuckDB over the Hive-partitioned Parquet, and Spark SQL
    import duckdb

    rows = duckdb.sql(
        f"""SELECT camera_id, label, count(*) AS frames, avg(predicted_prob) AS mean_prob
            FROM read_parquet('{tmp_path}/pred/frames/**/*.parquet', hive_partitioning = true)
            GROUP BY ALL ORDER BY label"""
    ).fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [("unknown", c, 15) for c in sorted(CLASSES)]
    spark.read.parquet(str(tmp_path / "pred" / "frames")).createOrReplaceTempView("frames")
    got = spark.sql("SELECT smoothed_label, count(*) AS n FROM frames WHERE date >= '2000-01-01' GROUP BY smoothed_label").collect()
    assert sum(r["n"] for r in got) == 45


def test_error_fraction_over_limit_exits_4_and_still_writes(spark, tmp_path):
    sink = LocalSink(tmp_path / "in")
    write_labeled_set(sink, classes=("car",), per_class=6, seed=1)
    for i in range(3):
        sink.put(f"car/broken_{i}.jpg", b"\xff\xd8\xff garbage")
    code = run_cli(spark, "featurize", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "f"), "--set", "job.max_error_fraction=0.2")
    assert code == 4
    assert read_table(spark, str(tmp_path / "f"), FEATURES_SCHEMA).count() == 6
    assert read_table(spark, str(tmp_path / "errors"), ERRORS_SCHEMA).count() == 3
    record = last_run_record(tmp_path / "runs")
    assert record["exit_code"] == 4 and "max_error_fraction" in record["message"]


def test_mixed_video_and_still_archive_from_s3(spark, s3_endpoint, tmp_path):
    """Video files (H.264 MP4, a truncated MJPEG AVI) and frame folders in one bucket, two cameras."""
    from vidspark.config import StorageConf
    from vidspark.storage import make_s3_client
    from vidspark.synthetic import encode_video, write_video_camera

    client = make_s3_client(StorageConf(endpoint_url=s3_endpoint))
    bucket = "e2e-video"
    client.create_bucket(Bucket=bucket)
    sink = S3Sink(client, bucket)
    write_labeled_set(sink, classes=CLASSES[:2], per_class=24, seed=20, prefix="labeled/")
    truths = write_camera_archive(sink, cameras=("cam1",), videos_per_camera=2, frames_per_video=12, classes=CLASSES[:2], flicker=0.2, seed=21, prefix="cameras/")
    # cam3 records video: 48 frames at 8 fps, 30% of them (at random) show the other class
    video_truths = write_video_camera(sink, camera="cam3", videos=2, frames_per_video=48, fps=8, classes=CLASSES[:2], flicker=0.3, seed=22, prefix="cameras/")
    rng = __import__("numpy").random.default_rng(3)
    avi = encode_video([scene("car", rng, size=(160, 120)) for _ in range(24)], fps=8, codec="mjpeg", container_format="avi")
    sink.put("cameras/cam3/20261120T170000.avi", avi[: len(avi) // 2])

    out = tmp_path / "out"
    features, model = str(out / "features"), out / "model"
    assert run_cli(spark, "featurize", "--input", f"s3://{bucket}/labeled", "--output", str(tmp_path / "labeled-features")) == 0
    assert run_cli(spark, "train", "--features", str(tmp_path / "labeled-features"), "--model", str(model), "--folds", "4") == 0
    layout = "{camera_id}/{video_id}/** | {camera_id}/{ts}"
    sets = ["--set", "video.every_n_frames=2", "--set", "job.max_error_fraction=0.5", "--set", "video.split_min_bytes=0", "--set", "video.segment_seconds=2"]
    assert run_cli(spark, "run", "--input", f"s3://{bucket}/cameras", "--layout", layout, "--model", str(model), "--output", str(out), *sets) == 0

    feats = read_table(spark, features, FEATURES_SCHEMA)
    per_uri = {r["uri"]: r["n"] for r in feats.groupBy("uri").agg(F.count("*").alias("n")).collect()}
    for t in video_truths:
        assert per_uri[f"s3://{bucket}/cameras/{t.video_id}.mp4"] == 24  # every 2nd of 48 frames, split into ~2 s tasks
    cut = per_uri[f"s3://{bucket}/cameras/cam3/20261120T170000.avi"]
    assert 0 < cut < 12
    errors = read_table(spark, str(out / "errors"), ERRORS_SCHEMA).collect()
    assert [(e["uri"].rsplit("/", 1)[-1], e["stage"]) for e in errors] == [("20261120T170000.avi", "decode")]
    record = last_run_record(out / "runs")
    assert record["summary"]["featurize"]["videos"] == 3 and record["summary"]["featurize"]["work_units"] > 3 + 24  # split

    videos = {(r["camera_id"], r["video_id"]): r for r in read_table(spark, str(out / "predictions" / "videos"), VIDEO_PREDICTIONS_SCHEMA).collect()}
    assert {k[0] for k in videos} == {"cam1", "cam3"}
    for t in video_truths:
        r = videos[("cam3", t.video_id)]
        assert r["n_frames"] == 24 and r["label"] == t.label
        # frames alternate classes at random around a clear majority: smoothing must flicker less
        assert r["smoothed_label_switches"] < r["raw_label_switches"], r
    assert all(videos[("cam1", t.video_id)]["raw_label_switches"] is not None for t in truths)

    png = tmp_path / "timeline.png"
    assert main(["timeline", "--predictions", str(out / "predictions"), "--video", video_truths[0].video_id, "--out", str(png)], spark=spark) == 0
    assert png.stat().st_size > 10_000


def test_demo_runs_end_to_end_and_prints_its_summary(spark, demo_run):
    work, out = demo_run
    assert out.startswith("vidspark demo summary") and "3 errors {'decode': 3}" in out  # the three broken objects, as rows
    runs = sorted(p.name for p in (work / "output" / "runs").glob("*.json"))
    assert runs and all(json.loads((work / "output" / "runs" / r).read_text())["status"] == "ok" for r in runs)
    for table in ("features", "errors", "predictions/frames", "predictions/videos"):
        assert spark.read.parquet(str(work / "output" / table)).count() > (0 if table != "errors" else 2), table
    assert (work / "output" / "model" / "model.json").is_file()
