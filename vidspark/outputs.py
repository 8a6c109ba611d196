"""Reading and writing vidspark's Parquet tables and small JSON records, local or on a cluster FS."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from vidspark.errors import StorageError
from vidspark.fs import FileSystem, basename, join, sibling
from vidspark.schemas import PARTITION_COLUMNS

logger = logging.getLogger(__name__)


def parquet_writer(df: DataFrame, mode: str) -> Any:
    """``df.write`` in ``mode`` as every vidspark table is written: snappy, timestamps as INT64 microseconds.

    Spark writes INT96 timestamps by default, a deprecated type that readers outside Spark treat
    differently; INT64 ``TIMESTAMP(MICROS, isAdjustedToUTC=true)`` reads as the same UTC instant in
    DuckDB, Trino, Athena and pyarrow. The setting is a runtime SQL conf, so it is set here, where the
    format is decided, whatever session the caller built.
    """
    df.sparkSession.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    return df.write.mode(mode).option("compression", "snappy")


def write_partitioned(df: DataFrame, path: str, *, partition_by: tuple[str, ...] = PARTITION_COLUMNS) -> None:
    """Write Parquet partitioned by ``partition_by``, replacing only the partitions present in ``df``.

    Dynamic partition overwrite makes a re-run over the same input replace, never append.
    """
    parquet_writer(df, "overwrite").option("partitionOverwriteMode", "dynamic").partitionBy(*partition_by).parquet(path)


# The order of rows within a partition's files: one video's frames together, in time (readers that filter on a video or
# a time range skip row groups by their min/max statistics).
CLUSTER_ORDER = ("camera_id", "video_id", "frame_ts", "start_ts", "frame_idx", "uri")
# Bytes a row takes in Parquet, by table (a feature row is 2 048 floats that hardly compress; the others are small).
ROW_BYTES_FEATURES = 8_600
ROW_BYTES_DEFAULT = 400


def rows_per_file(target_file_mb: float, *, row_bytes: int = ROW_BYTES_DEFAULT) -> int:
    """How many rows make a file of about ``target_file_mb`` MiB."""
    return max(1, int(target_file_mb * 1024 * 1024 // row_bytes))


def clustered(df: DataFrame, partition_by: tuple[str, ...] = PARTITION_COLUMNS) -> DataFrame:
    """``df`` with each partition's rows in one task, sorted by :data:`CLUSTER_ORDER`: one file per partition (until the file size cap)."""
    order = [c for c in (*partition_by, *CLUSTER_ORDER) if c in df.columns]
    return df.repartition(*partition_by).sortWithinPartitions(*dict.fromkeys(order))


def append_partitioned(df: DataFrame, path: str, *, max_rows_per_file: int, partition_by: tuple[str, ...] = PARTITION_COLUMNS) -> None:
    """Append ``df`` to a partitioned history table (errors/), clustered like the other tables.

    A table of an older layout at ``path`` (unpartitioned files at its top) is moved aside to
    ``<path>.v0.1`` first, with a warning, so nothing is lost and the new table reads cleanly.
    """
    spark = df.sparkSession
    fs = FileSystem(spark, path)
    if fs.exists(path) and any(n.endswith(".parquet") for n in fs.list_names(path)):
        legacy = path.rstrip("/") + ".v0.1"
        fs.rename(path, legacy)
        logger.warning("%s held an errors table of vidspark 0.1 (not partitioned): moved it to %s", path, legacy)
    _clustered_writer(df, "append", partition_by, max_rows_per_file).parquet(path)


def _clustered_writer(df: DataFrame, mode: str, partition_by: tuple[str, ...], max_rows_per_file: int | None, before_write: Callable[[DataFrame], DataFrame] | None = None) -> Any:
    """The writer of a partitioned vidspark table: :func:`clustered` rows, files of at most ``max_rows_per_file`` rows.

    ``before_write``: applied to the clustered rows last (``DataFrame.observe`` there counts each written row once, in the write's own job).
    """
    rows = clustered(df, partition_by)
    writer = parquet_writer(before_write(rows) if before_write is not None else rows, mode)
    if max_rows_per_file is not None:
        writer = writer.option("maxRecordsPerFile", max_rows_per_file)
    return writer.partitionBy(*partition_by)


def table_exists(spark: SparkSession, path: str) -> bool:
    return FileSystem(spark, path).exists(path)


def read_table(spark: SparkSession, path: str, schema: T.StructType) -> DataFrame:
    """Read a vidspark table with its contract schema (partition columns keep their types).

    Raises
    ------
    StorageError
        If nothing is at ``path``.
    """
    if not table_exists(spark, path):
        raise StorageError(f"no table at {path!r}: run the job that writes it first, or check the path")
    return spark.read.schema(schema).parquet(path)


def read_partitions(
    spark: SparkSession, path: str, schema: T.StructType, *, cameras: list[str] | None = None, from_date: str | None = None, partitions: list[tuple[str, str]] | None = None
) -> DataFrame | None:
    """Read only some ``camera_id=/date=`` partitions of a table, by their folders (None if none exists).

    Spark's file index lists every partition of a table it reads, even those a filter prunes: a store
    of years of cameras costs a listing of thousands of folders each night. Here only the camera
    folders, then the date folders of the cameras asked for, are listed (names, not files), and the
    partitions wanted are read by path. ``cameras``: only these; ``from_date``: dates on or after it
    (ISO); ``partitions``: exactly these ``(camera_id, date)`` pairs.
    """
    if not table_exists(spark, path):
        return None
    wanted = {partition_path(c, d) for c, d in partitions} if partitions is not None else None
    camera_dirs = {f"camera_id={_escape_path_name(c)}" for c in (cameras if cameras is not None else [c for c, _ in partitions or []])}
    paths = []
    for cam in sorted(n for n in list_names(spark, path) if n.startswith("camera_id=")):
        if (cameras is not None or partitions is not None) and cam not in camera_dirs:
            continue
        for day in sorted(n for n in list_names(spark, join(path, cam)) if n.startswith("date=")):
            if from_date is not None and day[len("date=") :] < from_date:
                continue
            if wanted is not None and f"{cam}/{day}" not in wanted:
                continue
            paths.append(join(path, cam, day))
    if not paths:
        return None
    return spark.read.schema(schema).option("basePath", path).parquet(*paths)


def write_text(spark: SparkSession, path: str, text: str) -> None:
    """Write a small text file through Hadoop's FileSystem (local, HDFS, s3a alike), atomically by rename."""
    FileSystem(spark, path).write_text(path, text)


def write_json(spark: SparkSession, path: str, record: dict[str, Any]) -> None:
    write_text(spark, path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")


# ---------------------------------------------------------------------------------------------
# Crash-safe partition replacement: stage, record, swap.
#
# Spark's dynamic partition overwrite deletes each target partition and renames the new one in at
# job commit; a driver killed between the two loses that partition, and a table cannot be rewritten
# from a DataFrame that reads it. ``replace_partitions`` instead writes the new partitions to a
# staging folder beside the table, records them in a manifest (written atomically), and then swaps
# each partition with two renames (old -> trash, staged -> table). A run that dies before the
# manifest leaves only staging files (removed by the next run); one that dies after it is rolled
# forward by the next run's ``recover_table``. Readers of the table only ever see whole partition
# folders. Renames are atomic on local filesystems and HDFS; on object stores (s3a, gs) they are
# copies, so there a reader can see a partition being moved (use a committer-aware table format
# if that matters).
# ---------------------------------------------------------------------------------------------

_MANIFEST = "_MANIFEST.json"


def _fs(spark: SparkSession, path: str) -> tuple[Any, Any]:
    fs = FileSystem(spark, path)
    return fs.raw, fs.jvm


def staging_root(table: str) -> str:
    """Where a table's staged writes and swapped-out partitions live: ``_staging/<table name>`` beside it.

    Outside the table's folder, so no reader or glob over the table ever sees staged files.
    """
    return join(sibling(table, "_staging"), basename(table))


def _partition_dirs(fs: Any, jvm: Any, root: str, depth: int) -> list[str]:
    """Relative ``k=v/k2=v2`` folders ``depth`` levels below ``root``."""
    base = jvm.org.apache.hadoop.fs.Path(root)
    if not fs.exists(base):
        return []
    level = [("", base)]
    for _ in range(depth):
        nxt = []
        for rel, p in level:
            for st in fs.listStatus(p):
                name = st.getPath().getName()
                if st.isDirectory() and "=" in name and not name.startswith(("_", ".")):
                    nxt.append((f"{rel}/{name}" if rel else name, st.getPath()))
        level = nxt
    return sorted(rel for rel, _ in level)


def recover_table(spark: SparkSession, table: str) -> list[str]:
    """Finish or clean up partition swaps that a killed run left behind; returns what was done."""
    fs, jvm = _fs(spark, table)
    HPath = jvm.org.apache.hadoop.fs.Path
    root = HPath(staging_root(table))
    done: list[str] = []
    if not fs.exists(root):
        return done
    for st in fs.listStatus(root):
        run_dir = st.getPath()
        manifest = HPath(run_dir, _MANIFEST)
        if fs.exists(manifest):
            stream = fs.open(manifest)
            try:
                text = jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
            finally:
                stream.close()
            record = json.loads(str(text))
            deleted = record.get("deleted", [])
            partitions = record["partitions"] + deleted
            if record.get("table") not in (None, table):
                logger.warning("skipping %s: its manifest is for %s, not %s", run_dir, record.get("table"), table)
                continue
            _swap(fs, jvm, table, str(run_dir.toString()), partitions, deleted=frozenset(deleted))
            fs.delete(manifest, False)
            done.append(f"rolled forward {len(partitions)} partition(s) of {run_dir.getName()}")
        else:
            done.append(f"removed unfinished staging {run_dir.getName()}")
        fs.delete(run_dir, True)
    if done:
        logger.warning("recovered %s after an interrupted run: %s", table, "; ".join(done))
    return done


def _swap(fs: Any, jvm: Any, table: str, run_dir: str, partitions: list[str], *, deleted: frozenset[str] = frozenset(), fail_after: int | None = None) -> None:
    """Move each staged partition into the table (old one to the run's trash first). Idempotent.

    A partition with nothing staged (every row of it deleted) only goes to the trash.
    """
    HPath = jvm.org.apache.hadoop.fs.Path
    for n, rel in enumerate(partitions):
        if fail_after is not None and n == fail_after:
            raise RuntimeError(f"injected failure before partition {n}")  # tests: a crash in the middle
        staged, target, trash = HPath(f"{run_dir}/data/{rel}"), HPath(f"{table.rstrip('/')}/{rel}"), HPath(f"{run_dir}/trash/{rel}")
        if not fs.exists(staged):
            if fs.exists(target) and not fs.exists(trash) and rel in deleted:
                fs.mkdirs(trash.getParent())
                fs.rename(target, trash)
            continue  # moved in by an earlier attempt, or a partition that is now empty
        if fs.exists(target):
            if fs.exists(trash):
                # The old partition is already in the trash, so the target holds part of the new one: an
                # interrupted directory rename on an object store (s3a copies file by file). Finish it file
                # by file instead of deleting what was already moved.
                for st in fs.listStatus(staged):
                    dest = HPath(target, st.getPath().getName())
                    if not fs.exists(dest) and not fs.rename(st.getPath(), dest):
                        raise StorageError(f"could not move {st.getPath()} into {table}")
                fs.delete(staged, True)
                continue
            else:
                fs.mkdirs(trash.getParent())
                if not fs.rename(target, trash):
                    raise StorageError(f"could not move {target} aside")
        fs.mkdirs(target.getParent())
        if not fs.rename(staged, target):
            raise StorageError(f"could not move {staged} into {table}")


def replace_partitions(
    spark: SparkSession,
    df: DataFrame,
    table: str,
    *,
    run_id: str,
    partition_by: tuple[str, ...] = PARTITION_COLUMNS,
    scope: list[str] | None = None,
    max_rows_per_file: int | None = None,
    before_write: Callable[[DataFrame], DataFrame] | None = None,
    _fail_after: int | None = None,
) -> list[str]:
    """Replace the partitions present in ``df`` in ``table``, crash-safely; partitions of ``scope`` absent from ``df`` are emptied.

    ``df`` may read from ``table`` itself (a merge of old and new rows): it is written to staging
    first. ``scope`` lists partitions (``partition_path`` form) this write is responsible for.
    Each partition is written by one task, rows sorted by :data:`CLUSTER_ORDER`, in files of at most
    ``max_rows_per_file`` rows. ``before_write`` is applied to those rows just before they are
    written (an ``observe`` that counts what is written, without a Spark job of its own; it may drop
    helper columns). Returns the partitions written, as ``camera_id=.../date=...`` paths.
    """
    recover_table(spark, table)
    fs, jvm = _fs(spark, table)
    HPath = jvm.org.apache.hadoop.fs.Path
    run_dir = join(staging_root(table), run_id)
    if fs.exists(HPath(run_dir)):
        fs.delete(HPath(run_dir), True)
    _clustered_writer(df, "overwrite", partition_by, max_rows_per_file, before_write).parquet(join(run_dir, "data"))
    partitions = _partition_dirs(fs, jvm, join(run_dir, "data"), len(partition_by))
    if scope is not None and not set(partitions) <= set(scope):
        fs.delete(HPath(run_dir), True)
        raise StorageError(f"refusing to replace partitions outside this write's scope: {sorted(set(partitions) - set(scope))}")
    deleted = sorted(set(scope or ()) - set(partitions))
    write_text(spark, join(run_dir, _MANIFEST), json.dumps({"table": table, "run_id": run_id, "partitions": partitions, "deleted": deleted}))
    _swap(fs, jvm, table, run_dir, partitions + deleted, deleted=frozenset(deleted), fail_after=_fail_after)
    if not fs.delete(HPath(join(run_dir, _MANIFEST)), False):  # first: a manifest that outlived its swap would be replayed
        raise StorageError(f"could not remove {join(run_dir, _MANIFEST)}")
    fs.delete(HPath(run_dir), True)
    root = HPath(staging_root(table))
    if fs.exists(root) and len(fs.listStatus(root)) == 0:
        fs.delete(root, True)
        parent = root.getParent()
        if fs.exists(parent) and len(fs.listStatus(parent)) == 0:
            fs.delete(parent, True)
    return partitions


_UNSAFE = set("\"#%'*/:=?\\\x7f{[]^")


def _escape_path_name(text: str) -> str:
    """Spark's escaping of partition values in folder names (``ExternalCatalogUtils.escapePathName``)."""
    return "".join(f"%{ord(ch):02X}" if ch in _UNSAFE or ord(ch) < 0x20 else ch for ch in text)


def partition_path(camera_id: str, date: str) -> str:
    """``camera_id=cam1/date=2026-11-20``: a partition folder as Spark names it."""
    return f"camera_id={_escape_path_name(camera_id)}/date={date}"


def read_text(spark: SparkSession, path: str) -> str:
    """A small text file through Hadoop's FileSystem."""
    return FileSystem(spark, path).read_text(path)


def path_exists(spark: SparkSession, path: str) -> bool:
    return FileSystem(spark, path).exists(path)


def list_names(spark: SparkSession, folder: str) -> list[str]:
    """Names of the entries of a folder (empty when it does not exist)."""
    return FileSystem(spark, folder).list_names(folder)


def delete_path(spark: SparkSession, path: str) -> None:
    FileSystem(spark, path).delete(path)
