"""Training data gathered with bounded driver memory: streamed float32 rows, a sample by class and by video above train.max_rows."""

from __future__ import annotations

import math
from collections import Counter
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pytest

from vidspark.errors import TrainingDataError
from vidspark.outputs import read_table, write_partitioned
from vidspark.schemas import FEATURES_SCHEMA
from vidspark.train import class_quotas, frames_per_group_cap, gather_labeled

DIM = 6
T0 = datetime(2026, 11, 20, 8, tzinfo=timezone.utc)


def write_store(spark, path, videos):
    """``videos``: (label, camera, video_id or None for a still, frames). Features say which row they are: [video number, frame_idx, ...]."""
    rows = []
    for v, (label, camera, video_id, frames) in enumerate(videos):
        for i in range(frames):
            uri = f"s3://b/{camera}/{video_id}.mp4" if video_id else f"s3://b/{camera}/still{v}.jpg"
            vec = [float(v), float(i), *np.random.default_rng(v * 1000 + i).normal(size=DIM - 2).tolist()]
            ts = T0 + timedelta(seconds=i)
            rows.append((uri, "e", camera, video_id, i, ts, date(2026, 11, 20), label, vec, "resnet50/random-seed0@224", T0, None, None, None))
    write_partitioned(spark.createDataFrame(rows, schema=FEATURES_SCHEMA), str(path))
    return read_table(spark, str(path), FEATURES_SCHEMA)


def kept(data):
    """(video number, frame_idx) of each gathered row."""
    return [(int(a), int(b)) for a, b in data.X[:, :2]]


def test_class_quotas_sum_to_max_rows_in_proportion():
    assert class_quotas({"a": 50, "b": 30, "c": 20}, 10) == {"a": 5, "b": 3, "c": 2}
    assert class_quotas({"a": 2, "b": 1, "c": 1}, 3) == {"a": 1, "b": 1, "c": 1}  # largest remainders: 0.75 and 0.75 before 0.5
    assert class_quotas({"c": 1, "b": 1, "a": 1}, 2) == {"a": 1, "b": 1, "c": 0}  # equal remainders: by name
    quotas = class_quotas({"a": 1001, "b": 999, "c": 7}, 200)
    assert sum(quotas.values()) == 200 and quotas["c"] == 1
    assert class_quotas({"a": 3, "b": 4}, 10) == {"a": 3, "b": 4}


def test_frames_per_group_cap():
    sizes = {40: 1, 20: 1, 10: 1, 1: 5}  # three videos and five stills
    assert frames_per_group_cap(sizes, 45) == 15  # 15 + 15 + 10 + 5 = 45; 16 would make 47
    assert frames_per_group_cap(sizes, 75) == 40  # everything fits
    assert frames_per_group_cap(sizes, 8) == 1
    assert frames_per_group_cap(sizes, 7) == 0  # fewer rows than groups: groups must be sampled


def test_gather_is_float32_in_uri_order_whatever_the_partitioning(spark, tmp_path):
    videos = [("car", "cam1", "v1", 7), ("car", "cam2", None, 1), ("person", "cam1", "v2", 5), ("person", "cam2", None, 1), ("car", "cam2", "v3", 4)]
    df = write_store(spark, tmp_path / "features", videos)
    data = gather_labeled(df, max_rows=1000, seed=3)
    assert data.X.dtype == np.float32 and data.X.flags["C_CONTIGUOUS"] and data.X.shape == (18, DIM)
    assert data.sample is None and data.sampled_from == 18 and data.classes == ["car", "person"]
    uri = {v: f"s3://b/{cam}/{vid}.mp4" if vid else f"s3://b/{cam}/still{v}.jpg" for v, (_, cam, vid, _) in enumerate(videos)}
    expected = sorted((uri[v], i, v) for v, (*_, frames) in enumerate(videos) for i in range(frames))
    assert kept(data) == [(v, i) for _, i, v in expected]  # rows sorted by (uri, frame_idx), features aligned with them
    labels = [videos[v][0] for _, _, v in expected]
    assert [data.classes[c] for c in data.y] == labels
    group = {v: f"{cam}/{vid}" if vid else uri[v] for v, (_, cam, vid, _) in enumerate(videos)}
    assert list(data.groups) == [group[v] for _, _, v in expected]
    for other in (df.repartition(5), df.coalesce(1), df.orderBy("frame_idx")):
        again = gather_labeled(other, max_rows=1000, seed=3)
        np.testing.assert_array_equal(again.X, data.X)
        np.testing.assert_array_equal(again.y, data.y)
        assert list(again.groups) == list(data.groups)


def test_sample_above_max_rows_keeps_every_video_evenly_thinned(spark, tmp_path):
    videos = [("car", "cam1", "long", 40), ("car", "cam1", "mid", 20), ("car", "cam2", "short", 10)]
    videos += [("car", "cam2", None, 1)] * 5 + [("person", "cam1", "p1", 30), ("person", "cam2", "p2", 30)]
    df = write_store(spark, tmp_path / "features", videos)
    data = gather_labeled(df, max_rows=80, seed=7)
    # 135 rows, 75 car and 60 person: quotas 44 and 36 (80 in the same proportions)
    assert data.sampled_from == 135
    assert data.sample is not None and data.sample["frames_per_group"] == {"car": 14, "person": 18}
    per_class = Counter(data.classes[c] for c in data.y)
    assert per_class == {"car": 14 + 14 + 10 + 5, "person": 36} == data.sample["per_class"]
    assert len(data.y) <= 80
    frames: dict[int, list[int]] = {}
    for v, i in kept(data):
        frames.setdefault(v, []).append(i)
    assert set(frames) == set(range(len(videos)))  # no video left out
    for v, idx in frames.items():
        size = videos[v][3]
        cap = data.sample["frames_per_group"][videos[v][0]]
        assert len(idx) == min(size, cap)
        gaps = set(np.diff(sorted(idx)).tolist())
        assert gaps <= {size // len(idx), math.ceil(size / len(idx))}  # evenly spaced over the video
    for other in (df.repartition(3), df.coalesce(1)):
        again = gather_labeled(other, max_rows=80, seed=7)
        np.testing.assert_array_equal(again.X, data.X)  # the same frames, in the same order
    reseeded = gather_labeled(df, max_rows=80, seed=8)
    assert Counter(v for v, _ in kept(reseeded)) == Counter(v for v, _ in kept(data))  # same shares per video...
    assert kept(reseeded) != kept(data)  # ...other frames


def test_more_videos_than_rows_keeps_one_frame_of_seeded_videos(spark, tmp_path):
    videos = [("car", "cam1", f"c{n}", 3) for n in range(12)] + [("person", "cam2", None, 1) for _ in range(36)]
    df = write_store(spark, tmp_path / "features", videos)
    data = gather_labeled(df, max_rows=10, seed=1)
    assert len(data.y) == 10 and Counter(data.y.tolist()) == {0: 5, 1: 5}
    assert len(set(data.groups)) == 10  # one frame from each of 5 videos per class
    assert data.sample is not None and data.sample["groups_sampled"] == {"car": True, "person": True}
    again = gather_labeled(df.repartition(4), max_rows=10, seed=1)
    assert kept(again) == kept(data)


def test_a_class_too_small_for_a_share_of_max_rows(spark, tmp_path):
    videos = [("car", "cam1", f"c{n}", 1) for n in range(30)] + [("person", "cam1", "p", 1)]
    df = write_store(spark, tmp_path / "features", videos)
    with pytest.raises(TrainingDataError, match=r"after sampling to train.max_rows only \['car'\] remain"):
        gather_labeled(df, max_rows=10, seed=1)
    videos += [("bike", "cam2", f"b{n}", 1) for n in range(30)]
    data = gather_labeled(write_store(spark, tmp_path / "more", videos), max_rows=10, seed=1)
    assert data.classes == ["bike", "car"] and len(data.y) == 10


def test_features_of_several_lengths_refused(spark, tmp_path):
    rows = [(f"s3://b/{n}.jpg", "e", "cam", None, 0, T0, date(2026, 11, 20), "ab"[n % 2], [0.5] * (4 if n else 5), "f", T0, None, None, None) for n in range(6)]
    write_partitioned(spark.createDataFrame(rows, schema=FEATURES_SCHEMA), str(tmp_path / "features"))
    with pytest.raises(TrainingDataError, match=r"\[4, 5\] values per row"):
        gather_labeled(read_table(spark, str(tmp_path / "features"), FEATURES_SCHEMA), max_rows=100, seed=0)


def test_large_arrow_string_types(spark, tmp_path):
    df = write_store(spark, tmp_path / "features", [("car", "cam1", "v1", 3), ("person", "cam1", "v2", 3)])
    expected = gather_labeled(df, max_rows=100, seed=0)
    spark.conf.set("spark.sql.execution.arrow.useLargeVarTypes", "true")
    try:
        data = gather_labeled(df, max_rows=100, seed=0)
    finally:
        spark.conf.unset("spark.sql.execution.arrow.useLargeVarTypes")
    np.testing.assert_array_equal(data.X, expected.X)
    assert list(data.groups) == list(expected.groups)
