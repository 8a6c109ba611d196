"""`vidspark timeline` over a small predictions folder built inline."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pytest
from PIL import Image

from vidspark.cli import main
from vidspark.outputs import write_partitioned
from vidspark.predict import label_switches, rolling_mean
from vidspark.schemas import FRAME_PREDICTIONS_SCHEMA

CLASSES = ["car", "person"]
T0 = datetime(2026, 11, 20, 15, 0, tzinfo=timezone.utc)


def frames_rows(camera: str, video: str, n: int, seed: int, *, folder: bool = False) -> list[tuple]:
    """Prediction rows of one video; ``folder``: a frame folder, whose frames share one time and are ordered by index."""
    rng = np.random.default_rng(seed)
    p_car = np.where(rng.uniform(size=n) < 0.7, 0.9, 0.1)
    raw = np.stack([p_car, 1 - p_car], axis=1)
    sm = rolling_mean(raw, 8)
    rows = []
    for i in range(n):
        r, s = raw[i], sm[i]
        rows.append(
            (
                f"s3://b/{camera}/{video}/f{i}.jpg" if folder else f"s3://b/{camera}/{video}.mp4",
                "etag",
                camera,
                video,
                i,
                T0 if folder else T0 + timedelta(seconds=i / 4),
                date(2026, 11, 20),
                [float(x) for x in r],
                CLASSES[int(r.argmax())],
                float(r.max()),
                [float(x) for x in s],
                CLASSES[int(s.argmax())],
                float(s.max()),
                T0,
                0,
                None,
            )
        )
    return rows


@pytest.fixture(scope="module")
def predictions(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("pred")
    rows = frames_rows("cam1", "v1", 40, 1) + frames_rows("cam2", "v1", 10, 2) + frames_rows("cam2", "v2", 12, 3) + frames_rows("cam3", "folder", 12, 4, folder=True)
    write_partitioned(spark.createDataFrame(rows, schema=FRAME_PREDICTIONS_SCHEMA), str(root / "frames"))
    (root / "predict.json").write_text(json.dumps({"classes": CLASSES}))
    return root


def test_timeline_png_for_one_video(spark, predictions, tmp_path):
    out = tmp_path / "t.png"
    assert main(["timeline", "--predictions", str(predictions), "--video", "v2", "--out", str(out)], spark=spark) == 0
    img = Image.open(out)
    assert img.format == "PNG" and img.size[0] > 600 and img.size[1] > 300
    # the picture is not blank: lines in several colours
    arr = np.asarray(img.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(arr // 32, axis=0)) > 5


def test_ambiguous_or_unknown_video_is_a_clear_error(spark, predictions, tmp_path, capsys):
    out = tmp_path / "t.png"
    assert main(["timeline", "--predictions", str(predictions), "--video", "v1", "--out", str(out)], spark=spark) == 2
    assert "--camera" in capsys.readouterr().err
    assert main(["timeline", "--predictions", str(predictions), "--video", "v1", "--camera", "cam2", "--out", str(out)], spark=spark) == 0
    assert main(["timeline", "--predictions", str(predictions), "--video", "nope", "--out", str(out)], spark=spark) == 2
    err = capsys.readouterr().err
    assert "no frames of video 'nope'" in err and "v1" in err
    assert main(["timeline", "--predictions", str(tmp_path), "--video", "v1", "--out", str(out)], spark=spark) == 2
    assert "predict.json" in capsys.readouterr().err


def test_fixture_has_flicker_that_smoothing_reduces():
    rows = frames_rows("c", "v", 40, 1)
    assert label_switches(np.array([r[8] for r in rows])) > label_switches(np.array([r[11] for r in rows]))


def test_a_frame_folder_is_drawn_in_frame_order(spark, predictions, tmp_path):
    from vidspark.timeline import video_frames

    pdf, _ = video_frames(spark, str(predictions), video_id="folder")
    assert list(pdf["frame_idx"]) == list(range(12)) and pdf["frame_ts"].nunique() == 1  # f10 after f9, not after f1
    out = tmp_path / "folder.png"
    assert main(["timeline", "--predictions", str(predictions), "--video", "folder", "--out", str(out)], spark=spark) == 0
    with Image.open(out) as img:
        assert img.size[0] > 600
