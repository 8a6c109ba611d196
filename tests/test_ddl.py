"""Query-ready outputs: INT64 UTC timestamps, one sorted file per partition, and `vidspark ddl` run in Spark SQL and DuckDB."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from vidspark.cli import main
from vidspark.ddl import TABLES, ddl
from vidspark.errors import ConfigError
from vidspark.outputs import read_table
from vidspark.schemas import ERRORS_SCHEMA, FRAME_PREDICTIONS_SCHEMA


def statements(script: str) -> list[str]:
    """The script's statements, without comments (what a SQL console would run one by one)."""
    text = "\n".join(line.split("--", 1)[0] for line in script.splitlines())
    return [s.strip() for s in text.split(";") if s.strip()]


def partition_files(table: Path) -> dict[str, list[Path]]:
    return {f"{p.parent.name}/{p.name}": sorted(p.glob("*.parquet")) for p in table.glob("camera_id=*/date=*")}


@pytest.fixture(scope="module")
def output(demo_run) -> Path:
    return demo_run[0] / "output"


def test_timestamps_are_int64_micros_adjusted_to_utc(output):
    for folder, column in (("features", "frame_ts"), ("predictions/frames", "frame_ts"), ("predictions/videos", "start_ts"), ("errors", "last_modified")):
        f = next((output / folder).glob("camera_id=*/date=*/*.parquet"))
        schema = pq.ParquetFile(f).schema
        col = schema.column(schema.names.index(column))
        assert col.physical_type == "INT64", (folder, col)  # not Spark's default INT96
        assert col.logical_type.type == "TIMESTAMP" and '"timeUnit":"microseconds"' in col.logical_type.to_json().replace(" ", "")
        assert '"isAdjustedToUTC":true' in col.logical_type.to_json().replace(" ", "")
        assert str(pq.read_schema(f).field(column).type) == "timestamp[us, tz=UTC]"


def test_one_file_per_partition_sorted_by_video_and_time(output):
    for folder in ("features", "predictions/frames", "predictions/videos", "errors"):
        files = partition_files(output / folder)
        assert files and all(len(fs) == 1 for fs in files.values()), (folder, {k: len(v) for k, v in files.items()})
    for f in (fs[0] for fs in partition_files(output / "predictions/frames").values()):
        rows = pq.read_table(f, columns=["video_id", "frame_ts", "frame_idx"]).to_pylist()
        keys = [(r["video_id"] or "", r["frame_ts"], r["frame_idx"]) for r in rows]
        assert keys == sorted(keys), f


def test_target_file_size_cuts_a_partition_into_files(spark, tmp_path):
    from vidspark.outputs import replace_partitions, rows_per_file

    df = spark.range(1000).select(F.lit("cam1").alias("camera_id"), F.lit("2026-11-20").cast("date").alias("date"), F.col("id").alias("frame_idx"), (F.col("id") % 7).cast("string").alias("video_id"))
    replace_partitions(spark, df, str(tmp_path / "t"), run_id="r1", max_rows_per_file=300)
    files = partition_files(tmp_path / "t")
    assert [len(v) for v in files.values()] == [4]  # 1000 rows at 300 a file
    assert sum(pq.read_metadata(f).num_rows for f in files["camera_id=cam1/date=2026-11-20"]) == 1000
    assert rows_per_file(128, row_bytes=8_600) == 15_606 and rows_per_file(0.0001) == 1


def test_rows_carry_model_run_and_framework(spark, output):
    frames = read_table(spark, str(output / "predictions/frames"), FRAME_PREDICTIONS_SCHEMA)
    meta = json.loads((output / "model" / "model.json").read_text())
    lineage = frames.select("model_id", "run_id").distinct().collect()
    assert len(lineage) == 1 and lineage[0]["model_id"] == meta["model_txt_sha256"] and lineage[0]["run_id"]
    row = frames.where(F.col("video_id").isNotNull()).first()
    assert list(row["probabilities"]) == meta["classes"]  # class names, in the model's order
    assert sum(row["probabilities"].values()) == pytest.approx(1.0)
    feats = spark.read.parquet(str(output / "features")).select("framework").distinct().collect()
    assert [r[0] for r in feats] and all(re.fullmatch(r"tensorflow \S+, keras \S+", r[0]) for r in feats)


def test_spark_sql_ddl_creates_queryable_tables(spark, output):
    script = ddl(str(output), engine="spark", database="ddl_spark")
    try:
        for stmt in statements(script):
            spark.sql(stmt)
        for name, (folder, _schema) in TABLES.items():
            assert spark.sql(f"SELECT count(*) FROM ddl_spark.{name}").first()[0] == spark.read.parquet(str(output / folder)).count(), name
        cls = next(iter(spark.table("ddl_spark.frame_predictions").first()["probabilities"]))
        got = spark.sql(f"SELECT camera_id, count(*) AS n, avg(probabilities['{cls}']) AS p FROM ddl_spark.frame_predictions WHERE `date` >= DATE'2000-01-01' GROUP BY camera_id").collect()
        assert {r["camera_id"] for r in got} == {"cam1", "cam2", "cam3"} and all(0 <= r["p"] <= 1 for r in got)
        latest = spark.sql("SELECT run_id FROM ddl_spark.errors ORDER BY run_id DESC LIMIT 1").first()[0]
        by_stage = spark.sql(f"SELECT stage, count(*) FROM ddl_spark.errors WHERE run_id = '{latest}' GROUP BY stage").collect()
        assert dict(by_stage) == {"decode": 3}
    finally:
        spark.sql("DROP DATABASE IF EXISTS ddl_spark CASCADE")


def test_duckdb_ddl_creates_views_with_utc_instants(spark, output):
    import duckdb

    con = duckdb.connect()
    for stmt in statements(ddl(str(output), engine="duckdb")):
        con.execute(stmt)
    for name, (folder, _schema) in TABLES.items():
        assert con.execute(f"SELECT count(*) FROM vidspark_{name}").fetchone()[0] == spark.read.parquet(str(output / folder)).count(), name
    types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE vidspark_frame_predictions)").fetchall())
    assert types["frame_ts"] == "TIMESTAMP WITH TIME ZONE" and types["date"] == "DATE" and types["probabilities"] == "MAP(VARCHAR, DOUBLE)"
    first = spark.read.parquet(str(output / "predictions/frames")).agg(F.min("frame_ts")).first()[0]
    con.execute("SET TimeZone = 'UTC'")
    assert con.execute("SELECT min(frame_ts) FROM vidspark_frame_predictions").fetchone()[0].replace(tzinfo=None) == first.replace(tzinfo=None)
    assert con.execute("SELECT count(*) FROM vidspark_errors WHERE stage = 'decode' AND last_modified IS NOT NULL").fetchone()[0] == 3


def test_athena_and_trino_statements(output, capsys):
    assert main(["ddl", "--output", str(output), "--engine", "athena"]) == 0
    athena = capsys.readouterr().out
    assert "MSCK" not in athena and athena.count("CREATE EXTERNAL TABLE") == len(TABLES)
    assert "'projection.camera_id.values'='cam1,cam2,cam3,unknown'" in athena  # every camera folder of every table
    dates = sorted(p.name[len("date=") :] for t in ("features", "errors", "predictions/frames", "predictions/videos") for p in (output / t).glob("camera_id=*/date=*"))
    assert f"'projection.date.range'='{dates[0]},NOW'" in athena
    assert "PARTITIONED BY (`camera_id` string, `date` date)" in athena and "`probabilities` map<string,double>" in athena
    trino = ddl("s3a://bucket/out", engine="trino")
    assert "external_location = 's3://bucket/out/features'" in trino and "partitioned_by = ARRAY['camera_id', 'date']" in trino
    # Trino's partition columns come last, in partition order
    cols = re.search(r"hive\.vidspark\.errors \((.*?)\n\)", trino, re.S).group(1).split(",\n")
    assert [c.strip().split()[0] for c in cols][-2:] == ['"camera_id"', '"date"'] and len(cols) == len(ERRORS_SCHEMA.fields)
    injected = ddl("s3://b/o", engine="athena", cameras=None)
    assert "'projection.camera_id.type'='injected'" in injected


def test_unknown_engine_or_table_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["ddl", "--output", "/tmp/x", "--engine", "oracle"])
    assert exc.value.code == 2 and "invalid choice: 'oracle'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown table"):
        ddl("/tmp/x", tables=["features", "nope"])


def test_athena_cameras_and_dates_are_listed_on_s3(s3_client, bucket, s3_endpoint):
    from vidspark.cli import _names_lister
    from vidspark.config import load_conf
    from vidspark.ddl import found_partitions

    for key in ("out/features/camera_id=cam%2F1/date=2026-11-19/p.parquet", "out/errors/camera_id=cam2/date=2026-11-21/p.parquet", "out/features/_SUCCESS"):
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"x")
    conf = load_conf(None, [f"storage.endpoint_url={s3_endpoint}"])
    assert found_partitions(_names_lister(f"s3a://{bucket}/out", conf)) == (["cam/1", "cam2"], "2026-11-19")
    assert found_partitions(_names_lister("hdfs://nn/out", conf)) == ([], None)  # not listable here: Athena injects the camera
