"""Rolling average against an independent plain-Python reference."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from pyspark.sql import functions as F

from vidspark.predict import FRAME_ROWS, label_switches, rolling_mean, with_smoothing
from vidspark.schemas import FRAME_PREDICTIONS_SCHEMA


def reference(rows: list[list[float]], k: int) -> list[list[float]]:
    out = []
    for i in range(len(rows)):
        window = rows[max(0, i - k + 1) : i + 1]
        out.append([sum(col) / len(window) for col in zip(*window, strict=True)])
    return out


@pytest.mark.parametrize("n, k", [(50, 1), (50, 7), (50, 50), (10, 128), (1, 3), (300, 128)])
def test_rolling_mean_matches_reference(n, k):
    rng = np.random.default_rng(n * 1000 + k)
    p = rng.dirichlet(np.ones(3), size=n)
    np.testing.assert_allclose(rolling_mean(p, k), reference(p.tolist(), k), rtol=1e-12, atol=1e-12)


def test_window_one_is_identity_and_empty_is_empty():
    p = np.random.default_rng(1).random((5, 2))
    np.testing.assert_array_equal(rolling_mean(p, 1), p)
    assert rolling_mean(np.zeros((0, 2)), 4).shape == (0, 2)


def test_label_switches():
    assert label_switches(np.array(["a", "a", "b", "a", "a"])) == 2
    assert label_switches(np.array(["a"])) == 0


def test_spark_smoothing_per_video_in_presentation_order(spark):
    """Frames arrive shuffled; ties in frame_ts are ordered by frame_idx, and a frame folder (v2: every frame
    has the folder's one time) by frame_idx alone; videos never mix."""
    rng = np.random.default_rng(7)
    classes = ["a", "b", "c"]
    t0 = datetime(2026, 11, 20, 23, 59, 50, tzinfo=timezone.utc)
    rows, expected = [], {}
    for video, n in (("v1", 40), ("v2", 12)):  # v2: uris 10.jpg and 11.jpg sort before 2.jpg: frame_idx must decide
        probs = rng.dirichlet(np.ones(3), size=n)
        # two frames per timestamp: the tie must be broken by frame_idx, not by arrival order
        ts = [t0 + timedelta(seconds=i // 2) if video == "v1" else t0 for i in range(n)]
        sm = reference(probs.tolist(), 5)
        for i in range(n):
            expected[(video, i)] = sm[i]
            rows.append((f"s3://b/{video}/{i}.jpg", "e", "cam1", video, i, ts[i], ts[i].date(), probs[i].tolist(), None))
    rows.append(("s3://b/single.jpg", "e", "cam1", None, 0, t0, t0.date(), [0.2, 0.5, 0.3], "b"))
    order = rng.permutation(len(rows))
    schema = "uri string, etag string, camera_id string, video_id string, frame_idx long, frame_ts timestamp, date date, probabilities array<double>, label string"
    df = spark.createDataFrame([rows[i] for i in order], schema=schema).repartition(3).withColumn("model_id", F.lit("m")).withColumn("run_id", F.lit("r"))
    out = with_smoothing(df, classes=classes, window=5)
    assert out.schema.fieldNames() == FRAME_ROWS.fieldNames() == FRAME_PREDICTIONS_SCHEMA.fieldNames()
    got = out.collect()
    assert len(got) == len(rows)
    for r in got:
        if r["video_id"] is None:
            assert r["smoothed_probabilities"] == r["probabilities"] and r["smoothed_label"] == "b" == r["predicted_label"]
            continue
        np.testing.assert_allclose(r["smoothed_probabilities"], expected[(r["video_id"], r["frame_idx"])], rtol=1e-12)
        assert r["smoothed_label"] == classes[int(np.argmax(r["smoothed_probabilities"]))]
        assert r["predicted_label"] == classes[int(np.argmax(r["probabilities"]))]
        assert r["smoothed_prob"] == pytest.approx(max(r["smoothed_probabilities"]))
