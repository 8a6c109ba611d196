"""An Amazon S3 Inventory report as the listing of an input, in place of a live LIST.

A bucket of a billion objects takes hours to LIST; S3 (and stores that copy its Inventory feature)
writes a daily or weekly report instead. Its layout, as AWS documents it ("Locating your inventory
list", "Cataloging and analyzing your data with S3 Inventory")::

    destination-prefix/source-bucket/config-ID/YYYY-MM-DDTHH-MMZ/manifest.json   (+ manifest.checksum)
    destination-prefix/source-bucket/config-ID/data/<uuid>.csv.gz | .orc | .parquet

``manifest.json`` names the source bucket, the format (``CSV``: gzip, no header, keys URL-encoded with
a space as ``+``; ``ORC``; ``Parquet``), the columns (``fileSchema``) and the data files. The driver
reads only the manifest; the data files, whose rows are proportional to the number of objects, are
read and filtered on the executors, one task per file, and never collected.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

import pandas as pd

from vidspark.config import StorageConf
from vidspark.errors import ConfigError, StorageError
from vidspark.schemas import LISTING_SCHEMA
from vidspark.storage import cached_s3_client, endpoint_of, get_object_bytes, read_object, split_s3_uri

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

logger = logging.getLogger(__name__)

FORMATS = ("CSV", "ORC", "Parquet")
BATCH_ROWS = 50_000  # rows per pandas batch handed back to Spark
_LISTING_COLUMNS = LISTING_SCHEMA.fieldNames()
# Columns of the report a listing uses; the rest (storage class, encryption, ACL...) are never read.
_WANTED = ("bucket", "key", "size", "last_modified_date", "e_tag", "is_latest", "is_delete_marker")
_FILES_SCHEMA = "uri string, size long, md5 string"


@dataclass(frozen=True)
class InventoryManifest:
    """One S3 Inventory report, as its ``manifest.json`` describes it.

    ``files``, ``file_sizes`` and ``file_md5s`` are parallel: a data file's URI, the size and the MD5
    the manifest gives for it (``-1`` / ``""`` where the manifest has none).
    """

    uri: str  # the manifest.json URI
    source_bucket: str
    file_format: str  # "CSV" | "ORC" | "Parquet"
    fields: tuple[str, ...]  # snake_case column names: file order for CSV, as declared for ORC/Parquet
    files: tuple[str, ...]  # s3://bucket/key of each data file, or local paths for a local manifest
    created: datetime | None  # UTC
    file_sizes: tuple[int, ...] = ()
    file_md5s: tuple[str, ...] = ()


def read_manifest(manifest_uri: str, client: Any | None, *, check_files: bool = True) -> InventoryManifest:
    """Read and check an S3 Inventory ``manifest.json`` (driver side, before any Spark work).

    Parameters
    ----------
    manifest_uri
        ``s3://bucket/.../YYYY-MM-DDTHH-MMZ/manifest.json``, or the path of a local copy. The data files
        are looked for beside it: in the bucket that holds the manifest (the report's destination bucket,
        or a replica of it), or, for a local copy, under the manifest's ``config-ID`` folder (``../data/``).
    client
        A boto3 S3 client for an ``s3://`` manifest; ``None`` for a local one.
    check_files
        Check that every data file exists with the size the manifest gives (one HEAD each, 16 at a time),
        so that an expired or half-copied report fails here rather than in a Spark task.

    Returns
    -------
    InventoryManifest

    Raises
    ------
    StorageError
        The manifest or a data file cannot be read, is missing, has another size than the manifest says,
        or ``manifest.json`` does not match its ``manifest.checksum``.
    ConfigError
        The file is not an inventory manifest vidspark can use: not JSON, a format other than CSV, ORC or
        Parquet, no ``Key`` column in ``fileSchema``, or no data files listed.
    """
    is_s3 = manifest_uri.startswith(("s3://", "s3a://", "s3n://"))
    if is_s3:
        manifest_uri = "s3://" + manifest_uri.split("://", 1)[1]
        if client is None:
            raise StorageError(f"inventory manifest {manifest_uri}: an S3 manifest needs an S3 client")
    else:
        manifest_uri = str(Path(manifest_uri).expanduser().resolve())
    raw = _read_manifest_bytes(manifest_uri, client)
    _check_checksum(manifest_uri, client, raw)
    try:
        doc = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"inventory manifest {manifest_uri} is not JSON ({exc}); expected the manifest.json of an S3 Inventory report") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"inventory manifest {manifest_uri}: expected a JSON object with sourceBucket, fileFormat, fileSchema and files, found {type(doc).__name__}")

    source_bucket = str(doc.get("sourceBucket") or "").strip()
    if not source_bucket:
        raise ConfigError(f"inventory manifest {manifest_uri} has no sourceBucket; expected the manifest.json of an S3 Inventory report")
    file_format = _normalize_format(doc.get("fileFormat"), manifest_uri)
    fields = parse_file_schema(str(doc.get("fileSchema") or ""), file_format)
    if "key" not in fields:
        raise ConfigError(f"inventory manifest {manifest_uri}: fileSchema {doc.get('fileSchema')!r} has no Key column; a listing needs the object keys")
    missing_optional = [f for f in ("size", "last_modified_date", "e_tag") if f not in fields]
    if missing_optional:
        logger.info("inventory %s has no %s column(s); those listing columns will be null", manifest_uri, ", ".join(missing_optional))

    entries = doc.get("files")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(
            f"inventory manifest {manifest_uri} lists no data files ('files' is {'missing' if entries is None else repr(entries)[:80]}); "
            "an empty report would look like an empty bucket, so it is refused: use the manifest of a complete report"
        )
    keys, sizes, md5s = [], [], []
    for i, entry in enumerate(entries):
        key = entry.get("key") if isinstance(entry, dict) else None
        if not isinstance(key, str) or not key:
            raise ConfigError(f"inventory manifest {manifest_uri}: files[{i}] has no key; expected {{'key': ..., 'size': ..., 'MD5checksum': ...}}")
        keys.append(key)
        sizes.append(_int_or(entry.get("size"), -1))
        md5s.append(str(entry.get("MD5checksum") or "").strip().lower())
    files = _data_file_uris(manifest_uri, keys, doc.get("destinationBucket"))
    manifest = InventoryManifest(
        uri=manifest_uri,
        source_bucket=source_bucket,
        file_format=file_format,
        fields=fields,
        files=tuple(files),
        created=_created(doc.get("creationTimestamp")),
        file_sizes=tuple(sizes),
        file_md5s=tuple(md5s),
    )
    if check_files:
        _check_data_files(manifest, client)
    logger.info("inventory %s: bucket %s, %s, %d data files, created %s", manifest_uri, source_bucket, file_format, len(files), manifest.created.isoformat() if manifest.created else "?")
    return manifest


def inventory_listing(spark: SparkSession, manifest: InventoryManifest, sconf: StorageConf, *, bucket: str, prefix: str, parallelism: int | None = None) -> DataFrame:
    """The objects of ``s3://bucket/prefix`` that an inventory report lists, as a listing DataFrame.

    The data files are read on the executors (one row, and at most one task, per file); nothing
    proportional to the number of objects reaches the driver.

    Parameters
    ----------
    spark
        The session.
    manifest
        From :func:`read_manifest`.
    sconf
        Storage settings the executors build their S3 client from.
    bucket
        The input's bucket; must be the report's source bucket.
    prefix
        The input's key prefix (``""``: the whole bucket); only keys under ``prefix + "/"`` are kept.
    parallelism
        Tasks at most (default: ``spark.sparkContext.defaultParallelism``); never more than files.

    Returns
    -------
    DataFrame
        :data:`vidspark.schemas.LISTING_SCHEMA`: ``uri`` (``s3://bucket/key``), ``key`` relative to the prefix,
        ``size``, ``etag`` without quotes, ``last_modified`` (UTC). Folder markers (keys ending in ``/``)
        are dropped; in a report of all versions, only current versions that are not delete markers are kept.

    Raises
    ------
    StorageError
        The report is of another bucket. (A data file that cannot be read fails its Spark task with a
        StorageError naming the file.)
    """
    if manifest.source_bucket != bucket:
        raise StorageError(
            f"inventory {manifest.uri} lists bucket {manifest.source_bucket!r}, but the input is bucket {bucket!r}: use the inventory report of {bucket!r} or an input in {manifest.source_bucket!r}"
        )
    if manifest.file_format not in FORMATS:
        raise ConfigError(f"inventory {manifest.uri}: file format {manifest.file_format!r} is not supported; expected one of {', '.join(FORMATS)}")
    key_prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    n_files = len(manifest.files)
    n_tasks = max(1, min(n_files, parallelism or spark.sparkContext.defaultParallelism))
    sizes = manifest.file_sizes if len(manifest.file_sizes) == n_files else (-1,) * n_files
    md5s = manifest.file_md5s if len(manifest.file_md5s) == n_files else ("",) * n_files
    rows = [(uri, size if size >= 0 else None, md5 or None) for uri, size, md5 in zip(manifest.files, sizes, md5s, strict=True)]
    # parallelize's slices spread the files evenly over the tasks (a round-robin repartition may put two in one)
    files_df = spark.createDataFrame(spark.sparkContext.parallelize(rows, n_tasks), schema=_FILES_SCHEMA)
    fn = make_listing_fn(file_format=manifest.file_format, fields=manifest.fields, sconf=sconf, bucket=bucket, key_prefix=key_prefix)
    return files_df.mapInPandas(fn, schema=LISTING_SCHEMA)


def make_listing_fn(*, file_format: str, fields: tuple[str, ...], sconf: StorageConf, bucket: str, key_prefix: str) -> Any:
    """The ``mapInPandas`` function: data-file rows (uri, size, md5) in, LISTING_SCHEMA batches out."""

    def listing(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            for uri, md5 in zip(pdf["uri"], pdf["md5"], strict=True):
                data = _fetch(uri, sconf, md5 if isinstance(md5, str) else None)
                tables = read_data_file(data, file_format, fields, uri=uri)
                frames = (_listing_frame_of(t, uri, bucket=bucket, key_prefix=key_prefix, url_encoded=file_format == "CSV") for t in tables)
                yield from rebatch(frames, BATCH_ROWS)

    return listing


def parse_file_schema(file_schema: str, file_format: str) -> tuple[str, ...]:
    """The column names a manifest's ``fileSchema`` declares, in snake_case.

    CSV: ``"Bucket, Key, Size, LastModifiedDate, ETag"`` -> ``bucket, key, size, last_modified_date, e_tag``.
    ORC: ``"struct<bucket:string,key:string,...>"``. Parquet: ``"message s3.inventory { required binary bucket (UTF8); ... }"``.
    """
    text = file_schema.strip()
    if not text:
        return ()
    if text.lower().startswith("struct<"):
        names = re.findall(r"[<,]\s*`?([A-Za-z_][\w]*)`?\s*:", text)
    elif text.lower().startswith("message"):
        body = text[text.find("{") + 1 : text.rfind("}")] if "{" in text else ""
        names = re.findall(r"(?:required|optional|repeated)\s+\S+\s+([A-Za-z_][\w]*)", body)
    else:
        names = [n.strip().strip('"') for n in text.split(",")]
    return tuple(snake_case(n) for n in names if n)


def snake_case(name: str) -> str:
    """``LastModifiedDate`` -> ``last_modified_date``, ``ETag`` -> ``e_tag``; snake_case names unchanged."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name.strip()).lower()


def read_data_file(data: bytes, file_format: str, fields: tuple[str, ...], *, uri: str = "") -> Iterator[pa.Table]:
    """The rows of one inventory data file, in tables of at most :data:`BATCH_ROWS` rows, only the columns a listing uses.

    Raises
    ------
    StorageError
        The bytes are not a readable file of that format (naming ``uri``).
    """
    import pyarrow as pa

    try:
        if file_format == "CSV":
            yield from _read_csv(data, fields)
        elif file_format == "ORC":
            from pyarrow import orc

            orc_file = orc.ORCFile(io.BytesIO(data))
            columns = _present(orc_file.schema.names)
            for i in range(orc_file.nstripes):
                yield from _chunks(_renamed(orc_file.read_stripe(i, columns=columns)))
        elif file_format == "Parquet":
            import pyarrow.parquet as pq

            pq_file = pq.ParquetFile(io.BytesIO(data))
            columns = _present(pq_file.schema_arrow.names)
            for rb in pq_file.iter_batches(batch_size=BATCH_ROWS, columns=columns):
                yield _renamed(pa.Table.from_batches([rb]))
        else:
            raise ConfigError(f"inventory data file {uri}: file format {file_format!r} is not supported; expected one of {', '.join(FORMATS)}")
    except (pa.ArrowException, OSError, EOFError) as exc:
        raise StorageError(f"inventory data file {uri} is not a readable {file_format} file: {type(exc).__name__}: {exc}") from exc


def listing_frame(table: pa.Table, *, bucket: str, key_prefix: str, url_encoded: bool) -> pd.DataFrame:
    """LISTING_SCHEMA rows of one table of inventory rows: the current objects of ``bucket`` under ``key_prefix``, no folder markers."""
    import pyarrow as pa
    import pyarrow.compute as pc

    keep = None
    if "bucket" in table.column_names:
        keep = pc.equal(table["bucket"], bucket)
    if "is_latest" in table.column_names:  # a report of all versions: the current version only
        latest = pc.fill_null(_as_bool(table["is_latest"]), True)
        keep = latest if keep is None else pc.and_(keep, latest)
    if "is_delete_marker" in table.column_names:
        live = pc.invert(pc.fill_null(_as_bool(table["is_delete_marker"]), False))
        keep = live if keep is None else pc.and_(keep, live)
    if not url_encoded:  # keys as stored: filter before anything is converted
        under = pc.and_(pc.starts_with(table["key"], key_prefix), pc.invert(pc.ends_with(table["key"], "/")))
        keep = under if keep is None else pc.and_(keep, under)
    if keep is not None:
        table = table.filter(pc.fill_null(keep, False))
    keys = pd.Series(table["key"].to_pandas(), dtype=object).reset_index(drop=True)
    if url_encoded:
        keys = decode_keys(keys)
        under_mask = (keys.str.startswith(key_prefix) & ~keys.str.endswith("/")).to_numpy(dtype=bool)
        keys = keys[under_mask].reset_index(drop=True)
        table = table.filter(pa.array(under_mask))
    n = table.num_rows
    out = pd.DataFrame(
        {
            "uri": ("s3://" + bucket + "/") + keys,
            "key": keys.str.slice(len(key_prefix)),
            "size": _column(table, "size", n).astype("Int64"),
            "etag": _column(table, "e_tag", n).str.strip('"'),
            "last_modified": _utc(_column(table, "last_modified_date", n)),
        },
        columns=_LISTING_COLUMNS,
    )
    return out


def _listing_frame_of(table: pa.Table, uri: str, **kwargs: Any) -> pd.DataFrame:
    """:func:`listing_frame`, a value that does not convert (a size that is no number, a bad time) named with its file."""
    import pyarrow as pa

    try:
        return listing_frame(table, **kwargs)
    except (pa.ArrowException, ValueError) as exc:
        raise StorageError(f"inventory data file {uri} has a value vidspark cannot read: {type(exc).__name__}: {exc}") from exc


def decode_keys(keys: pd.Series) -> pd.Series:
    """Keys of a CSV report decoded: URL-encoding with a space as ``+`` (a ``+`` of the key is ``%2B``)."""
    coded = keys.str.contains(r"[%+]", regex=True).fillna(False).to_numpy(dtype=bool)
    if not coded.any():
        return keys
    keys = keys.copy()
    keys[coded] = [unquote_plus(k) for k in keys[coded]]
    return keys


def rebatch(frames: Iterable[pd.DataFrame], rows: int) -> Iterator[pd.DataFrame]:
    """The rows of ``frames`` again, in frames of ``rows`` rows (the last one shorter); empty frames skipped."""
    pending: list[pd.DataFrame] = []
    held = 0
    for frame in frames:
        if not len(frame):
            continue
        pending.append(frame)
        held += len(frame)
        if held >= rows:
            merged = pd.concat(pending, ignore_index=True)
            full = len(merged) - len(merged) % rows
            for start in range(0, full, rows):
                yield merged.iloc[start : start + rows].reset_index(drop=True)
            pending = [merged.iloc[full:].reset_index(drop=True)] if full < len(merged) else []
            held = len(merged) - full
    if held:
        yield pd.concat(pending, ignore_index=True)


# -- driver-side helpers ------------------------------------------------------------------------


def _read_manifest_bytes(manifest_uri: str, client: Any) -> bytes:
    """The manifest's bytes, or a StorageError naming it and why it cannot be read."""
    if not manifest_uri.startswith("s3://"):
        try:
            return Path(manifest_uri).read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read the inventory manifest {manifest_uri}: {exc.strerror or exc}; check the --inventory path") from exc
    bucket, key = split_s3_uri(manifest_uri)
    try:
        return get_object_bytes(client, bucket=bucket, key=key)
    except Exception as exc:  # botocore's ClientError/BotoCoreError, a cut-off body: all mean "cannot read it"
        raise StorageError(f"cannot read the inventory manifest {manifest_uri} at {endpoint_of(client)}: {_s3_reason(exc)}; check the --inventory URI and s3:GetObject on it") from exc


def _check_checksum(manifest_uri: str, client: Any, raw: bytes) -> None:
    """Compare with ``manifest.checksum`` (the MD5 of manifest.json) where the report has one beside the manifest."""
    if not manifest_uri.endswith("manifest.json"):
        return
    checksum_uri = manifest_uri[: -len("json")] + "checksum"
    try:
        if checksum_uri.startswith("s3://"):
            bucket, key = split_s3_uri(checksum_uri)
            expected = get_object_bytes(client, bucket=bucket, key=key, attempts=1)
        else:
            expected = Path(checksum_uri).read_bytes()
    except Exception:  # no checksum beside it (a copy, another store): nothing to compare
        logger.debug("no %s; manifest not checksummed", checksum_uri)
        return
    want = expected.decode("ascii", "replace").strip().lower()
    got = hashlib.md5(raw, usedforsecurity=False).hexdigest()
    if want and want != got:
        raise StorageError(
            f"inventory manifest {manifest_uri} does not match its manifest.checksum (MD5 {got}, checksum file says {want}): the report is being written or was modified; use a complete one"
        )


def _normalize_format(value: Any, manifest_uri: str) -> str:
    by_lower = {f.lower(): f for f in FORMATS}
    fmt = by_lower.get(str(value or "").strip().lower())
    if fmt is None:
        raise ConfigError(f"inventory manifest {manifest_uri}: fileFormat {value!r} is not supported; expected one of {', '.join(FORMATS)}")
    return fmt


def _data_file_uris(manifest_uri: str, keys: list[str], destination: Any) -> list[str]:
    """Where the data files are: in the manifest's own bucket, or for a local copy under its config-ID folder."""
    if manifest_uri.startswith("s3://"):
        bucket, _ = split_s3_uri(manifest_uri)
        dest = str(destination or "").removeprefix("arn:aws:s3:::")
        if dest and dest != bucket:
            logger.info("inventory %s names destination bucket %r; reading its data files from %r, where the manifest is (a copy or replica)", manifest_uri, dest, bucket)
        return [f"s3://{bucket}/{key}" for key in keys]
    config_dir = Path(manifest_uri).parent.parent  # .../config-ID/YYYY-MM-DDTHH-MMZ/manifest.json
    paths = []
    for key in keys:
        cut = key.rfind("/data/") + 1  # the last one: a destination prefix may hold a "data" folder too
        if cut or key.startswith("data/"):
            paths.append(str(config_dir / key[cut:]))
        else:  # not the documented layout: the bucket mirrored above the manifest, else beside it
            found = next((a / key for a in Path(manifest_uri).parents if (a / key).is_file()), None)
            paths.append(str(found or Path(manifest_uri).parent / key.rsplit("/", 1)[-1]))
    return paths


def _check_data_files(manifest: InventoryManifest, client: Any) -> None:
    """StorageError naming the data files that are missing or have another size than the manifest says."""

    def problem(i: int) -> str | None:
        uri, want = manifest.files[i], manifest.file_sizes[i]
        try:
            if uri.startswith("s3://"):
                bucket, key = split_s3_uri(uri)
                size = int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
            else:
                size = Path(uri).stat().st_size
        except Exception as exc:  # ClientError 404/403, OSError
            return f"{uri} ({_s3_reason(exc) if uri.startswith('s3://') else 'missing'})"
        return f"{uri} ({size} bytes, manifest says {want})" if want >= 0 and size != want else None

    with ThreadPoolExecutor(max_workers=min(16, len(manifest.files))) as pool:
        problems = [p for p in pool.map(problem, range(len(manifest.files))) if p]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise StorageError(
            f"inventory {manifest.uri}: {len(problems)} of {len(manifest.files)} data files cannot be read as listed: {shown}. "
            "The report may have expired or be incompletely copied: use a newer manifest.json"
        )


def _s3_reason(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{code}" if code in ("404", "NoSuchKey", "NoSuchBucket", "403", "AccessDenied") else f"{code}: {exc}"
    return f"{type(exc).__name__}: {exc}"


def _created(value: Any) -> datetime | None:
    millis = _int_or(value, -1)
    return datetime.fromtimestamp(millis / 1000, tz=timezone.utc) if millis >= 0 else None


def _int_or(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


# -- executor-side helpers ----------------------------------------------------------------------


def _fetch(uri: str, sconf: StorageConf, md5: str | None) -> bytes:
    """A data file's bytes, checked against the manifest's MD5 where it gives one."""
    try:
        data = read_object(uri, client=cached_s3_client(sconf) if uri.startswith("s3://") else None, attempts=sconf.max_attempts)
    except Exception as exc:
        raise StorageError(f"cannot read inventory data file {uri}: {_s3_reason(exc)}; the report may have expired, use a newer manifest.json") from exc
    if md5 and len(md5) == 32 and hashlib.md5(data, usedforsecurity=False).hexdigest() != md5:
        raise StorageError(f"inventory data file {uri} does not match the MD5 its manifest gives ({md5}): it was replaced or is damaged; use a newer manifest.json")
    return data


def _read_csv(data: bytes, fields: tuple[str, ...]) -> Iterator[pa.Table]:
    """Stream a gzip CSV report (no header; columns named by the manifest) as tables, every listing column typed."""
    import pyarrow as pa
    from pyarrow import csv

    wanted = [f for f in _WANTED if f in fields]
    # strings, then cast: a timestamp without a zone, or an odd boolean spelling, must not fail the whole file
    read_opts = csv.ReadOptions(column_names=list(fields), block_size=4 << 20)
    convert_opts = csv.ConvertOptions(column_types=dict.fromkeys(wanted, pa.string()), include_columns=wanted, strings_can_be_null=True)
    compression = "gzip" if data[:2] == b"\x1f\x8b" else None  # AWS always gzips; a plain copy reads too
    stream = pa.input_stream(pa.BufferReader(data), compression=compression)
    for batch in csv.open_csv(stream, read_options=read_opts, convert_options=convert_opts):
        yield from _chunks(pa.Table.from_batches([batch]))


def _present(names: list[str]) -> list[str]:
    """The file's own columns a listing uses (matched case-insensitively)."""
    return [n for n in names if n.lower() in _WANTED]


def _renamed(table: pa.Table) -> pa.Table:
    return table.rename_columns([n.lower() for n in table.column_names])


def _chunks(table: pa.Table) -> Iterator[pa.Table]:
    for start in range(0, table.num_rows, BATCH_ROWS):
        yield table.slice(start, BATCH_ROWS)


def _as_bool(col: Any) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_boolean(col.type):
        return col
    return pc.equal(pc.utf8_lower(pc.utf8_trim_whitespace(pc.cast(col, pa.string()))), "true")


def _column(table: pa.Table, name: str, n: int) -> pd.Series:
    """One column as pandas (nullable), or all-null when the report lacks it."""
    if name not in table.column_names:
        return pd.Series([None] * n, dtype=object)
    import pyarrow as pa

    col = table[name]
    if name == "size":
        return pd.Series(col.cast(pa.int64()).to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)).reset_index(drop=True)
    if name == "last_modified_date" and pa.types.is_string(col.type):
        with contextlib.suppress(pa.ArrowInvalid):  # AWS's "2024-08-21T15:28:26.000Z" Arrow parses (fast); other ISO 8601 goes to pandas
            col = col.cast(pa.timestamp("ms", tz="UTC"))
    return pd.Series(col.to_pandas()).reset_index(drop=True)


def _utc(values: pd.Series) -> pd.Series:
    """Timestamps as tz-aware UTC: Spark converts those exactly, whatever the session time zone.

    A naive value is taken as UTC: AWS writes CSV times with ``Z`` and ORC/Parquet times in UTC.
    """
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        ts = values.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(values.dtype):
        ts = values.dt.tz_localize("UTC")
    else:
        ts = pd.to_datetime(values, utc=True, format="ISO8601")
    return ts.astype("datetime64[us, UTC]")
