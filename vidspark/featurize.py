"""Featurize: inventory (driver) -> fetch + decode + ResNet50 (executors) -> features/ and errors/.

One ``mapInPandas`` pass per partition fetches objects on a small thread pool, decodes them with
Pillow and runs the model on numpy batches, while the next batch's objects are already being
fetched. Encoded bytes never travel through Spark rows, so an object's size does not matter to
Spark, and executor memory is bounded by two model batches of decoded frames.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from vidspark.config import Conf, FeaturizerConf, StorageConf
from vidspark.featurizer import cached_model, featurize_arrays, featurizer_id
from vidspark.imaging import decode_image
from vidspark.layout import Layout, LayoutMismatch, natural_key
from vidspark.outputs import sibling, write_partitioned, write_table
from vidspark.schemas import ERRORS_SCHEMA, FEATURES_SCHEMA, FEATURIZE_RESULT_SCHEMA, INVENTORY_SCHEMA
from vidspark.storage import ObjectInfo, cached_s3_client, check_readable, list_objects, make_s3_client, parse_uri, read_object

logger = logging.getLogger(__name__)

UNKNOWN_CAMERA = "unknown"
_INVENTORY_COLUMNS = [f.name for f in INVENTORY_SCHEMA.fields]


@dataclass
class Inventory:
    """What the listing found: rows to featurize and keys that did not fit the layout."""

    rows: pd.DataFrame
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def listed(self) -> int:
        return len(self.rows) + len(self.errors)


def build_inventory(objects: Iterable[ObjectInfo], layout: Layout) -> Inventory:
    """Parse listed objects with the layout into inventory rows (pure Python, driver side).

    ``camera_id`` defaults to ``unknown``; ``frame_ts`` is the layout's ``{ts}`` or else the object's
    last-modified time; ``frame_idx`` is the layout's ``{frame_idx}`` or else the natural-sort rank
    of the key within its ``(camera_id, video_id)``, and 0 for images that belong to no video.
    """
    records: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for obj in objects:
        try:
            kf = layout.parse(obj.rel_key)
        except LayoutMismatch as exc:
            errors.append({"uri": obj.uri, "stage": "layout", "error_type": "LayoutMismatch", "message": str(exc)})
            continue
        ts = kf.ts or obj.last_modified
        records.append(
            {
                "uri": obj.uri,
                "etag": obj.etag,
                "camera_id": kf.camera_id or UNKNOWN_CAMERA,
                "video_id": kf.video_id,
                "frame_idx": kf.frame_idx,
                "frame_ts": ts,
                "date": ts.date(),
                "label": kf.label,
                "size": obj.size,
                "_key": obj.rel_key,
            }
        )
    if not records:
        return Inventory(pd.DataFrame({c: pd.Series(dtype=object) for c in _INVENTORY_COLUMNS}), errors)
    rows = pd.DataFrame.from_records(records)
    missing_idx = rows["frame_idx"].isna()
    if missing_idx.any():
        idx = pd.Series(0, index=rows.index, dtype="int64")
        in_video = missing_idx & rows["video_id"].notna()
        if in_video.any():
            sub = rows[in_video].copy()
            sub["_nk"] = sub["_key"].map(natural_key)
            sub = sub.sort_values(["camera_id", "video_id", "_nk"], kind="stable")
            idx.loc[sub.index] = sub.groupby(["camera_id", "video_id"], sort=False).cumcount().astype("int64")
        rows["frame_idx"] = rows["frame_idx"].where(~missing_idx, idx)
    rows["frame_idx"] = rows["frame_idx"].astype("int64")
    rows["frame_ts"] = pd.to_datetime(rows["frame_ts"], utc=True)
    if "ts" not in layout.fields and rows["video_id"].notna().any():
        # Without {ts}, a frame's time is its object's last-modified time, which follows upload order
        # (1 s resolution on S3, parallel uploads). Make it non-decreasing in frame order, so that the
        # (frame_ts, frame_idx) order is the file-name order the layout promises.
        vid = rows[rows["video_id"].notna()].sort_values(["camera_id", "video_id", "frame_idx"], kind="stable")
        rows.loc[vid.index, "frame_ts"] = vid.groupby(["camera_id", "video_id"], sort=False)["frame_ts"].cummax()
        rows["date"] = rows["frame_ts"].dt.date
    return Inventory(rows[_INVENTORY_COLUMNS].reset_index(drop=True), errors)


def _load_one(uri: str, etag: str | None, fconf: FeaturizerConf, sconf: StorageConf) -> tuple[np.ndarray | None, tuple[str, str, str] | None]:
    """Fetch and decode one object; a failure is returned as (stage, error_type, message)."""
    try:
        client = cached_s3_client(sconf) if uri.startswith("s3://") else None
        data = read_object(uri, client=client, etag=etag)
    except Exception as exc:  # any storage failure is a per-object errors row, never a task failure
        return None, ("fetch", type(exc).__name__, str(exc)[:2000])
    try:
        return decode_image(data, size=fconf.image_size, max_pixels=fconf.max_image_pixels), None
    except Exception as exc:  # DecodeError, or anything odd EXIF/TIFF/codec data raises: one object's row, never the job
        return None, ("decode", type(exc).__name__, str(exc)[:2000])


def _chunks(batches: Iterator[pd.DataFrame], size: int) -> Iterator[pd.DataFrame]:
    for pdf in batches:
        for start in range(0, len(pdf), size):
            yield pdf.iloc[start : start + size]


def make_featurize_fn(fconf: FeaturizerConf, sconf: StorageConf, fid: str) -> Any:
    """The ``mapInPandas`` function: inventory batches in, FEATURIZE_RESULT_SCHEMA batches out."""

    def featurize_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        with ThreadPoolExecutor(max_workers=fconf.fetch_threads, thread_name_prefix="vidspark-fetch") as pool:

            def submit(chunk: pd.DataFrame) -> list[Future[Any]]:
                return [pool.submit(_load_one, u, e, fconf, sconf) for u, e in zip(chunk["uri"], chunk["etag"], strict=True)]

            pending: tuple[pd.DataFrame, list[Future[Any]]] | None = None
            for chunk in _chunks(batches, fconf.batch_size):
                futures = submit(chunk)  # fetch/decode of this chunk overlaps the model run of the previous one
                if pending is not None:
                    yield _run_model(*pending, fconf, sconf, fid)
                pending = (chunk, futures)
            if pending is not None:
                yield _run_model(*pending, fconf, sconf, fid)

    return featurize_partition


def _run_model(chunk: pd.DataFrame, futures: list[Future[Any]], fconf: FeaturizerConf, sconf: StorageConf, fid: str) -> pd.DataFrame:
    results = [f.result() for f in futures]
    out = chunk.drop(columns=["size"]).reset_index(drop=True)
    n = len(out)
    features: list[Any] = [None] * n
    stage: list[Any] = [None] * n
    etype: list[Any] = [None] * n
    message: list[Any] = [None] * n
    ok = [i for i, (arr, _) in enumerate(results) if arr is not None]
    for i, (_, err) in enumerate(results):
        if err is not None:
            stage[i], etype[i], message[i] = err
    if ok:
        model = cached_model(fconf, sconf)  # a model that cannot load fails the task: no row could succeed
        try:
            feats = featurize_arrays(model, np.stack([results[i][0] for i in ok]), batch_size=fconf.batch_size)
            bad = ~np.isfinite(feats).all(axis=1)
            for j, i in enumerate(ok):
                if bad[j]:
                    stage[i], etype[i], message[i] = "featurize", "NonFiniteFeatures", "model output has NaN or inf"
                else:
                    features[i] = feats[j]
        except Exception as exc:  # TF raises OpError subclasses; a failed batch marks its rows, the task goes on
            for i in ok:
                stage[i], etype[i], message[i] = "featurize", type(exc).__name__, str(exc)[:2000]
    out["features"] = features
    out["featurizer"] = [fid if f is not None else None for f in features]
    out["stage"] = stage
    out["error_type"] = etype
    out["message"] = message
    return out


def with_features(inventory_df: DataFrame, *, fconf: FeaturizerConf, sconf: StorageConf, fid: str, num_tasks: int | None = None) -> DataFrame:
    """Featurize every inventory row; rows that fail carry ``stage``/``error_type``/``message``.

    Parameters
    ----------
    inventory_df
        Rows of ``INVENTORY_SCHEMA``.
    fconf, sconf
        Featurizer and storage settings (shipped to executors with the function).
    fid
        Featurizer id written with every features row.
    num_tasks
        Repartition to this many tasks first (None keeps the partitioning).

    Returns
    -------
    DataFrame
        ``FEATURIZE_RESULT_SCHEMA``.
    """
    df = inventory_df.repartition(num_tasks) if num_tasks else inventory_df
    return df.mapInPandas(make_featurize_fn(fconf, sconf, fid), schema=FEATURIZE_RESULT_SCHEMA)


def errors_frame(spark: SparkSession, rows: list[dict[str, Any]], run_id: str) -> DataFrame:
    """Driver-side error rows (layout mismatches) as an ``ERRORS_SCHEMA`` DataFrame."""
    data = [(r["uri"], r["stage"], r["error_type"], r["message"], run_id) for r in rows]
    return spark.createDataFrame(data, schema=ERRORS_SCHEMA)


def list_inventory(input_uri: str, conf: Conf, *, s3_client: Any | None = None) -> Inventory:
    """Check the input is readable, list it (the only driver-side pass) and parse keys."""
    location = parse_uri(input_uri)
    client = None
    if location.scheme == "s3":
        client = s3_client or make_s3_client(conf.storage)
    check_readable(location, client)
    layout = Layout(conf.input.layout, ts_format=conf.input.ts_format)
    return build_inventory(list_objects(location, client), layout)


def with_driver_endpoint(conf: Conf) -> Conf:
    """Pin the endpoint the driver found in its environment into the conf shipped to executors.

    ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``/``AWS_DEFAULT_REGION`` set where the driver runs are
    not in a YARN or Kubernetes executor's environment; credentials still come from each executor's
    own chain (instance or pod role).
    """
    s = conf.storage
    endpoint = s.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = s.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if endpoint == s.endpoint_url and region == s.region:
        return conf
    return conf.replace("storage", endpoint_url=endpoint, region=region)


def featurize(
    spark: SparkSession,
    *,
    input_uri: str,
    output: str,
    conf: Conf,
    run_id: str,
    errors_output: str | None = None,
    s3_client: Any | None = None,
) -> dict[str, Any]:
    """Featurize every object under ``input_uri`` into ``output`` (features/) and errors/.

    Returns
    -------
    dict
        Summary: counts (listed, featurized, errors by stage), error fraction, paths, timings.

    Raises
    ------
    StorageError
        If the input cannot be read (before any Spark work).
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    conf = with_driver_endpoint(conf)
    inventory = list_inventory(input_uri, conf, s3_client=s3_client)
    fid = featurizer_id(conf.featurizer, conf.storage, s3_client=s3_client)
    timings["list_s"] = time.perf_counter() - t0
    logger.info("listed %d objects under %s (%d do not fit the layout); featurizer %s", inventory.listed, input_uri, len(inventory.errors), fid)

    errors_output = errors_output or sibling(output, "errors")
    t1 = time.perf_counter()
    n_rows = len(inventory.rows)
    counts: dict[str, int] = {}
    errors_df = errors_frame(spark, inventory.errors, run_id)
    if n_rows:
        inventory_df = spark.createDataFrame(inventory.rows, schema=INVENTORY_SCHEMA)
        num_tasks = min(n_rows, max(spark.sparkContext.defaultParallelism, math.ceil(n_rows / conf.job.rows_per_task)))
        result_df = with_features(inventory_df, fconf=conf.featurizer, sconf=conf.storage, fid=fid, num_tasks=num_tasks)
        result_df = result_df.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            counts = {row["stage"] or "ok": int(row["count"]) for row in result_df.groupBy("stage").count().collect()}
            timings["featurize_s"] = time.perf_counter() - t1
            t2 = time.perf_counter()
            features_df = result_df.where(F.col("stage").isNull()).select(*FEATURES_SCHEMA.fieldNames())
            write_partitioned(features_df, output)
            exec_errors = result_df.where(F.col("stage").isNotNull()).select("uri", "stage", "error_type", "message", F.lit(run_id).alias("run_id"))
            errors_df = errors_df.unionByName(exec_errors)
            write_table(errors_df, errors_output)
            timings["write_s"] = time.perf_counter() - t2
        finally:
            result_df.unpersist()
    else:
        write_table(errors_df, errors_output)
    featurized = counts.pop("ok", 0)
    if inventory.errors:
        counts["layout"] = len(inventory.errors)
    n_errors = sum(counts.values())
    partitions = sorted({(c, d.isoformat()) for c, d in zip(inventory.rows["camera_id"], inventory.rows["date"], strict=True)})
    summary = {
        "input": input_uri,
        "features": output,
        "errors": errors_output,
        "featurizer": fid,
        "listed": inventory.listed,
        "featurized": featurized,
        "errors_by_stage": dict(sorted(counts.items())),
        "error_count": n_errors,
        "error_fraction": (n_errors / inventory.listed) if inventory.listed else 0.0,
        "partitions": [{"camera_id": c, "date": d} for c, d in partitions],
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    logger.info("featurize done: %d featurized, %d errors %s", featurized, n_errors, summary["errors_by_stage"])
    return summary
