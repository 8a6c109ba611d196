"""featurizer.skip_static: frames that hardly differ from the last featurized frame of their video reuse its features.

Run through the real featurize function (fetch, PyAV decode, the model, the rows it yields) on a
video made here with known static and moving stretches, and on a real fixed-camera recording
(OpenCV's ``vtest.avi``, Debian ``opencv-doc``, fetched by ``make test-data``).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from vidspark.config import FeaturizerConf, StorageConf, VideoConf
from vidspark.frames import make_featurize_fn, static_difference, thumbnail

REAL = Path(__file__).parent / "data" / "real"


def _work_row(path: Path) -> dict:
    ts = pd.Timestamp("2026-11-20 10:00:00")
    return {
        "uri": str(path),
        "etag": "e",
        "camera_id": "cam1",
        "video_id": path.stem,
        "frame_idx": 0,
        "frame_ts": ts,
        "date": ts.date(),
        "label": None,
        "size": path.stat().st_size,
        "key": path.name,
        "kind": "video",
        "seg_start": None,
        "seg_end": None,
        "first_idx": None,
        "prev_pts": None,
        "last_idx": None,
        "seg_no": None,
    }


def _featurize(path: Path, threshold: float, *, size: int = 224, max_frames: int | None = None) -> pd.DataFrame:
    fconf = FeaturizerConf(weights="random", image_size=size, batch_size=8, precision="float32", skip_static=threshold)
    fn = make_featurize_fn(fconf, StorageConf(), "fid", VideoConf(max_frames=max_frames))
    out = pd.concat(list(fn(iter([pd.DataFrame([_work_row(path)])]))), ignore_index=True)
    assert out["stage"].isna().all(), out[out["stage"].notna()]
    return out.sort_values("frame_idx").reset_index(drop=True)


@pytest.fixture(scope="module")
def static_video(tmp_path_factory) -> Path:
    """30 frames at 10 fps: 0-11 one scene with sensor noise, 12-17 a square moving across it, 18-29 the scene again.

    The noise (sigma 2 grey levels) and H.264's own loss are what a still camera records between events.
    """
    rng = np.random.default_rng(7)
    h, w = 120, 160
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 1.5) % 255, (yy * 2.0) % 255, ((xx + yy) * 0.7) % 255], axis=2).astype(np.float32)
    path = tmp_path_factory.mktemp("static") / "cam.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "18", "g": "10"}
        stream.time_base = Fraction(1, 10)
        for i in range(30):
            img = base + rng.normal(0, 2.0, base.shape)
            if 12 <= i < 18:  # a large object crosses the view
                x0 = 10 + (i - 12) * 22
                img[30:100, x0 : x0 + 50] = (240, 30, 30)
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def test_thumbnail_is_a_block_mean_in_0_1():
    px = np.zeros((64, 64, 3), np.uint8)
    px[:32] = 255
    t = thumbnail(px)
    assert t.shape == (32, 32, 3) and t.dtype == np.float32
    assert t[:16].min() == 1.0 and t[16:].max() == 0.0
    # One cell that changed is a difference; the whole-frame mean would hardly see it.
    moved = px.copy()
    moved[40:42, 10:12] = 255
    assert static_difference(thumbnail(px), thumbnail(moved)) == 1.0
    assert static_difference(thumbnail(px), thumbnail(px)) == 0.0
    assert thumbnail(np.full((224, 224, 3), 51, np.uint8)).shape == (28, 28, 3)


def test_static_stretches_reuse_features_and_motion_goes_through_the_model(static_video):
    every = _featurize(static_video, 0.0)
    skip = _featurize(static_video, 0.03)
    assert list(every["frame_idx"]) == list(skip["frame_idx"]) == list(range(30))  # no frame lost or doubled
    assert every["features_from_idx"].isna().all()
    source = skip["features_from_idx"]
    ran = set(skip.loc[source.isna(), "frame_idx"])
    # The first frame, and every frame of the moving object, went through the model.
    assert {0, *range(12, 18)} <= ran
    # The static stretches were skipped: most of frames 1-11 and 19-29 reuse an earlier frame of the stretch.
    reused = skip[source.notna()]
    assert len(reused) >= 18, ran
    assert (reused["features_from_idx"] < reused["frame_idx"]).all()
    assert set(reused["features_from_idx"]) <= ran  # always a frame that went through the model
    feats = {int(i): np.asarray(f) for i, f in zip(skip["frame_idx"], skip["features"], strict=True)}
    for idx, src in zip(reused["frame_idx"], reused["features_from_idx"], strict=True):
        np.testing.assert_array_equal(feats[int(idx)], feats[int(src)])  # the very same features
    # Frames that went through the model have the features an every-frame run gives them.
    every_feats = {int(i): np.asarray(f) for i, f in zip(every["frame_idx"], every["features"], strict=True)}
    for idx in ran:
        np.testing.assert_allclose(feats[idx], every_feats[idx], rtol=1e-4, atol=1e-5)
    # A reused frame's features are close to its own: the threshold only lets near-identical pictures through.
    rel = [np.linalg.norm(feats[int(i)] - every_feats[int(i)]) / np.linalg.norm(every_feats[int(i)]) for i in reused["frame_idx"]]
    assert max(rel) < 0.05, rel


def test_threshold_zero_and_stills_never_skip(static_video, tmp_path):
    from vidspark.synthetic import jpeg_bytes, scene

    out = _featurize(static_video, 0.0)
    assert out["features_from_idx"].isna().all()
    # The same still twice in one task (a frame folder): stills are never compared, each is featurized.
    img = jpeg_bytes(scene("car", np.random.default_rng(0), size=(64, 48)))
    rows = []
    for i in range(2):
        p = tmp_path / f"{i}.jpg"
        p.write_bytes(img)
        rows.append({**_work_row(p), "kind": "image", "video_id": "v", "frame_idx": i})
    fconf = FeaturizerConf(weights="random", image_size=64, batch_size=8, precision="float32", skip_static=0.5)
    got = pd.concat(list(make_featurize_fn(fconf, StorageConf(), "fid")(iter([pd.DataFrame(rows)]))))
    assert len(got) == 2 and got["features_from_idx"].isna().all() and got["stage"].isna().all()


@pytest.mark.skipif(not (REAL / "vtest.avi").is_file(), reason="make test-data fetches the real recordings")
def test_real_recordings_skip_only_where_nothing_moves():
    """Real fixed cameras: OpenCV's vtest.avi (people always walking across the square) and box.mp4 (a table, a hand now and then).

    Walking people change a few cells a lot between frames: none of vtest's frames may reuse features,
    though a whole-frame mean would call many of them static. box.mp4 has still moments: some frames
    reuse features, and those stay close to the features the model gives them.
    """
    walking = _featurize(REAL / "vtest.avi", 0.03, max_frames=24)
    assert len(walking) == 24 and walking["features_from_idx"].isna().all()
    every = _featurize(REAL / "box.mp4", 0.0, max_frames=48)
    skip = _featurize(REAL / "box.mp4", 0.03, max_frames=48)
    assert list(every["frame_idx"]) == list(skip["frame_idx"]) and len(skip) == 48
    reused = skip[skip["features_from_idx"].notna()]
    assert 0 < len(reused) < 48
    every_feats = {int(i): np.asarray(f) for i, f in zip(every["frame_idx"], every["features"], strict=True)}
    got = {int(i): np.asarray(f) for i, f in zip(skip["frame_idx"], skip["features"], strict=True)}
    rel = [np.linalg.norm(got[int(i)] - every_feats[int(i)]) / np.linalg.norm(every_feats[int(i)]) for i in reused["frame_idx"]]
    assert max(rel) < 0.05, rel
