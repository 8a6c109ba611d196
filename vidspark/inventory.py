"""Inventory: a listing parsed with the layout into work rows, selection and events, on the executors.

Everything that identifies a frame (camera, video, index, time) is decided here, over every listed
object and before ``--since/--until/--cameras`` narrow them, never from upload order, so that a
night's incremental run and a from-scratch run over the same archive agree. The listing is a Spark
DataFrame (:mod:`vidspark.listing`); so is everything here: the driver holds counts, not rows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from vidspark.layout import UNKNOWN_CAMERA, Layout, LayoutMismatch, TimeZones, natural_sort_text
from vidspark.listing import epoch_micros
from vidspark.schemas import WORK_SCHEMA
from vidspark.video_source import kind_of_key

_WORK_COLUMNS = WORK_SCHEMA.fieldNames()
_DAY_US = 86_400_000_000

PARSED_SCHEMA = T.StructType(
    [
        T.StructField("uri", T.StringType(), False),
        T.StructField("key", T.StringType(), False),
        T.StructField("etag", T.StringType(), True),
        T.StructField("size", T.LongType(), True),
        T.StructField("lm_us", T.LongType(), True),
        T.StructField("camera_id", T.StringType(), True),
        T.StructField("video_id", T.StringType(), True),
        T.StructField("frame_idx", T.LongType(), True),
        T.StructField("key_us", T.LongType(), True),
        T.StructField("key_day", T.DateType(), True),
        T.StructField("day_start_us", T.LongType(), True),  # the camera-local {date}'s start and end (UTC instants: a DST day has 23 or 25 hours)
        T.StructField("day_end_us", T.LongType(), True),
        T.StructField("label", T.StringType(), True),
        T.StructField("kind", T.StringType(), True),
        T.StructField("scope", T.StringType(), True),
        T.StructField("nk", T.StringType(), True),
        T.StructField("error", T.StringType(), True),
    ]
)


@dataclass(frozen=True)
class Selection:
    """Which listed objects a run takes: time window on the layout's ``{ts}`` (else ``{date}``, else last-modified), cameras.

    A key with ``{date}`` and no ``{ts}`` is taken when its day (the camera's local day) overlaps the window.
    """

    since: datetime | None = None
    until: datetime | None = None
    cameras: frozenset[str] | None = None

    def column(self) -> Column:
        """The selection as a Spark condition on parsed inventory rows (``frame_ts``, ``key_ts``, ``key_day``, ``day_start_us``, ``day_end_us``, ``camera_id``)."""
        cond = F.lit(True)
        if self.cameras is not None:
            cond = cond & F.col("camera_id").isin(sorted(self.cameras))
        point = F.unix_micros(F.col("frame_ts"))
        by_day = F.col("key_ts").isNull() & F.col("key_day").isNotNull()
        if self.since is not None:
            since = _micros(self.since)
            cond = cond & F.when(by_day, F.col("day_end_us") > since).otherwise(point >= since)
        if self.until is not None:
            until = _micros(self.until)
            cond = cond & F.when(by_day, F.col("day_start_us") < until).otherwise(point < until)
        return cond


def _micros(ts: datetime) -> int:
    ts = ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
    delta = ts.astimezone(timezone.utc) - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass
class Inventory:
    """What a listing holds, as DataFrames: the selected work rows and the keys that did not fit the layout.

    ``parsed`` and ``selected_flag`` are persisted (a listing is read once, its windows computed once);
    :meth:`counts` runs one small aggregation.
    """

    parsed: DataFrame
    rows: DataFrame  # WORK_SCHEMA, selected
    errors: DataFrame  # uri, stage, error_type, message
    selected_flag: DataFrame  # every parsed row that fits, with its ``_selected`` flag

    def count_aggregates(self) -> dict[str, DataFrame]:
        """The single-row aggregations behind :meth:`counts`, to run in one Spark job with others (:func:`collect_counts`)."""
        return {
            "inventory": self.selected_flag.agg(
                F.count(F.lit(1)).alias("fits"),
                F.sum(F.col("_selected").cast("long")).alias("selected"),
                F.sum((F.col("_selected") & (F.col("kind") == "video")).cast("long")).alias("videos"),
            ),
            "layout_errors": self.parsed.where(F.col("error").isNotNull()).agg(F.count(F.lit(1)).alias("n")),
        }

    @staticmethod
    def counts_from(found: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
        """:meth:`counts` from what :func:`collect_counts` found for :meth:`count_aggregates`."""
        fits, selected, errors = found["inventory"]["fits"], found["inventory"]["selected"], found["layout_errors"]["n"]
        return {"listed": fits + errors, "layout_errors": errors, "selected": selected, "unselected": fits - selected, "videos": found["inventory"]["videos"]}

    def counts(self) -> dict[str, int]:
        """``listed``, ``layout_errors``, ``selected``, ``unselected``, ``videos`` (selected video objects), in one Spark job."""
        return self.counts_from(collect_counts(self.count_aggregates()))

    def unpersist(self) -> None:
        self.selected_flag.unpersist()
        self.parsed.unpersist()


def collect_counts(aggregates: Mapping[str, DataFrame]) -> dict[str, dict[str, int]]:
    """Single-row aggregations (of whole numbers) collected in one Spark job: name -> column -> value (null as 0).

    Each action of a small job costs its own scheduling, and on a fresh JVM its own planning and
    code generation; the counts a stage reports are collected together instead.
    """
    parts = [
        df.select(F.lit(name).alias("_name"), F.map_from_arrays(F.array(*[F.lit(c) for c in df.columns]), F.array(*[F.col(c).cast("long") for c in df.columns])).alias("_counts"))
        for name, df in aggregates.items()
    ]
    found = {r["_name"]: {k: int(v or 0) for k, v in r["_counts"].items()} for r in functools.reduce(DataFrame.union, parts).collect()}
    return {name: found.get(name, {c: 0 for c in df.columns}) for name, df in aggregates.items()}


def make_parse_fn(layout: Layout) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The executor task: parse each listed key with the layout (a mismatch is kept, with its message)."""

    def parse_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            records = [_parse_one(layout, key) for key in batch["key"]]
            out = pd.DataFrame.from_records(records, columns=["camera_id", "video_id", "frame_idx", "key_us", "key_day", "day_start_us", "day_end_us", "label", "kind", "scope", "nk", "error"])
            for col in ("uri", "key", "etag", "size", "lm_us"):
                out[col] = batch[col].to_numpy()
            out["frame_idx"] = pd.array(out["frame_idx"], dtype="Int64")
            for col in ("key_us", "day_start_us", "day_end_us"):
                out[col] = pd.array(out[col], dtype="Int64")
            yield out[PARSED_SCHEMA.fieldNames()]

    return parse_partition


def _parse_one(layout: Layout, key: str) -> tuple[Any, ...]:
    try:
        kf = layout.parse(key)
    except LayoutMismatch as exc:
        return (None, None, None, None, None, None, None, None, None, None, None, str(exc))
    kind = kind_of_key(key)
    video_id = kf.video_id
    if video_id is not None and kind == "image" and kf.file_field == "video_id":
        video_id = key.rsplit("/", 1)[-1]
    elif video_id is None and kind == "video":
        video_id = key_without_extension(key)
    camera_id = kf.camera_id or UNKNOWN_CAMERA
    day_start, day_end = (_micros(t) for t in layout.zones.day_bounds(kf.date, camera_id)) if kf.date is not None else (None, None)
    return (camera_id, video_id, kf.frame_idx, _micros(kf.ts) if kf.ts else None, kf.date, day_start, day_end, kf.label, kind, kf.scope, natural_sort_text(key), None)


@F.pandas_udf(T.StringType())  # type: ignore[call-overload]
def _event_ids(micros: pd.Series) -> pd.Series:
    return pd.to_datetime(micros, unit="us", utc=True).map(_event_id)


def build_inventory(
    listing_df: DataFrame | None,
    layout: Layout,
    *,
    gap_seconds: float | None = None,
    selection: Selection | None = None,
    local: pd.DataFrame | None = None,
    spark: SparkSession | None = None,
) -> Inventory:
    """Parse a listing (``LISTING_SCHEMA``) with the layout into work rows, on the executors.

    ``local``: the listing as a pandas frame, when the driver listed all of it (a bounded number of
    keys, :func:`vidspark.listing.list_on_driver`): its keys are then parsed here, by the same
    function, and no Python worker starts for the inventory; ``listing_df`` may then be None, and
    ``spark`` (else ``listing_df``'s session) makes the parsed rows a DataFrame.

    Everything that identifies a frame is decided over every listed object, before ``selection``
    narrows them, and never from upload order, so a night's run and a from-scratch run agree:

    - ``camera_id`` defaults to ``unknown``; ``kind`` comes from the extension (``auto``: decided
      by content on the executor).
    - ``frame_ts`` is the layout's ``{ts}`` (read in the camera's zone), else the object's last-modified time (with ``{date}``:
      when it falls on that camera-local day, else the day's start, so the date partition is the key's). The frames of a
      frame folder without ``{ts}`` all take the folder's earliest last-modified time (one time for
      the folder, so re-uploading one frame moves nothing); their order is ``frame_idx``.
    - ``frame_idx`` is the layout's ``{frame_idx}``, else the natural-sort rank of the key among the
      listed frames of its ``(camera_id, video_id)`` (and its day folder, when a ``{date}`` folder holds
      the video folders), and 0 for images that belong to no video.
    - A video object's ``video_id`` defaults to its key without extension; its frames get their
      index and time when decoded. A still whose ``{video_id}`` is its whole file name keeps the
      extension in it, so ``cam1/1430.jpg`` beside ``cam1/1430.mp4`` is a video of its own.
    - With ``gap_seconds``, stills with no ``video_id`` are grouped per camera into events (see
      :func:`assign_event_ids`).
    - ``date`` (the partition) is the camera-local date of ``frame_ts`` (:func:`with_local_date`).
    """
    # Times cross the Python worker as microseconds since the epoch: instants, whatever the session time zone.
    if local is not None:
        session = spark or (listing_df.sparkSession if listing_df is not None else None)
        if session is None:
            raise ValueError("build_inventory of a local listing needs spark or listing_df")
        batch = local[["uri", "key", "etag", "size"]].assign(lm_us=epoch_micros(local["last_modified"]))
        parsed = session.createDataFrame(pd.concat(list(make_parse_fn(layout)(iter([batch])))), schema=PARSED_SCHEMA).coalesce(1)
    elif listing_df is None:
        raise ValueError("build_inventory needs listing_df or local")
    else:
        listed = listing_df.select("uri", "key", "etag", "size", F.unix_micros("last_modified").alias("lm_us"))
        parsed = listed.mapInPandas(make_parse_fn(layout), schema=PARSED_SCHEMA)
    # (withColumns, one projection per step: every DataFrame is analysed when made, slowly in a JVM that has just started)
    parsed = parsed.withColumns({"last_modified": F.expr("timestamp_micros(lm_us)"), "key_ts": F.expr("timestamp_micros(key_us)")}).drop("lm_us", "key_us")
    parsed = parsed.persist(StorageLevel.MEMORY_AND_DISK)
    errors = parsed.where(F.col("error").isNotNull()).select("uri", F.lit("layout").alias("stage"), F.lit("LayoutMismatch").alias("error_type"), F.col("error").alias("message"))
    # A key with {date} and no {ts}: its last-modified time if that falls on the camera-local day, else the day's start.
    lm = F.unix_micros(F.col("last_modified"))
    on_day = (lm >= F.col("day_start_us")) & (lm < F.col("day_end_us"))
    dated = F.when(F.col("key_day").isNotNull() & ~F.coalesce(on_day, F.lit(False)), F.expr("timestamp_micros(day_start_us)"))
    stills = F.col("kind") == "image"  # extension-less objects may be videos: never grouped or ranked as stills
    folder = stills & F.col("video_id").isNotNull() & F.col("key_ts").isNull()  # frame folders whose keys carry no time
    rows = parsed.where(F.col("error").isNull()).withColumns({"frame_ts": F.coalesce("key_ts", dated, "last_modified"), "_folder": folder})
    if gap_seconds is not None:
        rows = assign_event_ids(rows, gap_seconds=gap_seconds)
    video = ["camera_id", "video_id", "scope"]
    order = [F.col("frame_ts"), F.col("nk"), F.col("key")] if gap_seconds is not None else [F.col("nk"), F.col("key")]
    ranked = stills & F.col("video_id").isNotNull() & F.col("frame_idx").isNull()
    # Both windows partition by the video alone, so one shuffle serves them: ranked rows sort first, so their
    # numbers are their ranks among the video's ranked rows; a folder's time is the minimum over its folder rows.
    by_video = Window.partitionBy(*video)
    # (one projection: each expression reads the columns as they were before it, frame_ts included)
    rank = F.row_number().over(by_video.orderBy(ranked.desc(), *order)) - 1
    folder_ts = F.min(F.when(F.col("_folder"), F.col("frame_ts"))).over(by_video)
    rows = rows.withColumns(
        {
            "_ranked": ranked,
            "frame_idx": F.when(ranked, rank).otherwise(F.coalesce("frame_idx", F.lit(0))).cast("long"),
            "frame_ts": F.when(F.col("_folder"), folder_ts).otherwise(F.col("frame_ts")),
        }
    )
    rows = rows.transform(with_local_date, layout.zones)
    flagged = rows.withColumn("_selected", selection.column() if selection is not None else F.lit(True)).persist(StorageLevel.MEMORY_AND_DISK)
    segment = {col: F.lit(None).cast("long") for col in ("seg_start", "seg_end", "first_idx", "prev_pts", "last_idx", "seg_no")}
    work = flagged.where(F.col("_selected")).withColumns(segment)
    return Inventory(parsed, work.select(*_WORK_COLUMNS), errors, flagged)


def zone_column(zones: TimeZones, camera_col: str = "camera_id") -> Column:
    """Each row's camera zone (IANA name) as a Spark column: ``zones.cameras[camera]``, else ``zones.default``.

    A ``when`` chain, not a map lookup: ``element_at`` on a missing key raises in ANSI mode.
    """
    by_zone: dict[str, list[str]] = {}
    for camera, name in sorted(zones.cameras.items()):
        if name != zones.default:
            by_zone.setdefault(name, []).append(camera)
    if not by_zone:
        return F.lit(zones.default)
    (first, first_cameras), *rest = sorted(by_zone.items())
    chain = F.when(F.col(camera_col).isin(first_cameras), F.lit(first))
    for name, cameras in rest:
        chain = chain.when(F.col(camera_col).isin(cameras), F.lit(name))
    return chain.otherwise(F.lit(zones.default))


def local_date(ts: Column, zone: Column) -> Column:
    """The local date, in ``zone``, of the instant ``ts`` (independent of the session time zone).

    ``from_utc_timestamp`` moves the instant's microseconds by the zone's offset at that instant,
    so the UTC day of the result is the local day.
    """
    local_us = F.unix_micros(F.from_utc_timestamp(ts, zone))
    return F.date_from_unix_date(F.floor(local_us / _DAY_US).cast("int"))


def with_local_date(df: DataFrame, zones: TimeZones, *, ts_col: str = "frame_ts", camera_col: str = "camera_id", date_col: str = "date") -> DataFrame:
    """``df`` with ``date_col`` set to the camera-local date of ``ts_col`` (the ``date`` partition of every table).

    Parameters
    ----------
    df
        Rows with a timestamp column and a camera id column.
    zones
        The cameras' zones (:meth:`vidspark.layout.TimeZones.from_conf`).
    ts_col, camera_col, date_col
        Column names.

    Returns
    -------
    DataFrame
        ``df`` with ``date_col`` added or replaced.
    """
    if zones.utc_only:
        return df.withColumn(date_col, F.date_from_unix_date(F.floor(F.unix_micros(F.col(ts_col)) / _DAY_US).cast("int")))
    return df.withColumn(date_col, local_date(F.col(ts_col), zone_column(zones, camera_col)))


def key_without_extension(key: str) -> str:
    """``cam3/2026-11-20/143000.mp4`` -> ``cam3/2026-11-20/143000`` (a video's default ``video_id``)."""
    head, sep, name = key.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return head + sep + stem


def assign_event_ids(rows: DataFrame, *, gap_seconds: float) -> DataFrame:
    """Group motion-triggered stills into events: per camera, a gap over ``gap_seconds`` starts a new one.

    The event's ``video_id`` is ``evt-`` and its first frame's UTC time (``evt-20261120T143005``,
    with milliseconds when not whole), so it is the same whichever run lists the frames.
    """
    loose = (F.col("kind") == "image") & F.col("video_id").isNull()
    by_time = Window.partitionBy("camera_id", "_loose").orderBy("frame_ts", "nk", "key")
    us = F.unix_micros(F.col("frame_ts"))
    gap = us - F.lag(us).over(by_time)
    rows = rows.withColumn("_loose", loose).withColumn("_new", (gap.isNull() | (gap > int(gap_seconds * 1_000_000))).cast("long"))
    rows = rows.withColumn("_event", F.sum("_new").over(by_time.rowsBetween(Window.unboundedPreceding, Window.currentRow)))
    first = F.min(us).over(Window.partitionBy("camera_id", "_loose", "_event"))
    return rows.withColumn("video_id", F.when(F.col("_loose"), _event_ids(first)).otherwise(F.col("video_id"))).drop("_new", "_event")


def _event_id(ts: pd.Timestamp) -> str:
    ms = ts.microsecond // 1000
    return "evt-" + ts.strftime("%Y%m%dT%H%M%S") + (f".{ms:03d}" if ms else "")
