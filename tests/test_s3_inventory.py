"""S3 Inventory reports as a listing: CSV (gzip, URL-encoded keys), ORC and Parquet, on the moto S3 server.

The reports are written here in AWS's documented layout from what the server itself says about the
objects (ListObjectVersions for a report of all versions, ListObjectsV2 for one of current versions),
and the listing read from them is compared with ListObjectsV2 over the same prefix.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote_plus

import pandas as pd
import pyarrow as pa
import pyarrow.orc as orc
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from vidspark.config import StorageConf
from vidspark.errors import ConfigError, StorageError
from vidspark.s3_inventory import InventoryManifest, decode_keys, inventory_listing, parse_file_schema, read_manifest, rebatch
from vidspark.schemas import LISTING_SCHEMA
from vidspark.storage import make_s3_client

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
PREFIX = "cams"
OBJECTS = {
    "cams/cam1/frame 001.jpg": b"a" * 11,
    "cams/cam1/été+ñ 2.jpg": b"b" * 12,  # unicode, a space and a literal "+"
    "cams/cam2/": b"",  # folder marker
    "cams/cam2/100% clip.mp4": b"c" * 13,
    "camsX/outside.jpg": b"d" * 14,  # shares the prefix's characters, not its folder
    "other/b.jpg": b"e" * 15,
}
CSV_FIELDS = "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate, ETag, StorageClass"
ORC_SCHEMA = "struct<bucket:string,key:string,size:bigint,last_modified_date:timestamp,e_tag:string,storage_class:string>"
PARQUET_SCHEMA = (
    "message s3.inventory { required binary bucket (UTF8); required binary key (UTF8); optional binary version_id (UTF8); "
    "optional boolean is_latest; optional boolean is_delete_marker; optional int64 size; optional int64 last_modified_date (TIMESTAMP_MILLIS); "
    "optional binary e_tag (UTF8);}"
)


def micros(ts: datetime) -> int:
    return (ts - EPOCH) // timedelta(microseconds=1)


def put_report(client, dest: str, source: str, file_format: str, fields: str, files: list[tuple[str, bytes]], *, ts: str = "2026-01-02T01-00Z") -> str:
    """Put data files and a manifest.json (+ manifest.checksum) in the documented layout; returns the manifest URI."""
    base = f"inventories/{source}/{file_format.lower()}-daily"
    entries = []
    for ext, body in files:
        key = f"{base}/data/{uuid.uuid4()}.{ext}"
        client.put_object(Bucket=dest, Key=key, Body=body)
        entries.append({"key": key, "size": len(body), "MD5checksum": hashlib.md5(body).hexdigest()})
    manifest = {
        "sourceBucket": source,
        "destinationBucket": f"arn:aws:s3:::{dest}",
        "version": "2016-11-30",
        "creationTimestamp": "1767315600000",
        "fileFormat": file_format,
        "fileSchema": fields,
        "files": entries,
    }
    raw = json.dumps(manifest, indent=2).encode()
    client.put_object(Bucket=dest, Key=f"{base}/{ts}/manifest.json", Body=raw)
    client.put_object(Bucket=dest, Key=f"{base}/{ts}/manifest.checksum", Body=hashlib.md5(raw).hexdigest().encode())
    return f"s3://{dest}/{base}/{ts}/manifest.json"


def csv_report(source: str, versions: dict) -> list[tuple[str, bytes]]:
    """Two gzip CSV files of a report of all versions, every field quoted, keys URL-encoded ("/" kept in one, encoded in the other)."""
    rows = [
        [source, v["Key"], v["VersionId"], str(v["IsLatest"]).lower(), "false", str(v["Size"]), v["LastModified"].strftime("%Y-%m-%dT%H:%M:%S.000Z"), v["ETag"].strip('"'), "STANDARD"]
        for v in versions.get("Versions", [])
    ]
    rows += [[source, d["Key"], d["VersionId"], str(d["IsLatest"]).lower(), "true", "", d["LastModified"].strftime("%Y-%m-%dT%H:%M:%S.000Z"), "", ""] for d in versions.get("DeleteMarkers", [])]
    out = []
    for part, safe in ((rows[::2], "/"), (rows[1::2], "")):
        lines = [",".join(f'"{quote_plus(v, safe=safe) if i == 1 else v}"' for i, v in enumerate(r)) for r in part]
        out.append(("csv.gz", gzip.compress(("\n".join(lines) + "\n").encode())))
    return out


def orc_report(source: str, current: list[dict]) -> list[tuple[str, bytes]]:
    """One ORC file of current versions; times as naive UTC, as ORC's ``timestamp`` holds them."""
    table = pa.table(
        {
            "bucket": [source] * len(current),
            "key": [o["Key"] for o in current],
            "size": pa.array([o["Size"] for o in current], pa.int64()),
            "last_modified_date": pa.array([o["LastModified"].astimezone(timezone.utc).replace(tzinfo=None) for o in current], pa.timestamp("ms")),
            "e_tag": [o["ETag"].strip('"') for o in current],
            "storage_class": ["STANDARD"] * len(current),
        }
    )
    buf = io.BytesIO()
    orc.write_table(table, buf, compression="zlib")
    return [("orc", buf.getvalue())]


def parquet_table(source: str, rows: list[tuple]) -> pa.Table:
    """rows: (key, version_id, is_latest, is_delete_marker, size, last_modified, etag)."""
    cols = list(zip(*rows, strict=True))
    return pa.table(
        {
            "bucket": [source] * len(rows),
            "key": list(cols[0]),
            "version_id": list(cols[1]),
            "is_latest": pa.array(cols[2], pa.bool_()),
            "is_delete_marker": pa.array(cols[3], pa.bool_()),
            "size": pa.array(cols[4], pa.int64()),
            "last_modified_date": pa.array(cols[5], pa.timestamp("ms", tz="UTC")),
            "e_tag": list(cols[6]),
        }
    )


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="snappy")
    return buf.getvalue()


def parquet_report(source: str, versions: dict) -> list[tuple[str, bytes]]:
    rows = [(v["Key"], v["VersionId"], v["IsLatest"], False, v["Size"], v["LastModified"], v["ETag"].strip('"')) for v in versions.get("Versions", [])]
    rows += [(d["Key"], d["VersionId"], d["IsLatest"], True, None, d["LastModified"], None) for d in versions.get("DeleteMarkers", [])]
    return [("parquet", parquet_bytes(parquet_table(source, rows)))]


@pytest.fixture(scope="module")
def reports(s3_endpoint):
    """A versioned source bucket (a deleted object, an overwritten one) and its CSV, ORC and Parquet reports."""
    client = make_s3_client(StorageConf(endpoint_url=s3_endpoint))
    source, dest = f"src-{uuid.uuid4().hex[:8]}", f"inv-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=source)
    client.create_bucket(Bucket=dest)
    client.put_bucket_versioning(Bucket=source, VersioningConfiguration={"Status": "Enabled"})
    for key, body in OBJECTS.items():
        client.put_object(Bucket=source, Key=key, Body=body)
    client.put_object(Bucket=source, Key="cams/cam1/gone.jpg", Body=b"old")
    client.delete_object(Bucket=source, Key="cams/cam1/gone.jpg")  # a delete marker is its latest version
    client.put_object(Bucket=source, Key="cams/cam2/rewritten.jpg", Body=b"first version")
    client.put_object(Bucket=source, Key="cams/cam2/rewritten.jpg", Body=b"second, longer version")
    versions = client.list_object_versions(Bucket=source)
    assert versions.get("DeleteMarkers") and len(versions["Versions"]) == len(OBJECTS) + 3
    current = client.list_objects_v2(Bucket=source)["Contents"]
    manifests = {
        "CSV": put_report(client, dest, source, "CSV", CSV_FIELDS, csv_report(source, versions)),
        "ORC": put_report(client, dest, source, "ORC", ORC_SCHEMA, orc_report(source, current)),
        "Parquet": put_report(client, dest, source, "Parquet", PARQUET_SCHEMA, parquet_report(source, versions)),
    }
    return {"client": client, "source": source, "dest": dest, "manifests": manifests, "sconf": StorageConf(endpoint_url=s3_endpoint)}


def expected_listing(client, bucket: str, prefix: str) -> list[tuple]:
    """What ListObjectsV2 says under the prefix, as listing rows (uri, key, size, etag, last_modified in µs)."""
    key_prefix = prefix + "/" if prefix else ""
    rows = []
    for obj in client.list_objects_v2(Bucket=bucket, Prefix=key_prefix).get("Contents", []):
        if not obj["Key"].endswith("/"):
            rows.append((f"s3://{bucket}/{obj['Key']}", obj["Key"][len(key_prefix) :], obj["Size"], obj["ETag"].strip('"'), micros(obj["LastModified"])))
    return sorted(rows)


def listed(df) -> list[tuple]:
    return sorted(tuple(r) for r in df.select("uri", "key", "size", "etag", F.unix_micros("last_modified")).collect())


@pytest.mark.parametrize("file_format", ["CSV", "ORC", "Parquet"])
def test_listing_from_each_format_matches_list_objects(spark, reports, file_format):
    client, source = reports["client"], reports["source"]
    manifest = read_manifest(reports["manifests"][file_format], client)
    assert (manifest.source_bucket, manifest.file_format, manifest.created) == (source, file_format, datetime(2026, 1, 2, 1, 0, tzinfo=timezone.utc))
    assert all(uri.startswith(f"s3://{reports['dest']}/inventories/{source}/") for uri in manifest.files)
    assert manifest.fields[:2] == ("bucket", "key")

    df = inventory_listing(spark, manifest, reports["sconf"], bucket=source, prefix=PREFIX)
    assert df.schema == LISTING_SCHEMA
    assert df.rdd.getNumPartitions() == len(manifest.files)
    rows = listed(df)
    assert rows == expected_listing(client, source, PREFIX)
    assert {r[1] for r in rows} == {"cam1/frame 001.jpg", "cam1/été+ñ 2.jpg", "cam2/100% clip.mp4", "cam2/rewritten.jpg"}
    assert dict((r[1], r[2]) for r in rows)["cam2/rewritten.jpg"] == len(b"second, longer version")


def test_csv_listing_of_whole_bucket_in_another_session_time_zone(spark, reports):
    client, source = reports["client"], reports["source"]
    manifest = read_manifest(reports["manifests"]["CSV"], client)
    before = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "America/New_York")
    try:
        df = inventory_listing(spark, manifest, reports["sconf"], bucket=source, prefix="", parallelism=1)
        assert df.rdd.getNumPartitions() == 1
        assert listed(df) == expected_listing(client, source, "")
    finally:
        spark.conf.set("spark.sql.session.timeZone", before)


def write_local_report(root: Path, source: str, file_format: str, fields: str, files: list[tuple[str, bytes]], *, md5: str | None = None) -> Path:
    """A local copy of one report's config-ID folder: ``root/<ts>/manifest.json`` and ``root/data/*``; keys as in the bucket."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "2026-01-02T01-00Z").mkdir(exist_ok=True)
    entries = []
    for i, (ext, body) in enumerate(files):
        name = f"part-{i}.{ext}"
        (root / "data" / name).write_bytes(body)
        entries.append({"key": f"inventories/{source}/daily/data/{name}", "size": len(body), "MD5checksum": md5 or hashlib.md5(body).hexdigest()})
    manifest = {"sourceBucket": source, "destinationBucket": "arn:aws:s3:::inv", "creationTimestamp": "1767315600000", "fileFormat": file_format, "fileSchema": fields, "files": entries}
    path = root / "2026-01-02T01-00Z" / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path


def test_local_copy_and_times_in_the_ambiguous_hour_of_the_session_time_zone(spark, tmp_path):
    # 05:30Z and 06:30Z are both 01:30 in New York on 2025-11-02 (clocks go back): naive local times would merge them.
    edt, est = datetime(2025, 11, 2, 5, 30, tzinfo=timezone.utc), datetime(2025, 11, 2, 6, 30, tzinfo=timezone.utc)
    rows = [("v/a.jpg", "1", True, False, 10, edt, "e1"), ("v/b.jpg", "1", True, False, 20, est, "e2"), ("v/c.jpg", "1", False, False, 30, est, "e3")]
    path = write_local_report(tmp_path, "archive", "Parquet", PARQUET_SCHEMA, [("parquet", parquet_bytes(parquet_table("archive", rows)))])
    manifest = read_manifest(str(path), None)
    assert manifest.files == (str(tmp_path / "data" / "part-0.parquet"),)
    before = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "America/New_York")
    try:
        got = listed(inventory_listing(spark, manifest, StorageConf(), bucket="archive", prefix="v/"))
    finally:
        spark.conf.set("spark.sql.session.timeZone", before)
    assert got == [("s3://archive/v/a.jpg", "a.jpg", 10, "e1", micros(edt)), ("s3://archive/v/b.jpg", "b.jpg", 20, "e2", micros(est))]


def test_report_without_optional_columns_gives_nulls(spark, tmp_path):
    body = gzip.compress(b'"archive","v%2Fa+b.jpg"\n"archive","v%2F"\n"archive","w%2Fc.jpg"\n')
    manifest = read_manifest(str(write_local_report(tmp_path, "archive", "CSV", "Bucket, Key", [("csv.gz", body)])), None)
    rows = inventory_listing(spark, manifest, StorageConf(), bucket="archive", prefix="v").collect()
    assert [tuple(r) for r in rows] == [("s3://archive/v/a b.jpg", "a b.jpg", None, None, None)]


def test_file_schemas_as_aws_documents_them():
    assert parse_file_schema("Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate, ETag, ObjectLockRetainUntilDate", "CSV") == (
        "bucket",
        "key",
        "version_id",
        "is_latest",
        "is_delete_marker",
        "size",
        "last_modified_date",
        "e_tag",
        "object_lock_retain_until_date",
    )
    assert parse_file_schema(ORC_SCHEMA, "ORC") == ("bucket", "key", "size", "last_modified_date", "e_tag", "storage_class")
    assert parse_file_schema(PARQUET_SCHEMA, "Parquet") == ("bucket", "key", "version_id", "is_latest", "is_delete_marker", "size", "last_modified_date", "e_tag")


def write_manifest(tmp_path: Path, text: str) -> str:
    path = tmp_path / "manifest.json"
    path.write_text(text)
    return str(path)


GOOD = {"sourceBucket": "b", "fileFormat": "CSV", "fileSchema": "Bucket, Key, Size", "files": [{"key": "x/data/1.csv.gz", "size": 1, "MD5checksum": ""}]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"fileFormat": "JSON"}, r"fileFormat 'JSON' is not supported; expected one of CSV, ORC, Parquet"),
        ({"fileSchema": "Bucket, Size"}, r"has no Key column"),
        ({"files": []}, r"lists no data files"),
        ({"files": None}, r"lists no data files \('files' is missing\)"),
        ({"sourceBucket": None}, r"has no sourceBucket"),
    ],
)
def test_manifests_that_cannot_serve_as_a_listing(tmp_path, change, message):
    doc = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(ConfigError, match=message):
        read_manifest(write_manifest(tmp_path, json.dumps(doc)), None, check_files=False)


def test_unreadable_or_damaged_manifests(tmp_path, reports):
    with pytest.raises(ConfigError, match="is not JSON"):
        read_manifest(write_manifest(tmp_path, '{"sourceBucket": "b", "files": ['), None)
    with pytest.raises(StorageError, match="cannot read the inventory manifest .*nope"):
        read_manifest(str(tmp_path / "nope" / "manifest.json"), None)
    with pytest.raises(StorageError, match=rf"cannot read the inventory manifest s3://{reports['dest']}/missing/manifest.json .*NoSuchKey"):
        read_manifest(f"s3://{reports['dest']}/missing/manifest.json", reports["client"])
    path = write_manifest(tmp_path, json.dumps(GOOD))
    (tmp_path / "manifest.checksum").write_text("0" * 32)
    with pytest.raises(StorageError, match="does not match its manifest.checksum"):
        read_manifest(path, None, check_files=False)


def test_missing_data_file_is_named(spark, reports):
    client, source, dest = reports["client"], reports["source"], reports["dest"]
    good = read_manifest(reports["manifests"]["CSV"], client)
    doc = json.loads(client.get_object(Bucket=dest, Key=good.uri.split("/", 3)[3])["Body"].read())
    doc["files"].append({"key": f"inventories/{source}/csv-daily/data/expired.csv.gz", "size": 100, "MD5checksum": "0" * 32})
    client.put_object(Bucket=dest, Key="broken/2026-01-03T01-00Z/manifest.json", Body=json.dumps(doc).encode())
    uri = f"s3://{dest}/broken/2026-01-03T01-00Z/manifest.json"
    with pytest.raises(StorageError, match=r"1 of 3 data files cannot be read as listed: s3://.*/data/expired\.csv\.gz \((404|NoSuchKey)\)"):
        read_manifest(uri, client)
    # unchecked, the file's task fails naming it
    manifest = read_manifest(uri, client, check_files=False)
    with pytest.raises(Exception, match=r"cannot read inventory data file s3://.*/data/expired\.csv\.gz"):
        inventory_listing(spark, manifest, reports["sconf"], bucket=source, prefix=PREFIX).count()


def test_data_file_that_does_not_match_its_md5_fails(spark, tmp_path):
    rows = [("v/a.jpg", "1", True, False, 10, datetime(2026, 1, 1, tzinfo=timezone.utc), "e1")]
    path = write_local_report(tmp_path, "archive", "Parquet", PARQUET_SCHEMA, [("parquet", parquet_bytes(parquet_table("archive", rows)))], md5="0" * 32)
    manifest = read_manifest(str(path), None)
    with pytest.raises(Exception, match="does not match the MD5 its manifest gives"):
        inventory_listing(spark, manifest, StorageConf(), bucket="archive", prefix="v").count()


def test_report_of_another_bucket_is_refused(spark):
    manifest = InventoryManifest(uri="s3://inv/x/manifest.json", source_bucket="cctv-archive", file_format="CSV", fields=("bucket", "key"), files=("s3://inv/x/data/1.csv.gz",), created=None)
    with pytest.raises(StorageError, match=r"lists bucket 'cctv-archive', but the input is bucket 'cctv'"):
        inventory_listing(spark, manifest, StorageConf(), bucket="cctv", prefix="cams")


def test_csv_keys_decode_and_batches_regroup():
    # AWS URL-encodes CSV keys with a space as "+", so a "+" of the key arrives as %2B
    encoded = pd.Series(["cams/plain.jpg", "cams%2Fframe+001.jpg", "%C3%A9t%C3%A9%2B1.jpg", "100%25.mp4"], dtype=object)
    assert decode_keys(encoded).tolist() == ["cams/plain.jpg", "cams/frame 001.jpg", "été+1.jpg", "100%.mp4"]
    frames = [pd.DataFrame({"n": range(k)}) for k in (3, 0, 4, 5)]
    assert [len(f) for f in rebatch(frames, 5)] == [5, 5, 2]
    assert pd.concat(list(rebatch(frames, 5)))["n"].tolist() == [0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 4]
