"""Predict: broadcast booster -> per-frame probabilities -> rolling average per video -> Parquet.

The smoothed probabilities of frame i of a video (frames in :data:`~vidspark.schemas.PRESENTATION_ORDER`:
by object, time in it, index, then ``uri`` so ties are deterministic; never upload order) are the mean of the raw probability vectors of frames
``max(0, i-K+1) .. i``: the rolling-prediction-averaging recipe that stops label flicker.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import threading
import time
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from vidspark.backbone import task_cpus
from vidspark.config import Conf
from vidspark.errors import ConfigError, ModelError, StorageError
from vidspark.model import TrainedModel, check_compatible, load_model_dir, predict_proba
from vidspark.outputs import join, partition_path, read_table, recover_table, replace_partitions, table_exists
from vidspark.progress import Progress, group_task_counts, job_group
from vidspark.schemas import FEATURES_SCHEMA, FRAME_PREDICTIONS_SCHEMA, IDENTITY_FIELDS, PRESENTATION_ORDER, SOURCE_FIELDS, VIDEO_PREDICTIONS_SCHEMA, prob_columns, with_prob_arrays

logger = logging.getLogger(__name__)

_BOOSTERS: dict[str, Any] = {}
_LOCK = threading.Lock()
_IDENTITY = [f.name for f in IDENTITY_FIELDS]
_ORDER = PRESENTATION_ORDER
# Frame and video rows between the model and the writer: probabilities as arrays in the model's class order.
FRAME_ROWS = with_prob_arrays(FRAME_PREDICTIONS_SCHEMA)
VIDEO_ROWS = with_prob_arrays(VIDEO_PREDICTIONS_SCHEMA)


def rolling_mean(probabilities: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` rows (fewer at the start) for every row of an ``(n, c)`` array."""
    if window < 1:
        raise ConfigError(f"window must be >= 1, got {window}")
    p = np.asarray(probabilities, dtype=np.float64)
    if len(p) == 0 or window == 1:
        return p.copy()
    cs = np.cumsum(p, axis=0)
    out = cs.copy()
    out[window:] = cs[window:] - cs[:-window]
    counts = np.minimum(np.arange(1, len(p) + 1), window)[:, None]
    return out / counts


def label_switches(labels: np.ndarray) -> int:
    """How many times the label changes from one frame to the next."""
    labels = np.asarray(labels)
    return int((labels[1:] != labels[:-1]).sum()) if len(labels) > 1 else 0


def import_lightgbm() -> Any:
    """``lightgbm``, imported without scikit-learn where nothing imported it yet (a Python worker that only predicts).

    LightGBM imports scikit-learn (and through it SciPy's statistics) when it is installed, only for its
    scikit-learn estimators: 2 of the 2.5 s its import takes in a fresh worker. ``Booster`` does not use
    them. A ``None`` entry in ``sys.modules`` is how Python marks a module as unavailable; it is removed
    again at once, so a later ``import sklearn`` in the same process works as usual.
    """
    if "lightgbm" in sys.modules or "sklearn" in sys.modules:
        import lightgbm

        return lightgbm
    with _LOCK:
        sys.modules["sklearn"] = None  # type: ignore[assignment]
        try:
            import lightgbm
        finally:
            if sys.modules.get("sklearn", 0) is None:
                del sys.modules["sklearn"]
    return lightgbm


def _booster_for(model_str: str) -> Any:
    key = hashlib.sha256(model_str.encode("utf-8")).hexdigest()
    booster = _BOOSTERS.get(key)
    if booster is None:
        lgb = import_lightgbm()
        with _LOCK:
            booster = _BOOSTERS.get(key)
            if booster is None:
                try:
                    booster = _BOOSTERS[key] = lgb.Booster(model_str=model_str)
                except Exception as exc:  # LightGBMError: a model this worker's LightGBM cannot parse
                    raise ModelError(f"LightGBM {lgb.__version__} on this executor cannot read the model: {exc}") from exc
    return booster


def with_probabilities(features_df: DataFrame, model_bc: Any, *, n_classes: int, feature_dim: int, frames_done: Any | None = None, model: TrainedModel | None = None) -> DataFrame:
    """Add ``probabilities`` (per-class, model class order) with a pandas UDF over Arrow batches.

    ``model_bc`` is a broadcast of the LightGBM model text; each Python worker parses it once.
    ``frames_done``: an accumulator of the frames predicted (the progress line reads it).
    ``model``: check each batch's ``featurizer`` column and feature dimension against it
    (:func:`~vidspark.model.check_compatible`, a :class:`~vidspark.errors.ModelError` that ends the job
    before anything is swapped in), so no Spark job of its own reads the features first.
    """
    check = TrainedModel(model_str="", meta=dict(model.meta)) if model is not None else None  # the metadata alone travels

    def proba(features: pd.Series, featurizers: pd.Series | None) -> pd.Series:
        if len(features) == 0:
            return pd.Series([], dtype=object)
        X = np.stack(features.to_numpy()).astype(np.float32, copy=False)
        if check is not None and featurizers is not None:
            check_compatible(check, featurizers=list(set(featurizers)), feature_dim=X.shape[1])
        elif X.shape[1] != feature_dim:
            raise ModelError(f"the model expects {feature_dim} features per frame but these features have {X.shape[1]}")
        proba = predict_proba(_booster_for(model_bc.value), X, n_classes, num_threads=task_cpus() or 1)
        if frames_done is not None:
            frames_done.add(len(X))
        return pd.Series(list(proba))

    if check is None:

        @F.pandas_udf(T.ArrayType(T.DoubleType(), False))  # type: ignore[call-overload]
        def proba_udf(features: pd.Series) -> pd.Series:
            return proba(features, None)

        return features_df.withColumn("probabilities", proba_udf(F.col("features")))

    @F.pandas_udf(T.ArrayType(T.DoubleType(), False))  # type: ignore[call-overload]
    def checked_proba_udf(features: pd.Series, featurizers: pd.Series) -> pd.Series:
        return proba(features, featurizers)

    return features_df.withColumn("probabilities", checked_proba_udf(F.col("features"), F.col("featurizer")))


def _label_columns(prob: Column, classes: list[str], label_col: str, value_col: str) -> dict[str, Column]:
    """The best class of a probability array and its probability, as columns for ``withColumns``."""
    classes_arr = F.array(*[F.lit(c) for c in classes])
    best = F.array_max(prob)
    # array_position is 1-based and returns the first maximum, as numpy's argmax does (called by name: PySpark 3.5's takes only a literal).
    return {value_col: best, label_col: F.element_at(classes_arr, F.call_function("array_position", prob, best).cast("int"))}


def make_smoother(classes: list[str], window: int) -> Any:
    """``applyInPandas`` function smoothing one video's frames."""
    class_arr = np.asarray(classes, dtype=object)

    def smooth(pdf: pd.DataFrame) -> pd.DataFrame:
        pdf = pdf.sort_values(_ORDER, kind="stable").reset_index(drop=True)
        raw = np.stack(pdf["probabilities"].to_numpy()) if len(pdf) else np.zeros((0, len(classes)))
        sm = rolling_mean(raw, window)
        raw_idx, sm_idx = raw.argmax(axis=1), sm.argmax(axis=1)
        pdf["predicted_label"] = class_arr[raw_idx]
        pdf["predicted_prob"] = raw[np.arange(len(raw)), raw_idx]
        pdf["smoothed_probabilities"] = list(sm)
        pdf["smoothed_label"] = class_arr[sm_idx]
        pdf["smoothed_prob"] = sm[np.arange(len(sm)), sm_idx]
        return pdf[FRAME_ROWS.fieldNames()]

    return smooth


def with_smoothing(frames_df: DataFrame, *, classes: list[str], window: int) -> DataFrame:
    """Add labels and the rolling average per ``(camera_id, video_id)`` (``FRAME_ROWS``: probabilities as arrays).

    Frames with no ``video_id`` (single images) are their own sequence: smoothed equals raw.
    """
    base_cols = [c for c in FRAME_ROWS.fieldNames() if c not in ("predicted_label", "predicted_prob", "smoothed_probabilities", "smoothed_label", "smoothed_prob")]
    for f in SOURCE_FIELDS:  # frames read from a store older than these columns
        if f.name not in frames_df.columns:
            frames_df = frames_df.withColumn(f.name, F.lit(None).cast(f.dataType))
    df = frames_df.select(*base_cols)
    videos = df.where(F.col("video_id").isNotNull())
    singles = df.where(F.col("video_id").isNull())
    smoothed_videos = videos.groupBy("camera_id", "video_id").applyInPandas(make_smoother(classes, window), schema=FRAME_ROWS)
    raw = F.col("probabilities")  # a single image's smoothed probabilities are its raw ones
    labels = {**_label_columns(raw, classes, "predicted_label", "predicted_prob"), "smoothed_probabilities": raw, **_label_columns(raw, classes, "smoothed_label", "smoothed_prob")}
    return smoothed_videos.unionByName(singles.withColumns(labels).select(*FRAME_ROWS.fieldNames()))


def with_class_maps(df: DataFrame, *, classes: list[str], schema: T.StructType) -> DataFrame:
    """``schema``'s rows with each probability array turned into a class name -> probability map (the written form)."""
    names = F.array(*[F.lit(c) for c in classes])
    maps = set(prob_columns(schema))
    return df.select(*[F.map_from_arrays(names, F.col(c)).alias(c) if c in maps else F.col(c) for c in schema.fieldNames()])


def make_video_summary(classes: list[str]) -> Any:
    """``applyInPandas`` function: one row per video from its smoothed frames."""
    class_arr = np.asarray(classes, dtype=object)

    def summarize(pdf: pd.DataFrame) -> pd.DataFrame:
        pdf = pdf.sort_values(_ORDER, kind="stable")
        mean = np.stack(pdf["probabilities"].to_numpy()).mean(axis=0)
        best = int(mean.argmax())
        return pd.DataFrame(
            {
                "camera_id": [pdf["camera_id"].iloc[0]],
                "video_id": [pdf["video_id"].iloc[0]],
                "date": [pdf["date"].iloc[0]],
                "start_ts": [pdf["frame_ts"].min()],
                "end_ts": [pdf["frame_ts"].max()],
                "n_frames": [len(pdf)],
                "dropped_frames": [int(pdf["dropped_frames"].fillna(0).sum())],
                "label": [class_arr[best]],
                "prob": [float(mean[best])],
                "mean_probabilities": [mean],
                "raw_label_switches": [label_switches(pdf["predicted_label"].to_numpy())],
                "smoothed_label_switches": [label_switches(pdf["smoothed_label"].to_numpy())],
                "model_id": [pdf["model_id"].iloc[0]],
                "run_id": [pdf["run_id"].iloc[0]],
            }
        )

    return summarize


def video_summaries(frames_df: DataFrame, *, classes: list[str]) -> DataFrame:
    """One row per video (``FRAME_ROWS`` with a ``video_id``): label from mean probabilities, flicker counts (``VIDEO_ROWS``)."""
    cols = ["camera_id", "video_id", "date", "object_ts", "frame_ts", "frame_idx", "uri", "dropped_frames", "probabilities", "predicted_label", "smoothed_label", "model_id", "run_id"]
    return frames_df.where(F.col("video_id").isNotNull()).select(*cols).groupBy("camera_id", "video_id").applyInPandas(make_video_summary(classes), schema=VIDEO_ROWS)


def predict_frames(spark: SparkSession, features_df: DataFrame, model: TrainedModel, *, window: int, run_id: str, frames_done: Any | None = None) -> DataFrame:
    """Features -> smoothed frame predictions (``FRAME_ROWS``: arrays in the model's class order).

    Every row carries the model id (SHA-256 of its ``model.txt``) and ``run_id``. Features of another
    featurizer or dimension than the model's fail the job with a :class:`~vidspark.errors.ModelError`.
    """
    model_bc = spark.sparkContext.broadcast(model.model_str)
    with_proba = with_probabilities(
        features_df.select(*_IDENTITY, *(f.name for f in SOURCE_FIELDS), "features", "featurizer"),
        model_bc,
        n_classes=len(model.classes),
        feature_dim=model.feature_dim,
        frames_done=frames_done,
        model=model,  # featurizer and dimension checked in the UDF: no Spark job reads the features before the one that predicts
    )
    with_proba = with_proba.drop("features", "featurizer").withColumns({"model_id": F.lit(model.model_id), "run_id": F.lit(run_id)})
    return with_smoothing(with_proba, classes=model.classes, window=window)


def _check_written_by_this_version(spark: SparkSession, table: str) -> None:
    """Fail with what to do when a predictions table holds rows of vidspark 0.1 (probabilities as bare arrays, no model id)."""
    stored = spark.read.parquet(table).schema
    if "model_id" not in stored.fieldNames() or isinstance(stored["mean_probabilities"].dataType, T.ArrayType):
        raise StorageError(
            f"{table!r} was written by vidspark 0.1 (probabilities without class names or model id); move its predictions/ folder aside "
            "and run predict again without partitions (`vidspark predict`), which writes every frame in the new format"
        )


_PARTS_SCHEMA = T.StructType([T.StructField("camera_id", T.StringType()), T.StructField("date", T.DateType())])


def _parts_df(spark: SparkSession, partitions: list[tuple[str, str]]) -> DataFrame:
    return spark.createDataFrame([(c, date.fromisoformat(d)) for c, d in partitions], schema=_PARTS_SCHEMA)


def touched_videos(features_df: DataFrame, parts_df: DataFrame, extra_videos: DataFrame | None = None) -> DataFrame:
    """``camera_id, video_id`` of the videos with a frame in the partitions (plus ``extra_videos``)."""
    in_parts = features_df.join(F.broadcast(parts_df), ["camera_id", "date"], "left_semi")
    touched = in_parts.where(F.col("video_id").isNotNull()).select("camera_id", "video_id")
    if extra_videos is not None:
        touched = touched.unionByName(extra_videos.select("camera_id", "video_id"))
    return touched.distinct()


def frames_with_context(features_df: DataFrame, parts_df: DataFrame, touched: DataFrame) -> DataFrame:
    """Rows of the given partitions plus every frame (any date) of the ``touched`` videos.

    The rolling average of a frame uses the frames before it in its video, which may lie in an
    earlier day's partition featurized on an earlier night.
    """
    in_parts = features_df.join(F.broadcast(parts_df), ["camera_id", "date"], "left_semi")
    videos = features_df.where(F.col("video_id").isNotNull()).join(touched, ["camera_id", "video_id"], "left_semi")
    return videos.unionByName(in_parts.where(F.col("video_id").isNull()))


def predict(
    spark: SparkSession,
    *,
    features: str,
    model_dir: str,
    output: str,
    conf: Conf,
    window: int | None = None,
    features_df: DataFrame | None = None,
    partitions: list[tuple[str, str]] | None = None,
    run_id: str = "predict",
    dry_run: bool = False,
) -> dict[str, Any]:
    """Predict frames of ``features`` and write ``output/frames`` and ``output/videos``.

    ``dry_run``: load and check the model against the features, count the frames, write nothing.

    With ``partitions`` (``(camera_id, date)`` pairs), only those partitions of ``frames/`` are
    rewritten, from their frames and the earlier frames of the same videos; the ``videos/`` rows of
    every video with a frame there are recomputed from all its frames and merged into the table.
    Without, every frame of ``features`` is predicted. Writes are crash-safe partition swaps.

    Raises
    ------
    ModelError
        If the model directory is damaged or does not match the features.
    """
    window = window or conf.predict.window
    if window < 1:
        raise ConfigError(f"--window must be >= 1, got {window}")
    t0 = time.perf_counter()
    model = load_model_dir(model_dir, spark=spark, storage=conf.storage)
    frames_out, videos_out = join(output, "frames"), join(output, "videos")
    for table in (features, frames_out, videos_out) if not dry_run else ():  # a swap a killed run left half done, before any read
        recover_table(spark, table)
    if features_df is None:
        features_df = read_table(spark, features, FEATURES_SCHEMA)
    if dry_run:
        featurizers = [r[0] for r in features_df.select("featurizer").distinct().collect()]
        check_compatible(model, featurizers=featurizers, feature_dim=None)
        n = features_df.count()
        logger.info("dry run: would predict %d frames with model %s (classes %s)", n, model_dir, model.classes)
        return {"dry_run": True, "features": features, "model": model_dir, "model_id": model.model_id, "classes": model.classes, "window": window, "would_predict_frames": n}
    group = job_group(spark, f"vidspark-predict-{run_id}", "vidspark predict")
    frames_done = spark.sparkContext.accumulator(0)
    counts = lambda: {**group_task_counts(spark, group.group), "frames": float(frames_done.value)}  # noqa: E731 - read by the progress thread
    with group, Progress("predict", every=conf.job.progress_seconds, counts=counts):
        return _predict(
            spark, features=features, model=model, model_dir=model_dir, output=output, window=window, features_df=features_df, partitions=partitions, run_id=run_id, t0=t0, frames_done=frames_done
        )


def _predict(
    spark: SparkSession,
    *,
    features: str,
    model: TrainedModel,
    model_dir: str,
    output: str,
    window: int,
    features_df: DataFrame,
    partitions: list[tuple[str, str]] | None,
    run_id: str,
    t0: float,
    frames_done: Any,
) -> dict[str, Any]:
    frames_out, videos_out = join(output, "frames"), join(output, "videos")
    parts_df = _parts_df(spark, partitions) if partitions is not None else None
    old_videos = read_table(spark, videos_out, VIDEO_PREDICTIONS_SCHEMA) if parts_df is not None and table_exists(spark, videos_out) else None
    if old_videos is not None:
        _check_written_by_this_version(spark, videos_out)
    touched = None
    if parts_df is not None:
        # videos with a frame in the partitions, and those whose summary row lives there (all frames pruned, or moved)
        in_part_rows = old_videos.join(F.broadcast(parts_df), ["camera_id", "date"], "left_semi") if old_videos is not None else None
        touched = touched_videos(features_df, parts_df, in_part_rows).persist(StorageLevel.MEMORY_AND_DISK)
    input_df = frames_with_context(features_df, parts_df, touched) if parts_df is not None and touched is not None else features_df
    frames_df = predict_frames(spark, input_df, model, window=window, run_id=run_id, frames_done=frames_done).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        frames_write = frames_df.join(F.broadcast(parts_df), ["camera_id", "date"], "left_semi") if parts_df is not None else frames_df
        scope = [partition_path(c, d) for c, d in partitions] if partitions is not None else None
        # The counts of the summary are observed in the writes themselves: no Spark job of their own.
        frames_seen = Observation()
        frames_rows = with_class_maps(frames_write, classes=model.classes, schema=FRAME_PREDICTIONS_SCHEMA)
        replace_partitions(spark, frames_rows, frames_out, run_id=run_id, scope=scope, before_write=lambda df: df.observe(frames_seen, F.count(F.lit(1)).alias("frames")))
        videos_df = video_summaries(frames_df, classes=model.classes).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            # _new: the rows recomputed now (the stats count them), not the rows kept from earlier runs
            videos_write, video_scope = with_class_maps(videos_df, classes=model.classes, schema=VIDEO_PREDICTIONS_SCHEMA).withColumn("_new", F.lit(True)), None
            if parts_df is not None and touched is not None:
                starts = {(r["camera_id"], r["date"].isoformat()) for r in videos_df.select("camera_id", "date").distinct().collect()}
                if old_videos is not None:  # where the touched videos' rows were: they move or go
                    old_rows = old_videos.join(touched, ["camera_id", "video_id"], "left_semi").select("camera_id", "date").distinct().collect()
                    starts |= {(r["camera_id"], r["date"].isoformat()) for r in old_rows}
                video_parts = sorted(set(partitions or []) | starts)
                video_scope = [partition_path(c, d) for c, d in video_parts]
                if old_videos is not None:
                    keep = old_videos.join(F.broadcast(_parts_df(spark, video_parts)), ["camera_id", "date"], "left_semi").join(touched, ["camera_id", "video_id"], "left_anti")
                    videos_write = videos_write.unionByName(keep.select(*VIDEO_PREDICTIONS_SCHEMA.fieldNames(), F.lit(False).alias("_new")))
            videos_seen = Observation()
            new = F.col("_new")
            counted = [F.sum(new.cast("long")).alias("videos"), F.sum(F.when(new, F.col("raw_label_switches"))).alias("raw"), F.sum(F.when(new, F.col("smoothed_label_switches"))).alias("smoothed")]
            observe_videos = lambda df: df.observe(videos_seen, *counted).drop("_new")  # noqa: E731
            replace_partitions(spark, videos_write.select(*VIDEO_PREDICTIONS_SCHEMA.fieldNames(), "_new"), videos_out, run_id=run_id, scope=video_scope, before_write=observe_videos)
            stats, n_frames = videos_seen.get, int(frames_seen.get.get("frames") or 0)
        finally:
            videos_df.unpersist()
    finally:
        frames_df.unpersist()
        if touched is not None:
            touched.unpersist()
    summary = {
        "features": features,
        "model": model_dir,
        "model_id": model.model_id,
        "classes": model.classes,
        "window": window,
        "frames": n_frames,
        "videos": int(stats["videos"] or 0) if stats else 0,
        "raw_label_switches": int(stats["raw"] or 0) if stats else 0,
        "smoothed_label_switches": int(stats["smoothed"] or 0) if stats else 0,
        "partitions": [{"camera_id": c, "date": d} for c, d in partitions] if partitions is not None else "all",
        "frames_output": frames_out,
        "videos_output": videos_out,
        "timings": {"predict_s": round(time.perf_counter() - t0, 3)},
    }
    logger.info(
        "predict done: %d frames, %d videos, label switches raw %d -> smoothed %d",
        n_frames,
        summary["videos"],
        summary["raw_label_switches"],
        summary["smoothed_label_switches"],
    )
    return summary
