"""Which failures become errors rows and which fail the task: input problems vs bugs and exhaustion."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from vidspark import frames
from vidspark.config import FeaturizerConf, StorageConf
from vidspark.errors import raised_in_vidspark
from vidspark.feature_store import write_errors
from vidspark.synthetic import jpeg_bytes, scene


def _raise_from(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_bugs_of_vidspark_and_exhaustion_are_told_from_input_problems():
    assert raised_in_vidspark(_raise_from(MemoryError()))
    assert not raised_in_vidspark(_raise_from(TypeError("raised by a library on odd data")))  # innermost frame here, in tests/
    assert not raised_in_vidspark(_raise_from(ValueError("odd value")))
    with pytest.raises(AttributeError) as info:
        frames.nullable_ints_for_arrow(None)  # type: ignore[arg-type]  # innermost frame in vidspark/frames.py
    assert raised_in_vidspark(info.value)


def test_a_bug_in_image_loading_fails_the_task_and_bad_bytes_stay_rows(tmp_path):
    good = tmp_path / "a.jpg"
    good.write_bytes(jpeg_bytes(scene("car", np.random.default_rng(0), size=(64, 48))))
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    fconf = FeaturizerConf(weights="random", image_size=32)
    pixels, err = frames._load_one(str(good), None, fconf, StorageConf())
    assert err is None and pixels is not None and pixels.shape == (32, 32, 3)
    pixels, err = frames._load_one(str(bad), None, fconf, StorageConf())
    assert pixels is None and err is not None and err[0] == "decode"
    with pytest.raises(AttributeError):  # a conf that is not a conf: vidspark's own code breaks, the task must fail
        frames._load_one(str(good), None, None, StorageConf())  # type: ignore[arg-type]
    missing = frames._load_one(str(tmp_path / "gone.jpg"), None, fconf, StorageConf())
    assert missing[1] is not None and missing[1][0] == "fetch"


def test_a_failing_model_call_fails_the_task(monkeypatch):
    class Exhausted(RuntimeError):
        """What TensorFlow raises as ResourceExhaustedError on a GPU out of memory."""

    def call(*_args, **_kwargs):
        raise Exhausted("OOM when allocating tensor with shape [512,112,112,64] on /GPU:0")

    monkeypatch.setattr(frames, "cached_model", lambda *a, **k: object())
    monkeypatch.setattr(frames, "featurize_arrays", call)
    batch = [({"uri": "u", "frame_idx": 0}, np.zeros((32, 32, 3), np.uint8))]
    timing = {"model_s": 0.0, "frames": 0.0}
    with pytest.raises(Exhausted):
        frames._run_model(batch, [], FeaturizerConf(), StorageConf(), "fid", timing, 0.0)


def test_one_errors_row_per_object_takes_stage_and_type_from_the_same_row(spark, tmp_path):
    d = date(2026, 11, 20)
    rows = [
        ("s3://b/v.mp4", "decode", "AAA", "decode problem", "r1", "cam1", d),
        ("s3://b/v.mp4", "fetch", "ZZZ", "fetch problem", "r1", "cam1", d),
        ("s3://b/x.jpg", "decode", "DecodeError", "not an image", "r1", "cam2", d),
    ]
    df = spark.createDataFrame(rows, schema="uri string, stage string, error_type string, message string, run_id string, camera_id string, date date")
    objects = spark.createDataFrame([("s3://b/v.mp4", None)], "uri string, last_modified timestamp")
    counts = write_errors(df, str(tmp_path / "errors"), objects=objects, timezone="UTC", max_rows_per_file=100)
    got = {r["uri"]: (r["stage"], r["error_type"], r["camera_id"]) for r in spark.read.parquet(str(tmp_path / "errors")).collect()}
    assert got == {"s3://b/v.mp4": ("fetch", "ZZZ", "cam1"), "s3://b/x.jpg": ("decode", "DecodeError", "cam2")}
    assert counts == {"fetch": 1, "decode": 1}


def test_non_finite_features_become_rows_and_finite_ones_features(monkeypatch):
    feats = np.ones((3, 4), np.float32)
    feats[1, 2], feats[2, 0] = np.nan, np.inf
    monkeypatch.setattr(frames, "cached_model", lambda *a, **k: object())
    monkeypatch.setattr(frames, "featurize_arrays", lambda *a, **k: feats)
    batch = [({"uri": f"u{i}", "frame_idx": 0, "dropped_frames": None}, np.zeros((32, 32, 3), np.uint8)) for i in range(3)]
    out = frames._run_model(batch, [], FeaturizerConf(), StorageConf(), "fid", {"model_s": 0.0, "frames": 0.0}, 0.0)
    assert list(out["stage"]) == [None, "featurize", "featurize"]
    assert list(out["error_type"].fillna("")) == ["", "NonFiniteFeatures", "NonFiniteFeatures"]
    assert out["features"].iloc[0] is not None and out["features"].iloc[1] is None


def test_a_failed_weights_download_is_one_clear_error(monkeypatch, tmp_path):
    """A real download attempt, through a proxy address on loopback where nothing listens: the model hub is unreachable."""
    import socket

    from vidspark.backbone import build_model
    from vidspark.errors import WeightsUnavailable

    with socket.socket() as s:  # a port that was free a moment ago: connections to it are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{port}")
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))  # nothing cached
    with pytest.raises(WeightsUnavailable, match="could not download the ImageNet ResNet50 weights.*featurizer.weights.*(refused|Errno 111)"):
        build_model(FeaturizerConf(weights="imagenet", image_size=32))
