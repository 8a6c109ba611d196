"""`vidspark timeline` over a small predictions folder built inline."""

from __future__ import annotations

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


def frames_rows(camera: str, video: str, n: int, seed: int, *, folder: bool = False, classes: list[str] = CLASSES, model_id: str = "m-a", start: int = 0) -> list[tuple]:
    """Prediction rows of one video; ``folder``: a frame folder, whose frames share one time and are ordered by index."""
    rng = np.random.default_rng(seed)
    p_car = np.where(rng.uniform(size=n) < 0.7, 0.9, 0.1)
    raw = np.stack([p_car, 1 - p_car, *([np.zeros(n)] * (len(classes) - 2))], axis=1)
    sm = rolling_mean(raw, 8)
    rows = []
    for i in range(start, start + n):
        r, s = raw[i - start], sm[i - start]
        rows.append(
            (
                f"s3://b/{camera}/{video}/f{i}.jpg" if folder else f"s3://b/{camera}/{video}.mp4",
                "etag",
                camera,
                video,
                i,
                T0 if folder else T0 + timedelta(seconds=i / 4),
                date(2026, 11, 20),
                dict(zip(classes, map(float, r), strict=True)),
                classes[int(r.argmax())],
                float(r.max()),
                dict(zip(classes, map(float, s), strict=True)),
                classes[int(s.argmax())],
                float(s.max()),
                T0,
                0,
                None,
                model_id,
                "run-1",
            )
        )
    return rows


@pytest.fixture(scope="module")
def predictions(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("pred")
    rows = frames_rows("cam1", "v1", 40, 1) + frames_rows("cam2", "v1", 10, 2) + frames_rows("cam2", "v2", 12, 3) + frames_rows("cam3", "folder", 12, 4, folder=True)
    # a video whose first frames an older model (car, person) predicted, and the rest a retrained one that added "bike"
    rows += frames_rows("cam4", "retrained", 10, 5) + frames_rows("cam4", "retrained", 10, 6, classes=[*CLASSES, "bike"], model_id="m-b", start=10)
    write_partitioned(spark.createDataFrame(rows, schema=FRAME_PREDICTIONS_SCHEMA), str(root / "frames"))
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
    assert "no frames/ table" in capsys.readouterr().err


def test_fixture_has_flicker_that_smoothing_reduces():
    rows = frames_rows("c", "v", 40, 1)
    assert label_switches(np.array([r[8] for r in rows])) > label_switches(np.array([r[11] for r in rows]))


def test_rows_of_two_models_decode_together(spark, predictions, tmp_path):
    """Each row names its classes: frames of the model before a retrain and after it decode side by side."""
    from vidspark.timeline import decode_probabilities, video_frames

    pdf, _ = video_frames(spark, str(predictions), video_id="retrained")
    assert set(pdf["model_id"]) == {"m-a", "m-b"}
    classes = decode_probabilities(pdf)
    assert classes == ["car", "person", "bike"]
    raw = np.stack(pdf["probabilities"].to_numpy())
    old = (pdf["model_id"] == "m-a").to_numpy()
    assert np.isnan(raw[old, 2]).all() and not np.isnan(raw[~old]).any()  # the old model had no "bike"
    assert np.allclose(raw[:, 0] + raw[:, 1], 1.0)  # car and person decode from either model's rows
    out = tmp_path / "retrained.png"
    assert main(["timeline", "--predictions", str(predictions), "--video", "retrained", "--out", str(out)], spark=spark) == 0
    assert Image.open(out).size[0] > 600


def test_a_frame_folder_is_drawn_in_frame_order(spark, predictions, tmp_path):
    from vidspark.timeline import video_frames

    pdf, _ = video_frames(spark, str(predictions), video_id="folder")
    assert list(pdf["frame_idx"]) == list(range(12)) and pdf["frame_ts"].nunique() == 1  # f10 after f9, not after f1
    out = tmp_path / "folder.png"
    assert main(["timeline", "--predictions", str(predictions), "--video", "folder", "--out", str(out)], spark=spark) == 0
    with Image.open(out) as img:
        assert img.size[0] > 600
