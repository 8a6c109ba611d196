"""``vidspark ddl``: CREATE statements that make vidspark's Parquet outputs tables in Spark SQL, Trino, Athena or DuckDB.

The column lists come from the contract schemas of :mod:`vidspark.schemas`, so the statements always
match what the jobs write. Tables are external: the statements point at the folders the jobs wrote and
never move data.

- Spark SQL: ``CREATE TABLE ... USING parquet PARTITIONED BY (camera_id, date) LOCATION``, then
  ``MSCK REPAIR TABLE`` (run it again after each night, so the catalog knows the new partitions).
- Trino (Hive connector): ``external_location`` and ``partitioned_by``, then
  ``system.sync_partition_metadata`` (again after each night).
- Athena: partition projection (camera ids as an enum of the cameras found now, dates from the
  earliest found to ``NOW``), so new nights are queryable with no ``MSCK REPAIR`` and no crawler;
  a camera added later needs the statement again (or ``--athena-cameras injected``).
- DuckDB: views over ``read_parquet`` with Hive partitioning (``camera_id`` VARCHAR, ``date`` DATE);
  nothing to refresh.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from pyspark.sql import types as T

from vidspark.errors import ConfigError
from vidspark.schemas import ERRORS_SCHEMA, FEATURES_SCHEMA, FRAME_PREDICTIONS_SCHEMA, PARTITION_COLUMNS, VIDEO_PREDICTIONS_SCHEMA

ENGINES = ("spark", "trino", "athena", "duckdb")

# table name -> (folder under the output root, schema)
TABLES: dict[str, tuple[str, T.StructType]] = {
    "features": ("features", FEATURES_SCHEMA),
    "errors": ("errors", ERRORS_SCHEMA),
    "frame_predictions": ("predictions/frames", FRAME_PREDICTIONS_SCHEMA),
    "video_predictions": ("predictions/videos", VIDEO_PREDICTIONS_SCHEMA),
}

_SCALARS: dict[str, dict[type, str]] = {
    "hive": {T.StringType: "string", T.LongType: "bigint", T.IntegerType: "int", T.DoubleType: "double", T.FloatType: "float", T.TimestampType: "timestamp", T.DateType: "date"},
    "trino": {T.StringType: "varchar", T.LongType: "bigint", T.IntegerType: "integer", T.DoubleType: "double", T.FloatType: "real", T.TimestampType: "timestamp(6)", T.DateType: "date"},
}


def column_type(dtype: T.DataType, dialect: str) -> str:
    """A Spark type in ``hive`` (Spark SQL, Athena) or ``trino`` syntax."""
    if isinstance(dtype, T.ArrayType):
        inner = column_type(dtype.elementType, dialect)
        return f"array<{inner}>" if dialect == "hive" else f"array({inner})"
    if isinstance(dtype, T.MapType):
        k, v = column_type(dtype.keyType, dialect), column_type(dtype.valueType, dialect)
        return f"map<{k},{v}>" if dialect == "hive" else f"map({k}, {v})"
    try:
        return _SCALARS[dialect][type(dtype)]
    except KeyError:
        raise ConfigError(f"no {dialect} type for Spark type {dtype.simpleString()}") from None


def _columns(schema: T.StructType, dialect: str, quote: Callable[[str], str], *, partitions_last: bool) -> tuple[list[str], list[str]]:
    """``name type`` of the data columns, and of the partition columns (in partition order)."""
    by_name = {f.name: f for f in schema.fields}
    data = [f"{quote(f.name)} {column_type(f.dataType, dialect)}" for f in schema.fields if f.name not in PARTITION_COLUMNS or not partitions_last]
    parts = [f"{quote(c)} {column_type(by_name[c].dataType, dialect)}" for c in PARTITION_COLUMNS]
    return data, parts


def _location(output: str, folder: str, *, s3: bool) -> str:
    """The table's folder as the engine names it: local paths absolute; ``s3a://`` as ``s3://`` where ``s3`` (Trino, Athena, DuckDB)."""
    loc = output.rstrip("/") + "/" + folder
    if "://" not in loc:
        return os.path.abspath(loc)
    return re.sub(r"^s3[an]://", "s3://", loc) if s3 else loc


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def ddl(
    output: str,
    *,
    engine: str = "spark",
    database: str = "vidspark",
    catalog: str = "hive",
    tables: list[str] | None = None,
    cameras: list[str] | None = None,
    first_date: str | None = None,
) -> str:
    """The statements that declare the tables under ``output`` for ``engine``, as one SQL script.

    Parameters
    ----------
    output
        The output root a run wrote (``features/``, ``errors/``, ``predictions/``), any URI.
    engine
        ``spark``, ``trino``, ``athena`` or ``duckdb``.
    database
        Schema (database) the tables go in; DuckDB views get it as a name prefix.
    catalog
        Trino's Hive catalog name.
    tables
        Which of :data:`TABLES` (default: all).
    cameras
        Athena: the camera ids to project (``None``: injected, so queries must name a camera).
    first_date
        Athena: the first date of the projection range (default two years back).

    Raises
    ------
    ConfigError
        For an unknown engine or table.
    """
    if engine not in ENGINES:
        raise ConfigError(f"--engine {engine!r}: expected one of {', '.join(ENGINES)}")
    names = tables or list(TABLES)
    unknown = [t for t in names if t not in TABLES]
    if unknown:
        raise ConfigError(f"unknown table(s) {unknown}; vidspark writes {', '.join(TABLES)}")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", database):
        raise ConfigError(f"--database {database!r}: use letters, digits and underscores")
    out = [f"-- vidspark tables under {output} for {engine} (vidspark ddl)"]
    if engine in ("spark", "athena"):
        out.append(f"CREATE DATABASE IF NOT EXISTS {database};")
    elif engine == "trino":
        out.append(f"CREATE SCHEMA IF NOT EXISTS {catalog}.{database};")
    for name in names:
        folder, schema = TABLES[name]
        out.append(_TABLE[engine](name=name, folder=folder, schema=schema, output=output, database=database, catalog=catalog, cameras=cameras, first_date=first_date))
    return "\n\n".join(out) + "\n"


def _spark(*, name: str, folder: str, schema: T.StructType, output: str, database: str, **_: Any) -> str:
    quote = lambda c: f"`{c}`"  # noqa: E731
    data, _parts = _columns(schema, "hive", quote, partitions_last=False)
    cols = ",\n  ".join(data)
    return (
        f"CREATE TABLE IF NOT EXISTS {database}.{name} (\n  {cols}\n) USING parquet\n"
        f"PARTITIONED BY ({', '.join(quote(c) for c in PARTITION_COLUMNS)})\nLOCATION {_sql_string(_location(output, folder, s3=False))};\n"
        f"MSCK REPAIR TABLE {database}.{name};  -- again after each run, for the new partitions"
    )


def _athena(*, name: str, folder: str, schema: T.StructType, output: str, database: str, cameras: list[str] | None, first_date: str | None, **_: Any) -> str:
    quote = lambda c: f"`{c}`"  # noqa: E731
    data, parts = _columns(schema, "hive", quote, partitions_last=True)
    location = _location(output, folder, s3=True)
    props = {"projection.enabled": "true"}
    if cameras:
        props.update({"projection.camera_id.type": "enum", "projection.camera_id.values": ",".join(cameras)})
    else:
        props["projection.camera_id.type"] = "injected"
    props.update(
        {
            "projection.date.type": "date",
            "projection.date.format": "yyyy-MM-dd",
            "projection.date.range": f"{first_date or 'NOW-2YEARS'},NOW",
            "projection.date.interval": "1",
            "projection.date.interval.unit": "DAYS",
            "storage.location.template": location + "/camera_id=${camera_id}/date=${date}",
        }
    )
    tbl = ",\n  ".join(f"{_sql_string(k)}={_sql_string(v)}" for k, v in props.items())
    return (
        f"CREATE EXTERNAL TABLE IF NOT EXISTS {database}.{name} (\n  " + ",\n  ".join(data) + f"\n)\nPARTITIONED BY ({', '.join(parts)})\n"
        f"STORED AS PARQUET\nLOCATION {_sql_string(location + '/')}\nTBLPROPERTIES (\n  {tbl}\n);"
    )


def _trino(*, name: str, folder: str, schema: T.StructType, output: str, database: str, catalog: str, **_: Any) -> str:
    quote = lambda c: f'"{c}"'  # noqa: E731
    data, parts = _columns(schema, "trino", quote, partitions_last=True)
    cols = ",\n  ".join([*data, *parts])
    return (
        f"CREATE TABLE IF NOT EXISTS {catalog}.{database}.{name} (\n  {cols}\n)\nWITH (\n  format = 'PARQUET',\n"
        f"  external_location = {_sql_string(_location(output, folder, s3=True))},\n  partitioned_by = ARRAY[{', '.join(_sql_string(c) for c in PARTITION_COLUMNS)}]\n);\n"
        f"CALL {catalog}.system.sync_partition_metadata({_sql_string(database)}, {_sql_string(name)}, 'ADD');  -- again after each run"
    )


def _duckdb(*, name: str, folder: str, schema: T.StructType, output: str, database: str, **_: Any) -> str:
    location = _location(output, folder, s3=True)
    glob = location + "/*/*/*.parquet"
    note = "" if "://" not in location else "  -- needs the httpfs extension and S3 credentials (CREATE SECRET)"
    return (
        f"CREATE OR REPLACE VIEW {database}_{name} AS\nSELECT * FROM read_parquet({_sql_string(glob)}, hive_partitioning = true, "
        f"hive_types = {{'camera_id': VARCHAR, 'date': DATE}}, union_by_name = true);{note}"
    )


_TABLE: dict[str, Callable[..., str]] = {"spark": _spark, "athena": _athena, "trino": _trino, "duckdb": _duckdb}


def found_partitions(list_names: Callable[[str], list[str]]) -> tuple[list[str], str | None]:
    """The camera ids and the earliest date in the ``camera_id=/date=`` folders of every table of an output.

    ``list_names(folder)`` lists the sub-folder names of a folder given relative to the output root
    (``features``, ``features/camera_id=cam1``); empty when it does not exist.
    """
    from urllib.parse import unquote

    cameras: set[str] = set()
    first: str | None = None
    for folder, _schema in TABLES.values():
        for cam in list_names(folder):
            if not cam.startswith("camera_id="):
                continue
            cameras.add(unquote(cam[len("camera_id=") :]))
            days = [d[len("date=") :] for d in list_names(f"{folder}/{cam}") if d.startswith("date=")]
            if days and (first is None or min(days) < first):
                first = min(days)
    return sorted(cameras), first
