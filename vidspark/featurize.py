"""Featurize: inventory (driver) -> frames and features (executors) -> features/ and errors/.

This module only wires the stages: :mod:`vidspark.inventory` lists and parses the input,
:mod:`vidspark.feature_store` says what is already featurized, :mod:`vidspark.frames` is the
executor task, :mod:`vidspark.warmup` overlaps the model build with the listing, and the merged
partitions are swapped in by :mod:`vidspark.outputs`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from vidspark.backbone import featurizer_id
from vidspark.config import Conf
from vidspark.feature_store import StoreDiff, diff_with_store, errors_frame, existing_objects, merged_features, write_errors
from vidspark.frames import TaskStats, nullable_ints_for_arrow, with_features, with_segments
from vidspark.inventory import Selection, list_inventory
from vidspark.outputs import partition_path, recover_table, replace_partitions, sibling
from vidspark.schemas import FEATURES_SCHEMA, WORK_SCHEMA
from vidspark.storage import check_readable, make_s3_client, parse_uri
from vidspark.warmup import WarmUp, task_slots

logger = logging.getLogger(__name__)

_WORK_COLUMNS = WORK_SCHEMA.fieldNames()


def pin_driver_endpoint(conf: Conf) -> Conf:
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
    full: bool = False,
    prune: bool = False,
    selection: Selection | None = None,
    on_partitions: Callable[[list[tuple[str, str]]], None] | None = None,
) -> dict[str, Any]:
    """Featurize the objects under ``input_uri`` into the feature store ``output`` and errors/.

    Incremental: an object already in ``output`` with the same ETag, featurizer id and identity is skipped
    (unless ``full``); an object featurized again has its old rows replaced; with ``prune``, rows of
    objects no longer listed (within ``selection``'s cameras) are removed. Each affected
    ``(camera_id, date)`` partition is rewritten whole, crash-safely (staged, then swapped).

    Parameters
    ----------
    selection
        Only objects whose ``{ts}`` (else last-modified) and camera fall in it are considered.
    on_partitions
        Called with the affected partitions before the feature store changes (``run`` records them,
        so that a run killed after the swap still recomputes their predictions).

    Returns
    -------
    dict
        Summary: counts (listed, selected, skipped as unchanged, featurized objects and frames,
        pruned, errors by stage), error fraction, partitions, paths, timings.

    Raises
    ------
    StorageError
        If the input cannot be read (before any Spark work).
    """
    t0 = time.perf_counter()
    conf = pin_driver_endpoint(conf)
    location = parse_uri(input_uri)
    client = (s3_client or make_s3_client(conf.storage)) if location.scheme == "s3" else None
    check_readable(location, client)  # fails fast, before any Spark work
    stats = spark.sparkContext.accumulator({}, TaskStats())
    # The model builds in the executors' Python workers (seconds) while the driver lists (minutes on a big archive).
    warm_up: Any = WarmUp(spark, conf.featurizer, conf.storage, run_id, stats) if conf.featurizer.warm_up else contextlib.nullcontext()
    with warm_up as warm:
        inventory = list_inventory(location, client, conf, selection=selection)
        recover_table(spark, output)  # finish a swap that a killed run left half done, before reading the store
        feat_id = featurizer_id(conf.featurizer, conf.storage, s3_client=s3_client)
        timings = {"list_s": time.perf_counter() - t0}
        rows = inventory.rows
        n_videos = int((rows["kind"] == "video").sum())
        logger.info("listed %d objects under %s (%d selected, %d videos, %d do not fit the layout); featurizer %s", inventory.listed, input_uri, len(rows), n_videos, len(inventory.errors), feat_id)

        t_inc = time.perf_counter()
        existing = existing_objects(spark, output, cameras=selection.cameras if selection else None)
        prune_prefix = location.uri.rstrip("/") + "/" if prune else None
        diff = diff_with_store(rows, existing, feat_id, full=full, prune_prefix=prune_prefix, listed_uris=inventory.listed_uris)
        timings["incremental_s"] = time.perf_counter() - t_inc
        logger.info("%d objects unchanged since the last run (skipped), %d to featurize (%d changed), %d pruned", diff.skipped, diff.todo["uri"].nunique(), len(diff.changed), len(diff.pruned))

        work, plan_errors = _split_long_videos(spark, diff.todo, conf, timings)
        driver_errors = inventory.errors + plan_errors
        if not len(work) and warm is not None:
            warm.cancel()
        errors_output = errors_output or sibling(output, "errors")
        outcome = _featurize_and_write(spark, work, conf, feat_id=feat_id, output=output, errors_output=errors_output, run_id=run_id, driver_errors=driver_errors, existing=existing, diff=diff,
                                       on_partitions=on_partitions, stats=stats, timings=timings)  # fmt: skip
    n_errors = sum(outcome.errors_by_stage.values())
    summary = {
        "input": input_uri,
        "features": output,
        "errors": errors_output,
        "featurizer": feat_id,
        "listed": inventory.listed,
        "selected": inventory.listed - inventory.unselected,
        "skipped_unchanged": diff.skipped,
        "videos": n_videos,
        "work_units": len(work),
        "featurized_objects": len(outcome.ok_uris),
        "featurized": outcome.frames,
        "replaced_objects": len((outcome.ok_uris & diff.known) | diff.changed),
        "pruned_objects": len(diff.pruned),
        "errors_by_stage": dict(sorted(outcome.errors_by_stage.items())),
        "error_count": n_errors,
        "error_fraction": (n_errors / inventory.listed) if inventory.listed else 0.0,
        "partitions": [{"camera_id": c, "date": d} for c, d in outcome.partitions],
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "tasks": {k: round(v, 3) for k, v in sorted(dict(stats.value).items())},
        "task_slots": task_slots(spark),
    }
    logger.info("featurize done: %d frames from %d objects featurized, %d skipped as unchanged", outcome.frames, len(outcome.ok_uris), diff.skipped)
    logger.info("featurize errors: %d objects %s", n_errors, summary["errors_by_stage"])
    return summary


def _split_long_videos(spark: SparkSession, rows: pd.DataFrame, conf: Conf, timings: dict[str, float]) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Work rows with every video over ``video.split_min_bytes`` replaced by its segments, and the probe's error rows."""
    big = (rows["kind"] == "video") & (rows["size"].fillna(0).astype("int64") > conf.video.split_min_bytes)
    if not big.any():
        return rows, []
    t_plan = time.perf_counter()
    n_big = int(big.sum())
    big_df = spark.createDataFrame(nullable_ints_for_arrow(rows[big]), schema=WORK_SCHEMA).repartition(min(n_big, spark.sparkContext.defaultParallelism))
    planned: pd.DataFrame = with_segments(big_df, vconf=conf.video, sconf=conf.storage).toPandas()
    planned["frame_ts"] = pd.to_datetime(planned["frame_ts"]).dt.tz_localize(spark.conf.get("spark.sql.session.timeZone") or "UTC").dt.tz_convert("UTC")
    failed = planned["stage"].notna()
    segments = planned.loc[~failed, _WORK_COLUMNS]
    timings["split_s"] = time.perf_counter() - t_plan
    logger.info("split %d large videos into %d segments", n_big, len(segments))
    return pd.concat([rows[~big], segments], ignore_index=True), planned.loc[failed, ["uri", "stage", "error_type", "message"]].to_dict("records")


@dataclass
class _Outcome:
    """What the featurize stage produced: objects and frames featurized, partitions rewritten, errors by stage."""

    ok_uris: set[str] = field(default_factory=set)
    frames: int = 0
    partitions: list[tuple[str, str]] = field(default_factory=list)
    errors_by_stage: dict[str, int] = field(default_factory=dict)


def _featurize_and_write(
    spark: SparkSession,
    work: pd.DataFrame,
    conf: Conf,
    *,
    feat_id: str,
    output: str,
    errors_output: str,
    run_id: str,
    driver_errors: list[dict[str, Any]],
    existing: pd.DataFrame,
    diff: StoreDiff,
    on_partitions: Callable[[list[tuple[str, str]]], None] | None,
    stats: Any,
    timings: dict[str, float],
) -> _Outcome:
    """Run the featurize stage over ``work``, swap the affected partitions of the store in, write errors/."""
    t1 = time.perf_counter()
    errors_df = errors_frame(spark, driver_errors, run_id)
    outcome, new_parts, task_errors = _Outcome(), set(), 0
    result_df = None
    if len(work):
        work_df = spark.createDataFrame(nullable_ints_for_arrow(work), schema=WORK_SCHEMA)
        n_still = int((work["kind"] != "video").sum())
        num_tasks = min(len(work), max(task_slots(spark), math.ceil(n_still / conf.job.rows_per_task) + len(work) - n_still))
        session_tz = spark.conf.get("spark.sql.session.timeZone") or "UTC"
        result_df = with_features(work_df, fconf=conf.featurizer, sconf=conf.storage, vconf=conf.video, featurizer_id=feat_id, num_tasks=num_tasks, session_tz=session_tz, stats=stats)
        result_df = result_df.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        if result_df is not None:
            # One action computes the cached result and gives partitions, frame counts, objects and whether any failed.
            grouped = result_df.groupBy("camera_id", "date", "uri", F.col("stage").isNotNull().alias("failed")).count().collect()
            per_object = [r for r in grouped if not r["failed"]]
            task_errors = len(grouped) - len(per_object)
            new_parts = {(r["camera_id"], r["date"].isoformat()) for r in per_object}
            outcome.frames = sum(int(r["count"]) for r in per_object)
            outcome.ok_uris = {r["uri"] for r in per_object}
            timings["featurize_s"] = time.perf_counter() - t1
            if task_errors:
                errors_df = errors_df.unionByName(result_df.where(F.col("stage").isNotNull()).select("uri", "stage", "error_type", "message", F.lit(run_id).alias("run_id")))
        drop_uris = (outcome.ok_uris & diff.known) | diff.changed | diff.pruned
        dropped = existing["uri"].isin(drop_uris)
        outcome.partitions = sorted(new_parts | set(zip(existing.loc[dropped, "camera_id"], existing.loc[dropped, "date"], strict=True)))
        t2 = time.perf_counter()
        if outcome.partitions:
            if on_partitions is not None:
                on_partitions(outcome.partitions)
            new_df = result_df.where(F.col("stage").isNull()).select(*FEATURES_SCHEMA.fieldNames()) if result_df is not None else None
            merged_df = merged_features(spark, output, new_df=new_df, affected=outcome.partitions, drop_uris=drop_uris)
            replace_partitions(spark, merged_df, output, run_id=run_id, scope=[partition_path(c, d) for c, d in outcome.partitions])
        outcome.errors_by_stage = write_errors(errors_df, errors_output, empty=not driver_errors and not task_errors)
        timings["write_s"] = time.perf_counter() - t2
    finally:
        if result_df is not None:
            result_df.unpersist()
    return outcome
