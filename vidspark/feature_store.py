"""The feature store: what it holds per object, which listed objects it already has, merging new rows, the errors table."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from vidspark.inventory import UNKNOWN_CAMERA, collect_counts, local_date
from vidspark.outputs import append_partitioned, read_partitions, read_table, table_exists
from vidspark.schemas import ERRORS_SCHEMA, FEATURES_SCHEMA

URI_SCHEMA = T.StructType([T.StructField("uri", T.StringType(), True)])  # a StructType, not DDL text: no parser round trip


def stored_objects(spark: SparkSession, features: str, featurizer: str, *, cameras: frozenset[str] | None = None, from_date: date | None = None) -> DataFrame | None:
    """One row per object the feature store holds, aggregated on the executors (None if there is no store).

    ``uri``; ``etag_lo``/``etag_hi`` (the ETags its rows carry); ``current`` (some row was made by
    ``featurizer``); what its rows say of its identity: ``camera_id``, ``label``, ``video_id``,
    ``object_ts`` and its first ``frame_idx``/``frame_ts``; and ``parts``, the partitions it has rows in.
    Only partitions of ``cameras`` and from ``from_date`` on are read (the Parquet reader prunes the rest).
    """
    if not table_exists(spark, features):
        return None
    if cameras is None and from_date is None:
        df = read_table(spark, features, FEATURES_SCHEMA)
    else:
        found = read_partitions(spark, features, FEATURES_SCHEMA, cameras=sorted(cameras) if cameras is not None else None, from_date=from_date.isoformat() if from_date else None)
        df = found if found is not None else spark.createDataFrame([], FEATURES_SCHEMA)
    return df.groupBy("uri").agg(
        F.min("etag").alias("etag_lo"),
        F.max("etag").alias("etag_hi"),
        F.max((F.col("featurizer") == featurizer).cast("int")).alias("current"),
        F.min("camera_id").alias("s_camera_id"),
        F.min("label").alias("s_label"),
        F.min("video_id").alias("s_video_id"),
        F.min("object_ts").alias("s_object_ts"),
        F.min("frame_idx").alias("s_frame_idx"),
        F.min("frame_ts").alias("s_frame_ts"),
        F.collect_set(F.struct("camera_id", "date")).alias("parts"),
    )


def unchanged() -> Column:
    """Condition on a work row joined with its stored object: the store holds it as it is.

    Same ETag and featurizer, and the same identity: camera, label and object time for every object,
    and for a still also its video, index and time (a frame inserted before it, or a folder whose
    earliest frame changed, moves it). An object whose identity changed is featurized again like a changed one.
    """
    etag = F.col("etag")
    same = (
        (F.col("current") == 1)
        & (F.col("etag_lo") == etag)
        & (F.col("etag_hi") == etag)
        & (F.col("s_camera_id") == F.col("camera_id"))
        & F.col("s_label").eqNullSafe(F.col("label"))
        & F.col("s_object_ts").isNotNull()
        & (F.col("s_object_ts") == F.col("frame_ts"))
    )
    same_video = F.col("s_video_id").eqNullSafe(F.col("video_id"))
    still = same_video & (F.col("s_frame_idx") == F.col("frame_idx")) & (F.col("s_frame_ts") == F.col("frame_ts"))
    return F.coalesce(same & F.when(F.col("kind") == "image", still).when(F.col("kind") == "video", same_video).otherwise(F.lit(True)), F.lit(False))


@dataclass
class StoreDiff:
    """What a run does to the store, as DataFrames on the executors.

    ``todo``: the work rows to featurize (persisted). ``stored``: the stored objects read (persisted,
    None without a store). ``changed``/``pruned``: uris whose rows go whatever happens (a new, known
    ETag; gone from the listing with ``--prune``). Old rows of other objects go only when the object was
    featurized again successfully: a failed attempt (a transient fetch error, ``--full``) must not cost good rows.
    """

    todo: DataFrame
    stored: DataFrame | None
    changed: DataFrame
    pruned: DataFrame
    counts: dict[str, int]

    def drop(self, ok_uris: DataFrame) -> tuple[DataFrame, DataFrame]:
        """The uris whose stored rows go (replaced, changed or pruned), and those replaced or changed."""
        if self.stored is None:
            return self.changed, self.changed
        replaced = ok_uris.join(self.stored.select("uri"), "uri", "left_semi").unionByName(self.changed).distinct()
        return replaced.unionByName(self.pruned).distinct(), replaced

    def partitions_of(self, uris: DataFrame) -> list[tuple[str, str]]:
        """The ``(camera_id, date)`` partitions that hold stored rows of ``uris``."""
        if self.stored is None:
            return []
        parts = self.stored.join(uris, "uri", "left_semi").select(F.explode("parts").alias("p")).select("p.camera_id", "p.date").distinct().collect()
        return [(r["camera_id"], r["date"].isoformat()) for r in parts]

    def unpersist(self) -> None:
        self.todo.unpersist()
        if self.stored is not None:
            self.stored.unpersist()


def diff_with_store(rows: DataFrame, listed_uris: DataFrame, stored: DataFrame | None, *, full: bool, prune_scope: Column | None) -> StoreDiff:
    """Compare the selected work rows with the stored objects by joins on the executors; unchanged ones are skipped (unless ``full``).

    ``listed_uris``: every listed object (selected or not). ``prune_scope``: with ``--prune``, a
    condition on ``uri`` saying which stored objects the listing covers; those it no longer has are pruned.
    The counts (skipped, to do, changed, pruned) are collected in one Spark job.
    """
    spark = rows.sparkSession
    empty = spark.createDataFrame([], URI_SCHEMA)
    if stored is None:
        todo = rows.persist(StorageLevel.MEMORY_AND_DISK)
        return StoreDiff(todo, None, empty, empty, {"skipped": 0, "todo": todo.count(), "changed": 0, "pruned": 0})
    stored = stored.persist(StorageLevel.MEMORY_AND_DISK)
    joined = rows.join(stored, "uri", "left").withColumn("_unchanged", F.lit(False) if full else unchanged())
    todo = joined.where(~F.col("_unchanged")).select(*rows.columns).persist(StorageLevel.MEMORY_AND_DISK)
    changed_cond = F.col("etag_lo").isNotNull() & (F.coalesce(F.col("etag"), F.lit("")) != "") & (F.col("etag") != F.col("etag_lo")) & (F.col("etag") != F.col("etag_hi"))
    changed = joined.where(~F.col("_unchanged") & changed_cond).select("uri").distinct()
    pruned = stored.where(prune_scope).select("uri").join(listed_uris, "uri", "left_anti") if prune_scope is not None else empty
    skip = F.col("_unchanged")
    aggregates = {"diff": joined.agg(F.sum(skip.cast("long")).alias("skipped"), F.sum((~skip).cast("long")).alias("todo"), F.sum((~skip & changed_cond).cast("long")).alias("changed"))}
    if prune_scope is not None:
        aggregates["pruned"] = pruned.agg(F.count(F.lit(1)).alias("pruned"))
    found = collect_counts(aggregates)
    counts = {**found["diff"], "pruned": found["pruned"]["pruned"] if prune_scope is not None else 0}
    return StoreDiff(todo, stored, changed, pruned, counts)


def merged_features(spark: SparkSession, output: str, *, new_df: DataFrame | None, affected: list[tuple[str, str]], drop_uris: DataFrame | None) -> DataFrame:
    """New rows plus the rows already in the affected partitions that stay (not replaced, not pruned)."""
    # The store's affected partitions are read by path (read_partitions); new rows are filtered on a hash set of partition keys.
    in_affected = F.concat_ws("\u0000", F.col("camera_id"), F.col("date").cast("string")).isin([f"{c}\u0000{d}" for c, d in affected])
    if new_df is not None:  # a recomputed cache must not bring rows of partitions nobody planned to rewrite
        new_df = new_df.where(in_affected).select(*FEATURES_SCHEMA.fieldNames())
    keep_df = read_partitions(spark, output, FEATURES_SCHEMA, partitions=affected)
    if keep_df is None:
        return new_df if new_df is not None else spark.createDataFrame([], FEATURES_SCHEMA)
    if drop_uris is not None:
        keep_df = keep_df.join(drop_uris, "uri", "left_anti")
    keep_df = keep_df.select(*FEATURES_SCHEMA.fieldNames())
    return keep_df if new_df is None else new_df.unionByName(keep_df)


def write_errors(errors_df: DataFrame, path: str, *, objects: DataFrame, timezone: str, max_rows_per_file: int, empty: bool = False) -> dict[str, int]:
    """Append one errors row per object to the errors history (a video's segments joined; its earliest stage wins); returns counts by stage.

    ``errors_df``: ``uri, stage, error_type, message, run_id, camera_id, date`` (camera and date null
    where the key did not parse). ``objects``: the listing's ``uri, last_modified``, joined in. A row
    without a camera is ``unknown``'s, dated by the object's last-modified day in ``timezone`` (that camera's zone).
    ``empty``: nothing failed (the caller knows from its own counts): no aggregation or counting job;
    the table is created empty if it does not exist yet, so readers always find it.
    """
    if empty:
        if not table_exists(errors_df.sparkSession, path):
            append_partitioned(errors_df.sparkSession.createDataFrame([], ERRORS_SCHEMA), path, max_rows_per_file=max_rows_per_file)
        return {}
    order = F.when(F.col("stage") == "layout", 0).when(F.col("stage") == "fetch", 1).when(F.col("stage") == "decode", 2).otherwise(3)
    agg_df = (
        errors_df.withColumn("_order", order)
        .groupBy("uri")
        .agg(
            F.min(F.struct("_order", "stage", "error_type")).alias("_first"),  # one row's stage and type: the earliest stage's
            F.array_join(F.slice(F.array_sort(F.collect_set("message")), 1, 5), " | ").alias("message"),
            F.min("run_id").alias("run_id"),
            F.min("camera_id").alias("camera_id"),
            F.min("date").alias("date"),
        )
        .withColumn("stage", F.col("_first.stage"))
        .withColumn("error_type", F.col("_first.error_type"))
        .join(objects.select("uri", "last_modified").dropDuplicates(["uri"]), "uri", "left")
    )
    local_day = local_date(F.col("last_modified"), F.lit(timezone))
    agg_df = agg_df.withColumn("camera_id", F.coalesce("camera_id", F.lit(UNKNOWN_CAMERA))).withColumn("date", F.coalesce("date", local_day, F.current_date()))
    agg_df = agg_df.select(*ERRORS_SCHEMA.fieldNames()).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        append_partitioned(agg_df, path, max_rows_per_file=max_rows_per_file)
        return {r["stage"]: int(r["count"]) for r in agg_df.groupBy("stage").count().collect()}
    finally:
        agg_df.unpersist()
