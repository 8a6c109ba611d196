"""Featurize: inventory (driver) -> fetch + decode + ResNet50 (executors) -> features/ and errors/.

One ``mapInPandas`` pass per partition fetches objects on a small thread pool, decodes them with
Pillow and runs the model on numpy batches, while the next batch's objects are already being
fetched. Encoded bytes never travel through Spark rows, so an object's size does not matter to
Spark, and executor memory is bounded by two model batches of decoded frames.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from pyspark import AccumulatorParam, InheritableThread, StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from vidspark.config import Conf, FeaturizerConf, StorageConf, VideoConf
from vidspark.featurizer import cached_model, featurize_arrays, featurizer_id, model_is_cached
from vidspark.imaging import decode_image
from vidspark.layout import Layout, LayoutMismatch, natural_key
from vidspark.outputs import partition_path, read_table, recover_table, replace_partitions, sibling, table_exists, write_table
from vidspark.schemas import ERRORS_SCHEMA, FEATURES_SCHEMA, FEATURIZE_RESULT_SCHEMA, IDENTITY_FIELDS, PLAN_SCHEMA, WORK_SCHEMA
from vidspark.storage import Location, ObjectInfo, cached_s3_client, check_readable, list_objects, make_s3_client, parse_uri, read_object
from vidspark.video import WHOLE, DecodeReport, Segment, VideoFrame, decode_frames, is_storage_error, kind_of_key, open_source, probe_segments, read_head, sniff_is_video

logger = logging.getLogger(__name__)

UNKNOWN_CAMERA = "unknown"
_WORK_COLUMNS = WORK_SCHEMA.fieldNames()
_PLAN_COLUMNS = PLAN_SCHEMA.fieldNames()
_RESULT_COLUMNS = FEATURIZE_RESULT_SCHEMA.fieldNames()
_IDENTITY_COLUMNS = [f.name for f in IDENTITY_FIELDS]


@dataclass
class Inventory:
    """What the listing found: rows to featurize and keys that did not fit the layout."""

    rows: pd.DataFrame
    errors: list[dict[str, Any]] = field(default_factory=list)
    unselected: int = 0  # listed but outside --since/--until/--cameras
    listed_uris: set[str] = field(default_factory=set)  # every object listed (for --prune)

    @property
    def listed(self) -> int:
        return len(self.rows) + len(self.errors) + self.unselected


@dataclass(frozen=True)
class Selection:
    """Which listed objects a run takes: time window on the layout's ``{ts}`` (else last-modified), cameras."""

    since: datetime | None = None
    until: datetime | None = None
    cameras: frozenset[str] | None = None

    def takes(self, ts: datetime, camera_id: str) -> bool:
        if self.since is not None and ts < self.since:
            return False
        if self.until is not None and ts >= self.until:
            return False
        return self.cameras is None or camera_id in self.cameras


def build_inventory(objects: Iterable[ObjectInfo], layout: Layout, *, gap_seconds: float | None = None, selection: Selection | None = None) -> Inventory:
    """Parse listed objects with the layout into work rows (pure Python, driver side).

    Everything that identifies a frame is decided over every listed object, before ``selection``
    narrows them, and never from upload order, so a night's run and a from-scratch run agree:

    - ``camera_id`` defaults to ``unknown``; ``kind`` comes from the extension (``auto``: decided
      by content on the executor).
    - ``frame_ts`` is the layout's ``{ts}``, else the object's last-modified time. The frames of a
      frame folder without ``{ts}`` all take the folder's earliest last-modified time (one time for
      the folder, so re-uploading one frame moves nothing); their order is ``frame_idx``.
    - ``frame_idx`` is the layout's ``{frame_idx}``, else the natural-sort rank of the key among the
      listed frames of its ``(camera_id, video_id)``, and 0 for images that belong to no video.
    - A video object's ``video_id`` defaults to its key without extension; its frames get their
      index and time when decoded. A still whose ``{video_id}`` is its whole file name keeps the
      extension in it, so ``cam1/1430.jpg`` beside ``cam1/1430.mp4`` is a video of its own.
    - With ``gap_seconds``, stills with no ``video_id`` are grouped per camera into events (see
      :func:`with_event_ids`).
    """
    records: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    listed_uris: set[str] = set()
    for obj in objects:
        listed_uris.add(obj.uri)
        try:
            kf = layout.parse(obj.rel_key)
        except LayoutMismatch as exc:
            errors.append({"uri": obj.uri, "stage": "layout", "error_type": "LayoutMismatch", "message": str(exc)})
            continue
        kind = kind_of_key(obj.rel_key)
        video_id = kf.video_id
        if video_id is not None and kind == "image" and kf.file_field == "video_id":
            video_id = obj.rel_key.rsplit("/", 1)[-1]
        elif video_id is None and kind == "video":
            video_id = key_without_extension(obj.rel_key)
        records.append(
            {
                "uri": obj.uri,
                "etag": obj.etag,
                "camera_id": kf.camera_id or UNKNOWN_CAMERA,
                "video_id": video_id,
                "frame_idx": kf.frame_idx,
                "frame_ts": kf.ts or obj.last_modified,
                "label": kf.label,
                "size": obj.size,
                "key": obj.rel_key,
                "kind": kind,
                "_has_ts": kf.ts is not None,
            }
        )
    if not records:
        return Inventory(pd.DataFrame({c: pd.Series(dtype=object) for c in _WORK_COLUMNS}), errors, 0, listed_uris)
    rows = pd.DataFrame.from_records(records)
    rows["frame_ts"] = pd.to_datetime(rows["frame_ts"], utc=True)
    stills = rows["kind"] == "image"  # extension-less objects may be videos: never grouped or ranked as stills
    folder = stills & rows["video_id"].notna() & ~rows["_has_ts"].astype(bool)  # frame folders whose keys carry no time
    if gap_seconds is not None:
        rows = with_event_ids(rows, gap_seconds=gap_seconds, mask=stills & rows["video_id"].isna())
    in_video = stills & rows["video_id"].notna()
    missing_idx = rows["frame_idx"].isna()
    if missing_idx.any():
        idx = pd.Series(0, index=rows.index, dtype="int64")
        ranked = missing_idx & in_video
        if ranked.any():
            sub = rows[ranked].copy()
            sub["_nk"] = sub["key"].map(natural_key)
            sub = sub.sort_values(["camera_id", "video_id", "frame_ts", "_nk"] if gap_seconds is not None else ["camera_id", "video_id", "_nk"], kind="stable")
            idx.loc[sub.index] = sub.groupby(["camera_id", "video_id"], sort=False).cumcount().astype("int64")
        rows["frame_idx"] = rows["frame_idx"].where(~missing_idx, idx)
    rows["frame_idx"] = rows["frame_idx"].astype("int64")
    if folder.any():
        rows.loc[folder, "frame_ts"] = rows[folder].groupby(["camera_id", "video_id"])["frame_ts"].transform("min")
    rows["date"] = rows["frame_ts"].dt.date
    unselected = 0
    if selection is not None:
        takes = pd.Series([selection.takes(ts, cam) for ts, cam in zip(rows["frame_ts"], rows["camera_id"], strict=True)], index=rows.index, dtype=bool)
        unselected = int((~takes).sum())
        rows = rows[takes]
    for col in ("seg_start", "seg_end", "first_idx", "prev_pts", "last_idx", "seg_no"):
        rows[col] = None
    return Inventory(rows[_WORK_COLUMNS].reset_index(drop=True), errors, unselected, listed_uris)


def key_without_extension(key: str) -> str:
    """``cam3/2026-11-20/143000.mp4`` -> ``cam3/2026-11-20/143000`` (a video's default ``video_id``)."""
    head, sep, name = key.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return head + sep + stem


def with_event_ids(rows: pd.DataFrame, *, gap_seconds: float, mask: pd.Series) -> pd.DataFrame:
    """Group motion-triggered stills into events: per camera, a gap over ``gap_seconds`` starts a new one.

    The event's ``video_id`` is ``evt-`` and its first frame's UTC time (``evt-20261120T143005``,
    with milliseconds when not whole), so it is the same whichever run lists the frames.
    """
    if not mask.any():
        return rows
    rows = rows.copy()
    sub = rows[mask].copy()
    sub["_nk"] = sub["key"].map(natural_key)
    sub = sub.sort_values(["camera_id", "frame_ts", "_nk"], kind="stable")
    gap = sub.groupby("camera_id", sort=False)["frame_ts"].diff()
    new_event = gap.isna() | (gap > pd.Timedelta(seconds=gap_seconds))
    event_no = new_event.groupby(sub["camera_id"], sort=False).cumsum()
    first_ts = sub["frame_ts"].where(new_event).groupby([sub["camera_id"], event_no], sort=False).transform("first")
    rows.loc[sub.index, "video_id"] = first_ts.map(_event_id)
    return rows


def _event_id(ts: pd.Timestamp) -> str:
    ms = ts.microsecond // 1000
    return "evt-" + ts.strftime("%Y%m%dT%H%M%S") + (f".{ms:03d}" if ms else "")


Loaded = tuple[np.ndarray | None, tuple[str, str, str] | None]


def _load_one(uri: str, etag: str | None, fconf: FeaturizerConf, sconf: StorageConf) -> Loaded:
    """Fetch and decode one image; a failure is returned as (stage, error_type, message)."""
    try:
        client = cached_s3_client(sconf) if uri.startswith("s3://") else None
        data = read_object(uri, client=client, etag=etag, attempts=sconf.max_attempts)
    except Exception as exc:  # any storage failure is a per-object errors row, never a task failure
        return None, ("fetch", type(exc).__name__, str(exc)[:2000])
    try:
        return decode_image(data, size=fconf.image_size, max_pixels=fconf.max_image_pixels), None
    except Exception as exc:  # DecodeError, or anything odd EXIF/TIFF/codec data raises: one object's row, never the job
        return None, ("decode", type(exc).__name__, str(exc)[:2000])


def _load_auto(row: dict[str, Any], fconf: FeaturizerConf, sconf: StorageConf, vconf: VideoConf) -> Loaded | str:
    """An object whose extension says nothing: ``"video"`` when its first bytes are a container, else the image."""
    try:
        head = read_head(open_source(row["uri"], size=int(row["size"] or 0), etag=row["etag"], sconf=sconf, vconf=vconf))
    except Exception as exc:  # storage failure: the object's errors row
        return None, ("fetch", type(exc).__name__, str(exc)[:2000])
    if sniff_is_video(head):
        return "video"
    return _load_one(row["uri"], row["etag"], fconf, sconf)


def _timed_load(row: dict[str, Any], fconf: FeaturizerConf, sconf: StorageConf, vconf: VideoConf, started: dict[int, float], token: int, durations: list[float]) -> Loaded | str:
    """Load one image (or sniff an extension-less object), noting when a fetch thread started on it and how long it took."""
    started[token] = t0 = time.monotonic()
    try:
        return _load_auto(row, fconf, sconf, vconf) if row["kind"] == "auto" else _load_one(row["uri"], row["etag"], fconf, sconf)
    finally:
        durations.append(time.monotonic() - t0)  # list.append is atomic: no lock between fetch threads


def _opt_int(value: Any) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def segment_of(row: dict[str, Any]) -> Segment:
    """The :class:`Segment` a work row stands for (the whole video when it was not split)."""
    return Segment(
        start_pts=_opt_int(row.get("seg_start")),
        end_pts=_opt_int(row.get("seg_end")),
        first_idx=_opt_int(row.get("first_idx")) or 0,
        prev_pts=_opt_int(row.get("prev_pts")),
        last_idx=_opt_int(row.get("last_idx")),
        seg_no=_opt_int(row.get("seg_no")) or 0,
    )


def _identity(row: dict[str, Any]) -> dict[str, Any]:
    """A work row's identity columns, and its object's time (the base of a video's frame times)."""
    return {**{c: row[c] for c in _IDENTITY_COLUMNS}, "object_ts": row["frame_ts"]}


def _frame_identity(row: dict[str, Any], frame: VideoFrame, session_tz: str = "UTC") -> dict[str, Any]:
    """A video frame's identity: its time is the object's start plus its pts; its date is the UTC date, as for stills.

    Timestamps reach ``mapInPandas`` naive, in the session time zone, and must leave the same way.
    """
    ident = _identity(row)
    start = pd.Timestamp(row["frame_ts"])
    start = start.tz_localize(session_tz) if start.tzinfo is None else start
    ts = (start + pd.Timedelta(microseconds=round(frame.seconds * 1_000_000))).tz_convert("UTC")
    ident.update(
        video_id=row["video_id"] or key_without_extension(row["key"]), frame_idx=frame.idx, frame_ts=ts.tz_convert(session_tz).tz_localize(None), date=ts.date(), dropped_frames=frame.dropped_before
    )
    return ident


def _error_stage(source: Any) -> str:
    return "fetch" if is_storage_error(source) else "decode"


def make_plan_fn(vconf: VideoConf, sconf: StorageConf) -> Any:
    """The ``mapInPandas`` function of the probe stage: a large video in, one row per segment out."""

    def plan_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            out: list[dict[str, Any]] = []
            for row in pdf.to_dict("records"):
                base = {**row, "stage": None, "error_type": None, "message": None}
                try:
                    source = open_source(row["uri"], size=int(row["size"] or 0), etag=row["etag"], sconf=sconf, vconf=vconf)
                    segments, report = probe_segments(source, vconf)
                    stage = _error_stage(source)
                except Exception as exc:  # a probe that fails for any reason is this video's errors row
                    segments, report, stage = [], DecodeReport(errors=[(type(exc).__name__, str(exc))]), "decode"
                for seg in segments:
                    out.append({**base, "seg_start": seg.start_pts, "seg_end": seg.end_pts, "first_idx": seg.first_idx, "prev_pts": seg.prev_pts, "last_idx": seg.last_idx, "seg_no": seg.seg_no})
                err = report.error()
                if err is not None:
                    out.append({**base, "stage": stage, "error_type": err[0], "message": err[1][:2000]})
            yield pd.DataFrame.from_records(out, columns=_PLAN_COLUMNS)

    return plan_partition


class TaskStats(AccumulatorParam):  # type: ignore[type-arg]
    """Spark accumulator of featurize task timings: keys ending in ``_max`` keep the maximum, others add up.

    Per task: ``tasks``, ``frames``, ``task_s`` (whole task), ``startup_s_max`` (task start to the
    model's first call: model build in a fresh worker, the first batch's fetches), ``model_s`` (in model calls),
    ``wait_s`` (model thread waiting for frames: fetch/decode could not keep up), ``decode_s``
    (fetch and decode of images, summed over threads; videos decode in the producer thread).
    """

    def zero(self, value: dict[str, float]) -> dict[str, float]:
        return {}

    def addInPlace(self, a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
        for k, v in b.items():
            a[k] = max(a.get(k, 0.0), v) if k.endswith("_max") else a.get(k, 0.0) + v
        return a


def _warm(fconf: FeaturizerConf, sconf: StorageConf, stats: Any) -> Any:
    def warm_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for _ in batches:
            pass
        fresh = not model_is_cached(fconf, sconf)
        model = cached_model(fconf, sconf)
        if fresh:
            stats.add({"workers_warmed": 1.0, "tf_import_s_max": model.import_s, "model_build_s_max": model.build_s, "first_call_s_max": model.warm_s})
        yield pd.DataFrame({"pid": [os.getpid()]})

    return warm_partition


class WarmUp:
    """Build the model in every Python worker slot while the driver lists the input.

    A background Spark job of one task per slot; workers are reused (``spark.python.worker.reuse``),
    so the featurize tasks that follow find the model built. Failures only cost the overlap.
    """

    def __init__(self, spark: SparkSession, fconf: FeaturizerConf, sconf: StorageConf, run_id: str, stats: Any) -> None:
        self.spark = spark
        self.group = f"vidspark-warm-up-{run_id}"
        cpus = int(spark.conf.get("spark.task.cpus", "1") or 1)
        slots = max(1, spark.sparkContext.defaultParallelism // max(1, cpus))
        df = spark.range(0, slots, 1, slots).mapInPandas(_warm(fconf, sconf, stats), schema="pid long")
        self.cancelled = threading.Event()

        def job() -> None:
            spark.sparkContext.setJobGroup(self.group, "vidspark: build the featurizer in each Python worker", interruptOnCancel=False)
            if self.cancelled.is_set():
                return
            try:
                df.collect()
            except Exception as exc:  # cancelled, or a model that cannot load: featurize will say so itself
                logger.debug("warm-up ended: %s", exc)

        self.thread = InheritableThread(target=job, name="vidspark-warm-up", daemon=True)
        self.thread.start()

    def cancel(self) -> None:
        """Stop the warm-up job if it still runs (nothing to featurize, or the run failed); a no-op once it ended."""
        self.cancelled.set()
        deadline = time.monotonic() + 60
        while self.thread.is_alive() and time.monotonic() < deadline:
            self.spark.sparkContext.cancelJobGroup(self.group)  # again each round: the job may be submitted after the first
            self.thread.join(timeout=0.5)


class _Stopped(Exception):
    """The consumer went away; the producer thread ends quietly."""


_DONE = object()


def make_featurize_fn(fconf: FeaturizerConf, sconf: StorageConf, fid: str, vconf: VideoConf | None = None, session_tz: str = "UTC", stats: Any | None = None) -> Any:
    """The ``mapInPandas`` function: work rows in, FEATURIZE_RESULT_SCHEMA batches out (one row per frame or error).

    A producer thread turns work rows into frames (images fetched and decoded on a thread pool with
    a look-ahead of two model batches, videos streamed and decoded in order) and hands them over a
    bounded queue; the task's own thread runs the model on full batches. Memory is bounded by the
    queue, the look-ahead and the model batch, whatever the objects' sizes.
    """
    vconf = vconf or VideoConf()

    def featurize_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        t_task = time.perf_counter()
        work = [r for pdf in batches for r in pdf.to_dict("records")]  # metadata only, a few hundred bytes a row
        if not work:
            return
        timing = {"tasks": 1.0, "frames": 0.0, "model_s": 0.0, "wait_s": 0.0}
        durations: list[float] = []  # fetch + decode of each image, from the pool threads
        frames: queue.Queue[Any] = queue.Queue(maxsize=max(2, fconf.batch_size))
        stop = threading.Event()

        def put(item: Any) -> None:
            while True:
                if stop.is_set():
                    raise _Stopped
                try:
                    frames.put(item, timeout=0.2)
                    return
                except queue.Full:
                    continue

        def emit_video(row: dict[str, Any], segment: Segment | None = None) -> None:
            report = DecodeReport()
            source: Any = None
            try:
                segment = segment_of(row) if segment is None else segment
                source = open_source(row["uri"], size=_opt_int(row["size"]) or 0, etag=row["etag"], sconf=sconf, vconf=vconf)
                for frame in decode_frames(source, vconf, size=fconf.image_size, segment=segment, report=report, stall_timeout_s=fconf.decode_timeout_s):
                    put((_frame_identity(row, frame, session_tz), frame.pixels, None))
            except _Stopped:
                raise
            except Exception as exc:  # anything PyAV or the reader raises is this video's errors row
                report.add(type(exc).__name__, str(exc))
            err = report.error()
            if err is not None:
                put((_identity(row), None, (_error_stage(source), err[0], err[1][:2000])))

        def produce() -> None:
            try:
                pool = ThreadPoolExecutor(max_workers=fconf.fetch_threads, thread_name_prefix="vidspark-fetch")
                try:
                    pending: dict[Future[Any], tuple[dict[str, Any], int]] = {}
                    started: dict[int, float] = {}  # token -> when a fetch thread began the object
                    abandoned: list[Future[Any]] = []
                    lookahead = max(2 * fconf.batch_size, 2 * fconf.fetch_threads)

                    def emit(row: dict[str, Any], result: Any) -> None:
                        if result == "video":
                            emit_video({**row, "video_id": row["video_id"] or key_without_extension(row["key"])}, WHOLE)
                        else:
                            put((_identity(row), result[0], result[1]))

                    def drain(keep: int) -> None:
                        # Completion order, not submission order: an object stuck in retries holds one
                        # fetch thread, not the whole task. One that runs past decode_timeout_s becomes
                        # an errors row; its thread is abandoned (Python cannot stop it) and the task goes on.
                        while len(pending) > keep:
                            done, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                            for fut in done:
                                row, token = pending.pop(fut)
                                started.pop(token, None)
                                emit(row, fut.result())
                            now = time.monotonic()
                            for fut, (row, token) in list(pending.items()):
                                if now - started.get(token, now) > fconf.decode_timeout_s:
                                    del pending[fut]
                                    abandoned.append(fut)
                                    put((_identity(row), None, ("decode", "DecodeTimeout", f"fetch and decode took over featurizer.decode_timeout_s ({fconf.decode_timeout_s:g} s)")))

                    for row in work:
                        if row["kind"] == "video":
                            drain(0)
                            emit_video(row)
                            continue
                        token = id(row)  # rows live as long as the task
                        pending[pool.submit(_timed_load, row, fconf, sconf, vconf, started, token, durations)] = (row, token)
                        drain(lookahead)
                    drain(0)
                finally:
                    pool.shutdown(wait=not stop.is_set() and not abandoned, cancel_futures=True)  # the task went away: do not fetch what nobody reads
                put(_DONE)
            except _Stopped:
                return
            except BaseException as exc:  # a bug, not a bad object: hand it to the task thread, which fails the task
                try:
                    put(exc)
                except _Stopped:
                    return

        producer = threading.Thread(target=produce, name="vidspark-frames", daemon=True)
        producer.start()
        try:
            batch: list[tuple[dict[str, Any], np.ndarray]] = []
            failed: list[dict[str, Any]] = []
            while True:
                t_wait = time.perf_counter()
                try:
                    item = frames.get(timeout=1.0)
                except queue.Empty:
                    if not producer.is_alive():
                        raise RuntimeError("the frame producer thread ended without finishing") from None
                    continue
                finally:
                    timing["wait_s"] += time.perf_counter() - t_wait
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                ident, pixels, err = item
                if err is not None:
                    failed.append({**ident, "stage": err[0], "error_type": err[1], "message": err[2]})
                else:
                    batch.append((ident, pixels))
                if len(batch) >= fconf.batch_size:
                    yield _run_model(batch, failed, fconf, sconf, fid, timing, t_task)
                    batch, failed = [], []
            if batch or failed:
                yield _run_model(batch, failed, fconf, sconf, fid, timing, t_task)
            timing["task_s"] = time.perf_counter() - t_task
            timing["decode_s"] = float(sum(durations))
            timing.setdefault("startup_s_max", timing["task_s"])
            if stats is not None:
                stats.add(timing)
        finally:
            stop.set()
            producer.join(timeout=30)

    return featurize_partition


def _run_model(
    batch: list[tuple[dict[str, Any], np.ndarray]], failed: list[dict[str, Any]], fconf: FeaturizerConf, sconf: StorageConf, fid: str, timing: dict[str, float], t_task: float
) -> pd.DataFrame:
    """Features for a batch of decoded frames, plus the error rows gathered alongside it."""
    records = []
    if batch:
        model = cached_model(fconf, sconf)  # a model that cannot load fails the task: no row could succeed
        t0 = time.perf_counter()
        try:
            feats = featurize_arrays(model, np.stack([px for _, px in batch]), batch_size=fconf.batch_size)
            timing["model_s"] += time.perf_counter() - t0
            timing["frames"] += len(batch)
            timing.setdefault("startup_s_max", t0 - t_task)
            bad = ~np.isfinite(feats).all(axis=1)
            for (ident, _), vec, nonfinite in zip(batch, feats, bad, strict=True):
                if nonfinite:
                    records.append({**ident, "stage": "featurize", "error_type": "NonFiniteFeatures", "message": "model output has NaN or inf"})
                else:
                    records.append({**ident, "features": vec, "featurizer": fid})
        except Exception as exc:  # TF raises OpError subclasses; a failed batch marks its rows, the task goes on
            records.extend({**ident, "stage": "featurize", "error_type": type(exc).__name__, "message": str(exc)[:2000]} for ident, _ in batch)
    records.extend(failed)
    out = pd.DataFrame({c: [r.get(c) for r in records] for c in _RESULT_COLUMNS})  # absent keys are None, not NaN
    out["frame_idx"] = out["frame_idx"].astype("int64")
    out["dropped_frames"] = out["dropped_frames"].astype("Int64")  # null for stills
    return out


def with_features(
    work_df: DataFrame, *, fconf: FeaturizerConf, sconf: StorageConf, fid: str, vconf: VideoConf | None = None, num_tasks: int | None = None, session_tz: str = "UTC", stats: Any | None = None
) -> DataFrame:
    """Featurize every work row (image, video or video segment); failures carry ``stage``/``error_type``/``message``.

    Parameters
    ----------
    work_df
        Rows of ``WORK_SCHEMA``.
    fconf, sconf, vconf
        Featurizer, storage and video settings (shipped to executors with the function).
    fid
        Featurizer id written with every features row.
    num_tasks
        Repartition to this many tasks first (None keeps the partitioning).
    stats
        A :class:`TaskStats` accumulator that each task adds its timings to.

    Returns
    -------
    DataFrame
        ``FEATURIZE_RESULT_SCHEMA``: one row per frame, and one per object (or video segment) that failed.
    """
    df = work_df.repartition(num_tasks) if num_tasks else work_df
    return df.mapInPandas(make_featurize_fn(fconf, sconf, fid, vconf, session_tz, stats), schema=FEATURIZE_RESULT_SCHEMA)


def with_segments(videos_df: DataFrame, *, vconf: VideoConf, sconf: StorageConf) -> DataFrame:
    """Probe each video (executors) and cut it into keyframe-aligned segments (``PLAN_SCHEMA``)."""
    return videos_df.mapInPandas(make_plan_fn(vconf, sconf), schema=PLAN_SCHEMA)


def errors_frame(spark: SparkSession, rows: list[dict[str, Any]], run_id: str) -> DataFrame:
    """Driver-side error rows (layout mismatches) as an ``ERRORS_SCHEMA`` DataFrame."""
    data = [(r["uri"], r["stage"], r["error_type"], r["message"], run_id) for r in rows]
    return spark.createDataFrame(data, schema=ERRORS_SCHEMA)


def list_inventory(location: Location, client: Any | None, conf: Conf, *, selection: Selection | None = None) -> Inventory:
    """List the input (the only driver-side pass) and parse keys; the caller has checked it is readable."""
    layout = Layout(conf.input.layout, ts_format=conf.input.ts_format)
    return build_inventory(list_objects(location, client), layout, gap_seconds=conf.events.gap_seconds, selection=selection)


def with_driver_endpoint(conf: Conf) -> Conf:
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
    agg = [F.first("video_id").alias("video_id"), F.first("label").alias("label"), F.min("object_ts").alias("object_ts"), F.min("frame_idx").alias("frame_idx"), F.min("frame_ts").alias("frame_ts")]
    out: pd.DataFrame = df.groupBy(*keys).agg(*agg).toPandas()
    out["date"] = [d.isoformat() for d in out["date"]]
    session_tz = spark.conf.get("spark.sql.session.timeZone") or "UTC"
    for col in ("object_ts", "frame_ts"):  # Spark hands timestamps over naive, in the session time zone
        out[col] = pd.to_datetime(out[col]).dt.tz_localize(session_tz).dt.tz_convert("UTC")
    return out


def unchanged_objects(rows: pd.DataFrame, existing: pd.DataFrame, fid: str) -> pd.Series:
    """Which work rows the store already holds as they are: same ETag and featurizer, and the same identity.

    Identity is what the listing decides: camera, label and object time for every object, and for a
    still also its video, index and time (a frame inserted before it, or a folder whose earliest
    frame changed, moves it). An object whose identity changed is featurized again like a changed one.
    """
    current = existing[existing["featurizer"] == fid]
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


def _na(value: Any) -> Any:
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else value


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

    Incremental: an object already in ``output`` with the same ETag and featurizer id is skipped
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
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    conf = with_driver_endpoint(conf)
    location = parse_uri(input_uri)
    client = (s3_client or make_s3_client(conf.storage)) if location.scheme == "s3" else None
    check_readable(location, client)  # fails fast, before any Spark work
    # The model builds in the executors' Python workers (seconds) while the driver lists (minutes on a big archive).
    stats = spark.sparkContext.accumulator({}, TaskStats())
    warm = WarmUp(spark, conf.featurizer, conf.storage, run_id, stats) if conf.featurizer.warm_up else None
    try:
        return _featurize(spark, input_uri=input_uri, output=output, conf=conf, run_id=run_id, errors_output=errors_output, s3_client=s3_client, location=location, client=client,
                          full=full, prune=prune, selection=selection, on_partitions=on_partitions, stats=stats, warm=warm, timings=timings, t0=t0)  # fmt: skip
    finally:
        if warm is not None:
            warm.cancel()  # ended long ago when there was work; stopped here when there was none or the run failed


def _featurize(
    spark: SparkSession,
    *,
    input_uri: str,
    output: str,
    conf: Conf,
    run_id: str,
    errors_output: str | None,
    s3_client: Any | None,
    location: Location,
    client: Any | None,
    full: bool,
    prune: bool,
    selection: Selection | None,
    on_partitions: Callable[[list[tuple[str, str]]], None] | None,
    stats: Any,
    warm: WarmUp | None,
    timings: dict[str, float],
    t0: float,
) -> dict[str, Any]:
    inventory = list_inventory(location, client, conf, selection=selection)
    recover_table(spark, output)  # finish a swap that a killed run left half done, before reading the store
    fid = featurizer_id(conf.featurizer, conf.storage, s3_client=s3_client)
    timings["list_s"] = time.perf_counter() - t0
    rows = inventory.rows
    n_videos = int((rows["kind"] == "video").sum())
    logger.info("listed %d objects under %s (%d selected, %d videos, %d do not fit the layout); featurizer %s", inventory.listed, input_uri, len(rows), n_videos, len(inventory.errors), fid)

    # Incremental: skip what the store already has, find rows to replace or prune.
    t_inc = time.perf_counter()
    existing = existing_objects(spark, output, cameras=selection.cameras if selection else None)
    skipped = 0
    if not full and len(existing) and len(rows):
        unchanged = unchanged_objects(rows, existing, fid)
        skipped = int(rows.loc[unchanged, "uri"].nunique())
        rows = rows[~unchanged].reset_index(drop=True)
    # Old rows go only when the object changed (a new, known etag), was featurized again successfully,
    # or was pruned: a failed attempt (transient fetch error, --full) must not cost good rows.
    stored = set(zip(existing["uri"], existing["etag"], strict=True))
    known = set(existing["uri"])
    changed = {u for u, e in zip(rows["uri"], rows["etag"], strict=True) if u in known and e and (u, e) not in stored}
    pruned: set[str] = set()
    if prune and len(existing):
        prefix = location.uri.rstrip("/") + "/"
        pruned = {u for u in known if u.startswith(prefix) and u not in inventory.listed_uris}
    timings["incremental_s"] = time.perf_counter() - t_inc
    logger.info("%d objects unchanged since the last run (skipped), %d to featurize (%d changed), %d pruned", skipped, rows["uri"].nunique(), len(changed), len(pruned))

    errors_output = errors_output or sibling(output, "errors")
    parallelism = spark.sparkContext.defaultParallelism
    driver_errors = list(inventory.errors)
    work = rows
    big = (rows["kind"] == "video") & (rows["size"].fillna(0).astype("int64") > conf.video.split_min_bytes)
    if big.any():
        t_plan = time.perf_counter()
        n_big = int(big.sum())
        big_df = spark.createDataFrame(_with_nullable_ints(rows[big]), schema=WORK_SCHEMA).repartition(min(n_big, parallelism))
        planned: pd.DataFrame = with_segments(big_df, vconf=conf.video, sconf=conf.storage).toPandas()
        planned["frame_ts"] = pd.to_datetime(planned["frame_ts"]).dt.tz_localize(spark.conf.get("spark.sql.session.timeZone") or "UTC").dt.tz_convert("UTC")
        failed = planned["stage"].notna()
        driver_errors += planned.loc[failed, ["uri", "stage", "error_type", "message"]].to_dict("records")
        segments = planned.loc[~failed, _WORK_COLUMNS]
        work = pd.concat([rows[~big], segments], ignore_index=True)
        timings["split_s"] = time.perf_counter() - t_plan
        logger.info("split %d large videos into %d segments", n_big, len(segments))

    t1 = time.perf_counter()
    errors_df = errors_frame(spark, driver_errors, run_id)
    featurized, featurized_objects, new_parts, task_errors = 0, 0, set(), 0
    ok_uris: set[str] = set()
    result_df = None
    if len(work):
        work_df = spark.createDataFrame(_with_nullable_ints(work), schema=WORK_SCHEMA)
        n_still = int((work["kind"] != "video").sum())
        slots = max(1, parallelism // int(spark.conf.get("spark.task.cpus", "1") or 1))  # featurize tasks Spark runs at once
        num_tasks = min(len(work), max(slots, math.ceil(n_still / conf.job.rows_per_task) + len(work) - n_still))
        session_tz = spark.conf.get("spark.sql.session.timeZone") or "UTC"
        result_df = with_features(work_df, fconf=conf.featurizer, sconf=conf.storage, vconf=conf.video, fid=fid, num_tasks=num_tasks, session_tz=session_tz, stats=stats)
        result_df = result_df.persist(StorageLevel.MEMORY_AND_DISK)
    elif warm is not None:
        warm.cancel()
    try:
        if result_df is not None:
            ok_df = result_df.where(F.col("stage").isNull())
            # One action computes the cached result and gives partitions, frame counts, objects and whether any failed.
            grouped = result_df.groupBy("camera_id", "date", "uri", F.col("stage").isNotNull().alias("failed")).count().collect()
            per_object = [r for r in grouped if not r["failed"]]
            task_errors = len(grouped) - len(per_object)
            new_parts = {(r["camera_id"], r["date"].isoformat()) for r in per_object}
            featurized = sum(int(r["count"]) for r in per_object)
            ok_uris = {r["uri"] for r in per_object}
            featurized_objects = len(ok_uris)
            timings["featurize_s"] = time.perf_counter() - t1
            if task_errors:
                errors_df = errors_df.unionByName(result_df.where(F.col("stage").isNotNull()).select("uri", "stage", "error_type", "message", F.lit(run_id).alias("run_id")))
        drop_uris = (ok_uris & known) | changed | pruned
        dropped = existing["uri"].isin(drop_uris)
        affected = sorted(new_parts | set(zip(existing.loc[dropped, "camera_id"], existing.loc[dropped, "date"], strict=True)))
        t2 = time.perf_counter()
        if affected:
            if on_partitions is not None:
                on_partitions(affected)
            merged_df = _merged_features(spark, output, new_df=ok_df.select(*FEATURES_SCHEMA.fieldNames()) if result_df is not None else None, affected=affected, drop_uris=drop_uris)
            replace_partitions(spark, merged_df, output, run_id=run_id, scope=[partition_path(c, d) for c, d in affected])
        counts = _write_errors(errors_df, errors_output, empty=not driver_errors and not task_errors)
        timings["write_s"] = time.perf_counter() - t2
    finally:
        if result_df is not None:
            result_df.unpersist()
    n_errors = sum(counts.values())
    summary = {
        "input": input_uri,
        "features": output,
        "errors": errors_output,
        "featurizer": fid,
        "listed": inventory.listed,
        "selected": inventory.listed - inventory.unselected,
        "skipped_unchanged": skipped,
        "videos": n_videos,
        "work_units": len(work),
        "featurized_objects": featurized_objects,
        "featurized": featurized,
        "replaced_objects": len((ok_uris & known) | changed),
        "pruned_objects": len(pruned),
        "errors_by_stage": dict(sorted(counts.items())),
        "error_count": n_errors,
        "error_fraction": (n_errors / inventory.listed) if inventory.listed else 0.0,
        "partitions": [{"camera_id": c, "date": d} for c, d in affected],
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "tasks": {k: round(v, 3) for k, v in sorted(dict(stats.value).items())},
        "task_slots": max(1, parallelism // int(spark.conf.get("spark.task.cpus", "1") or 1)),
    }
    logger.info("featurize done: %d frames from %d objects featurized, %d skipped as unchanged", featurized, featurized_objects, skipped)
    logger.info("featurize errors: %d objects %s", n_errors, summary["errors_by_stage"])
    return summary


def _merged_features(spark: SparkSession, output: str, *, new_df: DataFrame | None, affected: list[tuple[str, str]], drop_uris: set[str]) -> DataFrame:
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


def _with_nullable_ints(pdf: pd.DataFrame) -> pd.DataFrame:
    """Nullable integer columns as Python ints and None, which Arrow turns into longs with nulls."""
    pdf = pdf.copy()
    for col in ("size", "seg_start", "seg_end", "first_idx", "prev_pts", "last_idx", "seg_no"):
        pdf[col] = [_opt_int(v) for v in pdf[col]]
    return pdf


def _write_errors(errors_df: DataFrame, path: str, *, empty: bool = False) -> dict[str, int]:
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
            F.min_by("stage", "_order").alias("stage"),
            F.min("error_type").alias("error_type"),
            F.array_join(F.slice(F.array_sort(F.collect_set("message")), 1, 5), " | ").alias("message"),
            F.min("run_id").alias("run_id"),
        )
    )
    write_table(agg_df.select(*ERRORS_SCHEMA.fieldNames()), path)
    return {r["stage"]: int(r["count"]) for r in agg_df.groupBy("stage").count().collect()}
