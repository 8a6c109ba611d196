"""The feature store: what it holds per object, which listed objects it already has, merging new rows, the errors table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from vidspark.outputs import read_table, table_exists, write_table
from vidspark.schemas import ERRORS_SCHEMA, FEATURES_SCHEMA


def errors_frame(spark: SparkSession, rows: list[dict[str, Any]], run_id: str) -> DataFrame:
    """Driver-side error rows (layout mismatches) as an ``ERRORS_SCHEMA`` DataFrame."""
    data = [(r["uri"], r["stage"], r["error_type"], r["message"], run_id) for r in rows]
    return spark.createDataFrame(data, schema=ERRORS_SCHEMA)


def existing_objects(spark: SparkSession, features: str, *, cameras: frozenset[str] | None = None) -> pd.DataFrame:
    """One row per object and partition already in the feature store (empty if none).

    ``uri, etag, featurizer, camera_id, date`` and what the object's rows say of its identity:
    ``video_id``, ``label``, ``object_ts`` and its first ``frame_idx``/``frame_ts`` (UTC).
    """
    keys = ["uri", "etag", "featurizer", "camera_id", "date"]
    facts = ["video_id", "label", "object_ts", "frame_idx", "frame_ts"]
    if not table_exists(spark, features):
        return pd.DataFrame({c: pd.Series(dtype=object) for c in keys + facts})
    df = read_table(spark, features, FEATURES_SCHEMA)
    if cameras is not None:
        df = df.where(F.col("camera_id").isin(sorted(cameras)))
    # Timestamps as microseconds since the epoch: instants, whatever the session time zone (no DST ambiguity).
    agg = [F.first("video_id").alias("video_id"), F.first("label").alias("label"), F.min("frame_idx").alias("frame_idx")]
    agg += [F.unix_micros(F.min(c)).alias(c) for c in ("object_ts", "frame_ts")]
    out: pd.DataFrame = df.groupBy(*keys).agg(*agg).toPandas()
    out["date"] = [d.isoformat() for d in out["date"]]
    for col in ("object_ts", "frame_ts"):
        out[col] = pd.to_datetime(out[col], unit="us", utc=True)
    return out


def unchanged_objects(rows: pd.DataFrame, existing: pd.DataFrame, featurizer: str) -> pd.Series:
    """Which work rows the store already holds as they are: same ETag and featurizer, and the same identity.

    Identity is what the listing decides: camera, label and object time for every object, and for a
    still also its video, index and time (a frame inserted before it, or a folder whose earliest
    frame changed, moves it). An object whose identity changed is featurized again like a changed one.
    """
    current = existing[existing["featurizer"] == featurizer]
    if not len(current) or not len(rows):
        return pd.Series(False, index=rows.index, dtype=bool)
    first = {c: (c, "first") for c in ("etag", "camera_id", "video_id", "label")}
    least = {c: (c, "min") for c in ("object_ts", "frame_idx", "frame_ts")}
    stored = current.groupby("uri", sort=False).agg(**first, **least)
    have = stored.to_dict("index")

    def same(row: dict[str, Any]) -> bool:
        s = have.get(row["uri"])
        if s is None or s["etag"] != row["etag"] or s["camera_id"] != row["camera_id"] or _na(s["label"]) != _na(row["label"]):
            return False
        if pd.isna(s["object_ts"]) or s["object_ts"] != row["frame_ts"]:
            return False
        if row["kind"] == "image":
            return bool(_na(s["video_id"]) == _na(row["video_id"]) and s["frame_idx"] == row["frame_idx"] and s["frame_ts"] == row["frame_ts"])
        return row["kind"] != "video" or _na(s["video_id"]) == _na(row["video_id"])

    return pd.Series([same(r) for r in rows[["uri", "etag", "camera_id", "video_id", "label", "frame_idx", "frame_ts", "kind"]].to_dict("records")], index=rows.index, dtype=bool)


@dataclass
class StoreDiff:
    """What a run does to the store: objects to featurize, and which stored objects lose their rows.

    Old rows go only when an object changed (a new, known ETag), was featurized again successfully
    (``known``), or was pruned: a failed attempt (a transient fetch error, ``--full``) must not cost good rows.
    """

    todo: pd.DataFrame
    skipped: int
    known: set[str]
    changed: set[str]
    pruned: set[str]


def diff_with_store(rows: pd.DataFrame, existing: pd.DataFrame, featurizer: str, *, full: bool, prune_prefix: str | None, listed_uris: set[str]) -> StoreDiff:
    """Compare the selected work rows with the store: unchanged ones are skipped (unless ``full``).

    ``prune_prefix``: with ``--prune``, stored objects under it that the listing no longer has are pruned.
    """
    skipped = 0
    if not full and len(existing) and len(rows):
        unchanged = unchanged_objects(rows, existing, featurizer)
        skipped = int(rows.loc[unchanged, "uri"].nunique())
        rows = rows[~unchanged].reset_index(drop=True)
    stored = set(zip(existing["uri"], existing["etag"], strict=True))
    known = set(existing["uri"])
    changed = {u for u, e in zip(rows["uri"], rows["etag"], strict=True) if u in known and e and (u, e) not in stored}
    pruned = {u for u in known if u.startswith(prune_prefix) and u not in listed_uris} if prune_prefix is not None else set()
    return StoreDiff(rows, skipped, known, changed, pruned)


def _na(value: Any) -> Any:
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else value


def merged_features(spark: SparkSession, output: str, *, new_df: DataFrame | None, affected: list[tuple[str, str]], drop_uris: set[str]) -> DataFrame:
    """New rows plus the rows already in the affected partitions that stay (not replaced, not pruned)."""
    # A filter on a hash set of partition keys, not a join: no broadcast job, and the Parquet reader prunes partitions.
    in_affected = F.concat_ws("\u0000", F.col("camera_id"), F.col("date").cast("string")).isin([f"{c}\u0000{d}" for c, d in affected])
    if new_df is not None:  # a recomputed cache must not bring rows of partitions nobody planned to rewrite
        new_df = new_df.where(in_affected).select(*FEATURES_SCHEMA.fieldNames())
    if not table_exists(spark, output):
        assert new_df is not None
        return new_df
    keep_df = read_table(spark, output, FEATURES_SCHEMA).where(in_affected)
    if drop_uris:
        drop_df = spark.createDataFrame([(u,) for u in sorted(drop_uris)], schema="uri string")
        keep_df = keep_df.join(F.broadcast(drop_df), "uri", "left_anti")
    keep_df = keep_df.select(*FEATURES_SCHEMA.fieldNames())
    return keep_df if new_df is None else new_df.unionByName(keep_df)


def write_errors(errors_df: DataFrame, path: str, *, empty: bool = False) -> dict[str, int]:
    """Write one errors row per object (a video's segments joined; its earliest stage in the pipeline wins); returns counts by stage.

    ``empty``: nothing failed (the caller knows from its own counts), so the table is written empty
    without the aggregation and counting jobs.
    """
    if empty:
        write_table(errors_df.limit(0), path)
        return {}
    order = F.when(F.col("stage") == "layout", 0).when(F.col("stage") == "fetch", 1).when(F.col("stage") == "decode", 2).otherwise(3)
    agg_df = (
        errors_df.withColumn("_order", order)
        .groupBy("uri")
        .agg(
            F.min(F.struct("_order", "stage", "error_type")).alias("_first"),  # one row's stage and type: the earliest stage's
            F.array_join(F.slice(F.array_sort(F.collect_set("message")), 1, 5), " | ").alias("message"),
            F.min("run_id").alias("run_id"),
        )
        .withColumn("stage", F.col("_first.stage"))
        .withColumn("error_type", F.col("_first.error_type"))
    )
    write_table(agg_df.select(*ERRORS_SCHEMA.fieldNames()), path)
    return {r["stage"]: int(r["count"]) for r in agg_df.groupBy("stage").count().collect()}
