"""Archive semantics that upload accidents cannot change: seeded randomized nights against from-scratch runs.

An S3 archive (the local S3 server: a re-upload of the same bytes keeps its ETag and takes a new
last-modified time, as on AWS) holds frame folders without times in their keys, video files and
motion stills named by time around midnight. Each night applies a random mix of mutations (frames
added at the end or in the middle of a folder, new folders, stills past midnight and inside an
event, videos added and replaced, re-uploads of unchanged bytes, replacements, deletions), runs the
nightly job with ``--prune``, then a from-scratch run over the same archive into a fresh output,
and compares every row of features, frame predictions and video predictions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers import prob_matrix, train_model
from vidspark.cli import main
from vidspark.synthetic import encode_video, jpeg_bytes, scene

pytestmark = pytest.mark.slow

SEED = 20261122
NIGHTS = 6  # the first fills the archive; the next five mutate it
MUTATIONS_PER_NIGHT = 7
COMMON = [
    "--set", "featurizer.weights=random", "--set", "featurizer.image_size=64", "--set", "featurizer.batch_size=1",
    "--set", "train.num_boost_round=30", "--set", "video.every_n_frames=2",
]  # fmt: skip
NIGHTLY = ["--set", "events.gap_seconds=30", "--window", "3"]  # motion stills grouped into events
LAYOUT = "{camera_id}/{video_id}/** | {camera_id}/{ts}"
MIDNIGHT = datetime(2026, 11, 22, tzinfo=timezone.utc)
KINDS = ("folder_append", "folder_insert", "folder_new", "still_add", "video_add", "video_replace", "replace", "reupload", "delete")


@dataclass
class Archive:
    """The archive's objects as the test wrote them: key -> bytes (what a re-upload sends again)."""

    client: object
    bucket: str
    rng: np.random.Generator
    objects: dict[str, bytes] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=f"archive/{key}", Body=data)
        self.objects[key] = data

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=f"archive/{key}")
        del self.objects[key]

    def still(self, size: tuple[int, int] = (64, 48)) -> bytes:
        return jpeg_bytes(scene(str(self.rng.choice(["car", "person"])), self.rng, size=size, phase=float(self.rng.uniform(0, 6.28))))

    def video(self) -> bytes:
        label = str(self.rng.choice(["car", "person"]))
        return encode_video([scene(label, self.rng, size=(64, 48), phase=i / 3) for i in range(8)], fps=4, gop=4)

    def folders(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for key in self.objects:
            if key.startswith("cam1/"):
                out.setdefault(key.rsplit("/", 1)[0], []).append(key)
        return out

    def keys(self, prefix: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))

    def around_midnight(self, spread_s: int = 150) -> datetime:
        return MIDNIGHT + timedelta(seconds=int(self.rng.integers(-spread_s, spread_s)))

    def mutate(self, kind: str) -> None:
        folders = self.folders()
        if kind == "folder_append" and folders:
            folder = sorted(folders)[self.rng.integers(len(folders))]
            n = len(folders[folder])
            self.put(f"{folder}/f{n + 100:03d}.jpg", self.still())
        elif kind == "folder_insert" and folders:
            folder = sorted(folders)[self.rng.integers(len(folders))]
            frame = sorted(folders[folder])[self.rng.integers(len(folders[folder]))]
            self.put(frame.replace(".jpg", f"{'abcdefgh'[self.rng.integers(8)]}.jpg"), self.still())  # natural sort: f004a after f004
        elif kind == "folder_new" or kind in ("folder_append", "folder_insert"):
            folder = f"cam1/evt{len(folders) + 1:02d}"
            for i in range(int(self.rng.integers(3, 6))):
                self.put(f"{folder}/f{i:03d}.jpg", self.still())
        elif kind == "still_add":
            self.put(f"cam3/{self.around_midnight():%Y%m%dT%H%M%S}.jpg", self.still())
        elif kind == "video_add":
            self.put(f"cam2/{self.around_midnight(20):%Y%m%dT%H%M%S}.mp4", self.video())
        elif kind == "video_replace" and self.keys("cam2/"):
            videos = self.keys("cam2/")
            self.put(videos[self.rng.integers(len(videos))], self.video())
        elif kind in ("replace", "reupload", "delete", "video_replace"):
            keys = sorted(self.objects)
            key = keys[self.rng.integers(len(keys))]
            if kind == "delete":
                self.delete(key)
            elif kind == "reupload":
                self.put(key, self.objects[key])  # same bytes: same ETag, a new last-modified time
            else:
                self.put(key, self.video() if key.endswith(".mp4") else self.still())
            kind = f"{kind} {key}"
        self.log.append(kind)


@pytest.fixture(scope="module")
def model_dir(spark, tmp_path_factory) -> Path:
    return train_model(spark, tmp_path_factory.mktemp("nights-model"), COMMON, per_class=12, seed=3, size=(64, 48), folds=3)


def run(spark, input_uri: str, out: Path, model: Path, run_id: str, *extra: str) -> None:
    argv = ["run", "--input", input_uri, "--layout", LAYOUT, "--model", str(model), "--output", str(out), "--run-id", run_id, *COMMON, *NIGHTLY, *extra]
    assert main(argv, spark=spark) == 0, run_id


def table(spark, path: Path, key: list[str]) -> pd.DataFrame:
    return spark.read.parquet(str(path)).toPandas().sort_values(key).reset_index(drop=True)


def assert_same_tables(spark, night: Path, scratch: Path, label: str) -> None:
    feats = ["uri", "frame_idx"]
    a, b = table(spark, night / "features", feats), table(spark, scratch / "features", feats)
    cols = ["uri", "etag", "camera_id", "video_id", "frame_idx", "frame_ts", "date", "label", "object_ts", "dropped_frames", "featurizer"]
    pd.testing.assert_frame_equal(a[cols], b[cols], obj=f"{label} features")
    np.testing.assert_allclose(np.stack(a["features"]), np.stack(b["features"]), atol=1e-6, err_msg=f"{label} features")

    fa, fb = table(spark, night / "predictions" / "frames", feats), table(spark, scratch / "predictions" / "frames", feats)
    ident = ["uri", "camera_id", "video_id", "frame_idx", "frame_ts", "date", "predicted_label", "smoothed_label"]
    pd.testing.assert_frame_equal(fa[ident], fb[ident], obj=f"{label} frame predictions")
    for col in ("probabilities", "smoothed_probabilities"):
        np.testing.assert_allclose(prob_matrix(fa[col]), prob_matrix(fb[col]), atol=1e-6, err_msg=f"{label} {col}")

    vids = ["camera_id", "video_id"]
    va, vb = table(spark, night / "predictions" / "videos", vids), table(spark, scratch / "predictions" / "videos", vids)
    vcols = ["camera_id", "video_id", "date", "start_ts", "end_ts", "n_frames", "dropped_frames", "label", "raw_label_switches", "smoothed_label_switches"]
    pd.testing.assert_frame_equal(va[vcols], vb[vcols], obj=f"{label} video predictions")
    np.testing.assert_allclose(prob_matrix(va["mean_probabilities"]), prob_matrix(vb["mean_probabilities"]), atol=1e-6, err_msg=f"{label} video probabilities")


def test_randomized_nights_equal_a_from_scratch_run(spark, model_dir, s3_client, bucket, tmp_path):
    archive = Archive(s3_client, bucket, np.random.default_rng(SEED))
    for _ in range(2):
        archive.mutate("folder_new")
    for _ in range(4):
        archive.mutate("still_add")
    for _ in range(2):
        archive.mutate("video_add")
    input_uri, out = f"s3://{bucket}/archive", tmp_path / "nightly"
    # every kind twice, the rest drawn at random, in a seeded random order over the nights
    n_mutations = (NIGHTS - 1) * MUTATIONS_PER_NIGHT
    plan = [*KINDS, *KINDS, *archive.rng.choice(KINDS, size=n_mutations - 2 * len(KINDS))]
    plan = [str(k) for k in archive.rng.permutation(plan)]
    mutations = 0
    for night in range(1, NIGHTS + 1):
        if night > 1:
            for kind in plan[(night - 2) * MUTATIONS_PER_NIGHT : (night - 1) * MUTATIONS_PER_NIGHT]:
                archive.mutate(kind)
                mutations += 1
        run(spark, input_uri, out, model_dir, f"night{night}", "--prune")
        scratch = tmp_path / f"scratch{night}"
        run(spark, input_uri, scratch, model_dir, f"scratch{night}")
        assert_same_tables(spark, out, scratch, f"night {night} after {archive.log[-MUTATIONS_PER_NIGHT:]}")
    assert mutations >= 30 and {m.split()[0] for m in archive.log[-mutations:]} == set(KINDS), archive.log
    frames = table(spark, out / "features", ["uri", "frame_idx"])
    assert frames["date"].nunique() >= 2 and (frames["camera_id"] == "cam2").any()  # midnight crossed, videos present
