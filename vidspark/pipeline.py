"""Multi-step jobs: ``run`` (featurize + predict, the nightly job) and ``demo``."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from vidspark.backbone import featurizer_id
from vidspark.config import Conf, VideoConf
from vidspark.errors import ErrorFractionExceeded
from vidspark.featurize import featurize
from vidspark.inventory import Selection
from vidspark.model import check_compatible, load_model_dir
from vidspark.outputs import delete_path, join, list_names, read_text, write_json
from vidspark.predict import predict

logger = logging.getLogger(__name__)

DEMO_CAMERA_LAYOUT = "{camera_id}/{video_id}/** | {camera_id}/{ts}"


@dataclass(frozen=True)
class ErrorTally:
    """How many of a featurize's listed inputs failed, by stage, and where its errors table is."""

    listed: int
    error_count: int
    error_fraction: float
    errors_by_stage: dict[str, int]
    errors: str

    @classmethod
    def of(cls, featurize_summary: dict[str, Any]) -> ErrorTally:
        return cls(**{f.name: featurize_summary[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class RunSummary:
    """What the nightly ``run`` did: its featurize and predict summaries and the partitions an interrupted run left."""

    featurize: dict[str, Any]
    predict: dict[str, Any]
    recovered_partitions: list[dict[str, str]]

    @property
    def tally(self) -> ErrorTally:
        return ErrorTally.of(self.featurize)

    def record(self) -> dict[str, Any]:
        """The run record's ``summary`` (a dry run's has no tally: nothing was featurized)."""
        tally = {} if self.featurize.get("dry_run") else asdict(self.tally)
        return {"featurize": self.featurize, "predict": self.predict, "recovered_partitions": self.recovered_partitions, **tally}


@dataclass(frozen=True)
class DemoSummary:
    """What the demo did: the archive it made, the labeled featurize, the training and the nightly run."""

    archive: dict[str, Any]
    featurize_labeled: dict[str, Any]
    train: dict[str, Any]
    run: RunSummary
    output: str

    def record(self) -> dict[str, Any]:
        """The run record's ``summary``."""
        return {"archive": self.archive, "featurize_labeled": self.featurize_labeled, "train": self.train, "run": self.run.record(), "output": self.output}


def check_error_fraction(tally: ErrorTally, conf: Conf) -> None:
    """Raise when more inputs failed than ``job.max_error_fraction`` allows (outputs already written).

    Raises
    ------
    ErrorFractionExceeded
        With the counts per stage and where the errors table is.
    """
    if tally.error_fraction > conf.job.max_error_fraction:
        raise ErrorFractionExceeded(
            f"{tally.error_count} of {tally.listed} inputs failed ({tally.error_fraction:.1%} > job.max_error_fraction "
            f"{conf.job.max_error_fraction:.1%}); by stage: {tally.errors_by_stage}; see {tally.errors}"
        )


def run(
    spark: SparkSession,
    *,
    input_uri: str,
    model_dir: str,
    output: str,
    conf: Conf,
    run_id: str,
    window: int | None = None,
    full: bool = False,
    prune: bool = False,
    selection: Selection | None = None,
    inventory: str | None = None,
    dry_run: bool = False,
) -> RunSummary:
    """The nightly job: featurize what is new or changed under ``input_uri``, then re-predict the partitions it touched.

    The feature store ``output/features`` is incremental (see :func:`vidspark.featurize.featurize`).
    Before the feature store changes, the affected partitions are recorded in ``output/_state``;
    they are predicted and then cleared, so a run killed in between has them predicted by the next
    run even though it finds nothing new to featurize.
    """
    features_out = join(output, "features")
    model = load_model_dir(model_dir, spark=spark, storage=conf.storage)  # before any featurizing: a model that cannot predict these features ends the run now
    check_compatible(model, featurizers=[featurizer_id(conf.featurizer, conf.storage)], feature_dim=None)
    if dry_run:
        fs = featurize(spark, input_uri=input_uri, output=features_out, conf=conf, run_id=run_id, full=full, prune=prune, selection=selection, inventory=inventory, dry_run=True)
        return RunSummary(fs, {"dry_run": True, "model": model_dir, "model_id": model.model_id, "classes": model.classes}, [])
    state = join(output, "_state")
    pending: set[tuple[str, str]] = set()
    pending_files = [n for n in list_names(spark, state) if n.startswith("pending-") and n.endswith(".json")]
    for name in pending_files:
        pending |= {(c, d) for c, d in json.loads(read_text(spark, join(state, name)))["partitions"]}
    if pending:
        logger.warning("%d partition(s) left unpredicted by an interrupted run will be predicted now", len(pending))

    def record_pending(parts: list[tuple[str, str]]) -> None:
        # with what an earlier run of the same id left pending: a retried run id must not hide it
        write_json(spark, join(state, f"pending-{run_id}.json"), {"run_id": run_id, "partitions": [list(p) for p in sorted(pending | set(parts))]})

    featurize_summary = featurize(
        spark,
        input_uri=input_uri,
        output=features_out,
        conf=conf,
        run_id=run_id,
        errors_output=join(output, "errors"),
        full=full,
        prune=prune,
        selection=selection,
        inventory=inventory,
        on_partitions=record_pending,
    )
    parts = sorted(pending | {(p["camera_id"], p["date"]) for p in featurize_summary["partitions"]})
    predict_summary: dict[str, Any] = {}
    if parts:
        predict_summary = predict(spark, features=features_out, model_dir=model_dir, output=join(output, "predictions"), conf=conf, window=window, partitions=parts, run_id=run_id)
    for name in {*pending_files, f"pending-{run_id}.json"}:
        delete_path(spark, join(state, name))
    return RunSummary(featurize_summary, predict_summary, [{"camera_id": c, "date": d} for c, d in sorted(pending)])


def make_demo_archive(root: Path, *, classes: tuple[str, ...] | None = None, per_class: int = 40, seed: int = 0) -> dict[str, Any]:
    """Write the demo archive: a labeled set, two cameras of frame folders, and two broken objects (``classes``: default :data:`vidspark.synthetic.CLASSES`)."""
    from vidspark.synthetic import CLASSES, LocalSink, write_camera_archive, write_labeled_set, write_video_camera  # the demo's alone: Pillow, PyAV

    classes = classes or CLASSES
    labeled, cameras = root / "labeled", root / "cameras"
    for p in (labeled, cameras):
        if p.exists():
            shutil.rmtree(p)
    keys = write_labeled_set(LocalSink(labeled), classes=classes, per_class=per_class, seed=seed)
    truths = write_camera_archive(LocalSink(cameras), cameras=("cam1", "cam2"), videos_per_camera=3, frames_per_video=16, classes=classes, seed=seed + 1)
    # A third camera records H.264 MP4 files (cam3/<start time>.mp4), 8 s at 8 fps each.
    truths += write_video_camera(LocalSink(cameras), camera="cam3", videos=3, frames_per_video=64, fps=8, classes=classes, flicker=0.3, seed=seed + 2)
    # What a real archive holds too: an empty upload, a cut-off JPEG and a recording cut off mid-upload.
    # The first two become errors rows; the video gives the frames before the cut and one errors row.
    (cameras / "cam1" / "cam1-000" / "frame_99998.jpg").write_bytes(b"")
    good = (cameras / "cam1" / "cam1-000" / "frame_00000.jpg").read_bytes()
    (cameras / "cam2" / "cam2-000" / "frame_99999.jpg").write_bytes(good[: len(good) // 3])
    first_video = sorted((cameras / "cam3").glob("*.mp4"))[0].read_bytes()
    (cameras / "cam3" / "20261120T170000.mp4").write_bytes(first_video[: len(first_video) // 2])
    return {"labeled": str(labeled), "cameras": str(cameras), "labeled_objects": len(keys), "videos": len(truths)}


def demo(spark: SparkSession, *, workdir: str, conf: Conf, run_id: str) -> DemoSummary:
    """Generate a synthetic archive in ``workdir`` and run featurize -> train -> run on it."""
    from vidspark.train import train

    root = Path(workdir).resolve()
    archive = make_demo_archive(root / "archive")
    out = root / "output"
    labeled_conf = conf.replace("input", layout="{label}/**")
    train_features = featurize(spark, input_uri=archive["labeled"], output=str(out / "features"), conf=labeled_conf, run_id=run_id, errors_output=str(out / "errors-labeled"))
    train_summary = train(spark, features=str(out / "features"), model_dir=str(out / "model"), conf=conf)
    # Frame folders (cam1, cam2) and video files named by their start time (cam3), in one layout.
    camera_conf = conf.replace("input", layout=DEMO_CAMERA_LAYOUT)
    if conf.video == VideoConf():
        camera_conf = camera_conf.replace("video", every_n_frames=2)
    run_summary = run(spark, input_uri=archive["cameras"], model_dir=str(out / "model"), output=str(out), conf=camera_conf, run_id=run_id)
    return DemoSummary(archive, train_features, train_summary, run_summary, str(out))
