"""Reading and writing vidspark's Parquet tables and small JSON records, local or on a cluster FS."""

from __future__ import annotations

import json
import logging
import os
import posixpath
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from vidspark.errors import StorageError
from vidspark.schemas import PARTITION_COLUMNS

logger = logging.getLogger(__name__)


def sibling(path: str, name: str) -> str:
    """``/out/features`` -> ``/out/<name>``; works for local paths and ``scheme://`` URIs."""
    stripped = path.rstrip("/")
    parent = posixpath.dirname(stripped) if "://" in stripped else os.path.dirname(os.path.abspath(stripped))
    return posixpath.join(parent, name) if "://" in stripped else os.path.join(parent, name)


def join(path: str, *names: str) -> str:
    return posixpath.join(path.rstrip("/"), *names) if "://" in path else os.path.join(path, *names)


def write_partitioned(df: DataFrame, path: str, *, partition_by: tuple[str, ...] = PARTITION_COLUMNS) -> None:
    """Write Parquet partitioned by ``partition_by``, replacing only the partitions present in ``df``.

    Dynamic partition overwrite makes a re-run over the same input replace, never append.
    """
    (df.write.mode("overwrite").option("partitionOverwriteMode", "dynamic").option("compression", "snappy").partitionBy(*partition_by).parquet(path))


def write_table(df: DataFrame, path: str) -> None:
    """Write an unpartitioned Parquet table, replacing what was there."""
    df.coalesce(1).write.mode("overwrite").parquet(path)


def table_exists(spark: SparkSession, path: str) -> bool:
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())  # type: ignore[union-attr]
    return bool(fs.exists(hpath))


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


def write_text(spark: SparkSession, path: str, text: str) -> None:
    """Write a small text file through Hadoop's FileSystem (local, HDFS, s3a alike), atomically by rename."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    hconf = spark.sparkContext._jsc.hadoopConfiguration()  # type: ignore[union-attr]
    target = jvm.org.apache.hadoop.fs.Path(path)
    fs = target.getFileSystem(hconf)
    tmp = jvm.org.apache.hadoop.fs.Path(path + ".tmp")
    out = fs.create(tmp, True)
    try:
        out.write(bytearray(text.encode("utf-8")))
    finally:
        out.close()
    if fs.exists(target):
        fs.delete(target, False)
    if not fs.rename(tmp, target):
        raise StorageError(f"could not write {path!r}")


def write_json(spark: SparkSession, path: str, record: dict[str, Any]) -> None:
    write_text(spark, path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
