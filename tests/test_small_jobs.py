"""Small jobs stay small: a night with nothing new runs few Spark jobs and never loads a model (no TensorFlow, no LightGBM)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from vidspark.cli import main
from vidspark.synthetic import LocalSink, write_camera_archive

LAYOUT = "{camera_id}/{video_id}/**"
RANDOM = ["--set", "featurizer.weights=random"]
# The Spark jobs of a night with nothing new (AQE submits each shuffle stage as a job of its own): listing,
# parse and the identity windows with the inventory's counts (3), the diff with the store and its counts (4).
EMPTY_NIGHT_JOBS = 7


def night_before(spark, root: Path) -> tuple[Path, Path, int]:
    """An archive, a feature store that holds all of it (as the listing identifies it) and a model: made without TensorFlow."""
    from vidspark.backbone import featurizer_id
    from vidspark.config import TrainConf, load_conf
    from vidspark.inventory import build_inventory
    from vidspark.layout import Layout
    from vidspark.listing import listing_frame, make_children, plan_listing, resolve
    from vidspark.model import save_model_dir
    from vidspark.outputs import append_partitioned
    from vidspark.schemas import ERRORS_SCHEMA
    from vidspark.storage import parse_uri
    from vidspark.train import fit_booster, lgb_params

    archive, out = root / "archive", root / "out"
    write_camera_archive(LocalSink(archive), cameras=("cam1", "cam2"), videos_per_camera=2, frames_per_video=3, size=(32, 24))
    conf = load_conf(None, ["featurizer.weights=random", f"input.layout={LAYOUT}"])
    fid = featurizer_id(conf.featurizer, conf.storage)
    layout, location = Layout.from_conf(conf.input), parse_uri(str(archive))
    inv = build_inventory(listing_frame(spark, location, resolve(plan_listing(layout), make_children(location, None, limit=100)), conf.storage, parallelism=2), layout)
    stored = inv.rows.select(
        "uri", "etag", "camera_id", "video_id", "frame_idx", "frame_ts", "date", "label",
        F.array(*[F.lit(0.5).cast("float")] * 8).alias("features"), F.lit(fid).alias("featurizer"), F.col("frame_ts").alias("object_ts"),
        F.lit(None).cast("long").alias("dropped_frames"), F.lit(None).cast("string").alias("framework"),
    )  # fmt: skip
    stored.write.partitionBy("camera_id", "date").parquet(str(out / "features"))
    inv.unpersist()
    n = len(list(archive.rglob("*.jpg")))
    append_partitioned(spark.createDataFrame([], ERRORS_SCHEMA), str(out / "errors"), max_rows_per_file=1000)  # as a real night leaves it
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(200, 8)).astype(np.float32), rng.integers(0, 2, 200)
    booster = fit_booster(lgb_params(TrainConf(), 2), X, y, num_boost_round=5)
    save_model_dir(root / "model", model_str=booster.model_to_string(), meta={"classes": ["car", "person"], "feature_dim": 8, "featurizer": fid}, cv_report={})
    return archive, out, n


def test_a_night_with_nothing_new_runs_few_jobs_and_loads_no_model(spark, tmp_path, monkeypatch):
    from vidspark import backbone, tfquiet
    from vidspark.model import TrainedModel

    archive, out, n = night_before(spark, tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("a night with nothing new must not load a model")

    # the shared test session may have imported both already: what must not happen is that this run asks for them
    monkeypatch.setattr(tfquiet, "import_tensorflow", refuse)
    monkeypatch.setattr(backbone, "import_tensorflow", refuse)
    monkeypatch.setattr(TrainedModel, "booster", refuse)
    sc = spark.sparkContext
    group = "test-small-jobs-empty-night"
    sc.setJobGroup(group, "a night with nothing new")
    try:
        code = main(["run", "--input", str(archive), "--layout", LAYOUT, "--model", str(tmp_path / "model"), "--output", str(out), "--run-id", "empty", *RANDOM], spark=spark)
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
        sc.setLocalProperty("spark.job.description", None)
    assert code == 0
    summary = json.loads((out / "runs" / "empty.json").read_text())["summary"]
    assert summary["featurize"]["skipped_unchanged"] == n and summary["featurize"]["featurized"] == 0 and summary["predict"] == {}
    assert summary["featurize"]["tasks"] == {}  # no featurize or warm-up task ran: no Python worker built a model
    jobs = sc.statusTracker().getJobIdsForGroup(group)
    tracker = sc.statusTracker()
    sites = [info.name for j in sorted(jobs) for s in tracker.getJobInfo(j).stageIds[-1:] for info in [tracker.getStageInfo(s)] if info is not None]
    assert 0 < len(jobs) <= EMPTY_NIGHT_JOBS, f"{len(jobs)} Spark jobs for a night with nothing new (at most {EMPTY_NIGHT_JOBS}): {sites}"
    assert not sc.statusTracker().getJobIdsForGroup("vidspark-warm-up-empty")


def test_a_night_that_lists_what_the_last_run_left_runs_no_spark_job(spark, tmp_path):
    """The listing mark: only a listing and a store exactly as a finished run without errors left them skip the inventory and the diff."""
    archive, out, n = night_before(spark, tmp_path)
    sc = spark.sparkContext
    base = ["run", "--input", str(archive), "--layout", LAYOUT, "--model", str(tmp_path / "model"), "--output", str(out), *RANDOM, "--set", "job.max_error_fraction=0.5"]

    def night(run_id: str, *extra: str) -> tuple[dict, int]:
        sc.setJobGroup(f"mark-{run_id}", run_id)
        try:
            assert main([*base, "--run-id", run_id, *extra], spark=spark) == 0
        finally:
            sc.setLocalProperty("spark.jobGroup.id", None)
        return json.loads((out / "runs" / f"{run_id}.json").read_text())["summary"]["featurize"], len(sc.statusTracker().getJobIdsForGroup(f"mark-{run_id}"))

    first, jobs = night("n1")  # the store was made by hand: no mark yet, so the whole diff runs
    assert jobs > 0 and first["skipped_unchanged"] == n and "unchanged_since" not in first["listing"]
    again, jobs = night("n2")
    assert jobs == 0 and again["listing"]["unchanged_since"] == "n1"
    assert {k: again[k] for k in ("listed", "selected", "skipped_unchanged", "videos", "featurized", "error_count", "partitions")} == {
        k: first[k] for k in ("listed", "selected", "skipped_unchanged", "videos", "featurized", "error_count", "partitions")
    }
    # another conf key that decides the outcome, a key that does not fit the layout (an errors row every night), then gone again
    other, jobs = night("n3", "--set", "video.every_n_frames=2")
    assert jobs > 0 and "unchanged_since" not in other["listing"]
    (archive / "stray.jpg").write_bytes(b"x")
    for run_id in ("n4", "n5"):
        stray, jobs = night(run_id)
        assert jobs > 0 and stray["error_count"] == 1 and "unchanged_since" not in stray["listing"]  # no mark after errors: retried
    (archive / "stray.jpg").unlink()
    back, jobs = night("n6")
    assert jobs > 0 and back["error_count"] == 0 and back["skipped_unchanged"] == n
    # a deletion is a new listing: --prune removes the deleted frame's rows (the last of its folder: no other frame moves)
    folder = sorted(archive.rglob("*.jpg"))[0].parent
    sorted(folder.glob("*.jpg"))[-1].unlink()
    pruned, jobs = night("n8", "--prune")
    assert jobs > 0 and pruned["pruned_objects"] == 1 and pruned["skipped_unchanged"] == n - 1
    assert night("n9", "--prune")[1] == 0  # the mark n8 left, after an error-free run that changed the store


def test_the_run_and_predict_modules_import_no_model_framework():
    """What the driver of ``run`` and ``predict`` imports, in a fresh interpreter: no TensorFlow, LightGBM or scikit-learn."""
    code = (
        "import sys, vidspark.cli, vidspark.pipeline, vidspark.featurize, vidspark.predict, vidspark.warmup, vidspark.model; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'lightgbm', 'sklearn', 'matplotlib', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("first", ["lightgbm", "sklearn"])
def test_a_predicting_worker_imports_lightgbm_without_scikit_learn(first):
    """``import_lightgbm`` leaves scikit-learn out where nothing imported it, and importable afterwards."""
    code = (
        "import sys; from vidspark.predict import import_lightgbm\n"
        + ("import sklearn\n" if first == "sklearn" else "")
        + "lgb = import_lightgbm(); had = 'sklearn' in sys.modules; import sklearn, numpy as np\n"
        "X = np.random.default_rng(0).normal(size=(50, 3)); b = lgb.train({'verbose': -1}, lgb.Dataset(X, X[:, 0] > 0), 2)\n"
        "assert lgb.Booster(model_str=b.model_to_string()).predict(X).shape == (50,)\n"
        "print(had)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ("True" if first == "sklearn" else "False"), out.stdout + out.stderr
