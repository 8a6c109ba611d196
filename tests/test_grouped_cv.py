"""Cross-validation grouped by video, end to end: a labeled set of frame folders and video files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vidspark.cli import main
from vidspark.synthetic import LocalSink, encode_video, jpeg_bytes, scene

pytestmark = pytest.mark.slow


def test_no_video_sits_on_both_sides_of_any_fold(spark, tmp_path):
    rng = np.random.default_rng(5)
    sink = LocalSink(tmp_path / "labeled")
    videos = set()
    for label in ("car", "person"):
        for v in range(4):  # frame folders: many near-identical frames per video
            for i in range(5):
                sink.put(f"{label}/{label}-folder{v}/f{i:02d}.jpg", jpeg_bytes(scene(label, rng, size=(64, 48), phase=i / 4)))
            videos.add(f"unknown/{label}-folder{v}")
        for v in range(2):  # and video files, several sampled frames each
            sink.put(f"{label}/{label}-clip{v}.mp4", encode_video([scene(label, rng, size=(64, 48), phase=i / 4) for i in range(8)], fps=4, gop=4))
            videos.add(f"unknown/{label}-clip{v}")
    common = ["--set", "featurizer.weights=random", "--set", "featurizer.image_size=32", "--set", "video.every_n_frames=2", "--set", "train.num_boost_round=20"]
    layout = ["--layout", "{label}/{video_id}/** | {label}/{video_id}"]
    assert main(["featurize", "--input", str(tmp_path / "labeled"), "--output", str(tmp_path / "features"), *layout, *common], spark=spark) == 0
    assert main(["train", "--features", str(tmp_path / "features"), "--model", str(tmp_path / "model"), "--folds", "3", *common], spark=spark) == 0
    report = json.loads((tmp_path / "model" / "cv_report.json").read_text())
    held_out = [set(f["test_group_ids"]) for f in report["folds"]]
    assert len(held_out) == 3
    every = [g for fold in held_out for g in fold]
    assert len(every) == len(set(every)) == len(videos)  # each video held out by exactly one fold: never on both sides
    assert set(every) == videos
    assert all(f["train_rows"] > 0 and f["test_groups"] == len(f["test_group_ids"]) for f in report["folds"])
