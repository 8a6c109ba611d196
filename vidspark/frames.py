"""The featurize stage on executors: fetch, decode and batch frames, run the model (one ``mapInPandas`` pass).

Each task fetches objects on a small thread pool, decodes them (Pillow for stills, PyAV for videos)
and runs the model on numpy batches while the next batch's objects are already being fetched.
Encoded bytes never travel through Spark rows, so an object's size does not matter to Spark, and
executor memory is bounded by two model batches of decoded frames. The video probe that cuts long
recordings into segments is here too.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
from pyspark import AccumulatorParam
from pyspark.sql import DataFrame

from vidspark.backbone import cached_model, cpu_info, featurize_arrays, task_cpus, task_gpu
from vidspark.config import FeaturizerConf, InputConf, StorageConf, VideoConf
from vidspark.errors import error_message, raised_in_vidspark
from vidspark.imaging import decode_image
from vidspark.inventory import key_without_extension
from vidspark.layout import TimeZones
from vidspark.schemas import FEATURIZE_RESULT_SCHEMA, IDENTITY_FIELDS, PLAN_SCHEMA
from vidspark.storage import cached_s3_client, read_object
from vidspark.video import WHOLE, DecodeReport, Segment, VideoFrame, decode_frames, probe_segments
from vidspark.video_source import is_storage_error, open_source, read_head, sniff_is_video

_PLAN_COLUMNS = PLAN_SCHEMA.fieldNames()
_RESULT_COLUMNS = FEATURIZE_RESULT_SCHEMA.fieldNames()
_IDENTITY_COLUMNS = [f.name for f in IDENTITY_FIELDS]


Loaded = tuple[np.ndarray | None, tuple[str, str, str] | None]


def _input_problem(stage: str, exc: Exception) -> tuple[str, str, str]:
    """An object's (stage, error_type, message), or ``exc`` raised again where it is a bug of vidspark's own code."""
    if raised_in_vidspark(exc):
        raise exc
    return stage, type(exc).__name__, error_message(exc)


class CoreGate:
    """Keeps decoding off the cores while the model runs, where the model was given every core of the task.

    ``featurizer.decode_mode``: ``alternate`` makes decode threads wait while a model call runs (fetching,
    which waits on the network, goes on), so each batch is decoded with all cores and then featurized
    with all cores; ``overlap`` lets them run side by side, which pays only where the model leaves
    cores free (``featurizer.threads`` below ``spark.task.cpus``); ``auto`` picks ``alternate`` unless
    it does. On two cores, decode and a model using both slowed the model to about 0.6 of its speed.
    """

    def __init__(self, alternate: bool) -> None:
        self.alternate = alternate
        self._free = threading.Event()
        self._free.set()
        self._waits: list[float] = []  # seconds decode threads spent waiting (list.append is atomic)

    @property
    def waited_s(self) -> float:
        return float(sum(self._waits))

    def wait(self) -> None:
        """Block a decode while a model call holds the cores (returns at once in overlap mode)."""
        if self.alternate and not self._free.is_set():
            t0 = time.monotonic()
            while not self._free.wait(timeout=1.0):
                pass
            self._waits.append(time.monotonic() - t0)

    def hold(self) -> Any:
        """Context manager around a model call (or the model's build)."""
        gate = self

        class _Held:
            def __enter__(self) -> None:
                if gate.alternate:
                    gate._free.clear()

            def __exit__(self, *exc: object) -> None:
                gate._free.set()

        return _Held()


def decode_alternates(fconf: FeaturizerConf) -> bool:
    """``featurizer.decode_mode`` for this task: alternate unless the model leaves some of the task's cores free (or runs on a GPU)."""
    if fconf.decode_mode != "auto":
        return fconf.decode_mode == "alternate"
    if task_gpu() is not None:  # the model runs on the task's GPU: decoding has the cores meanwhile
        return False
    cores = task_cpus() or cpu_info()["cores"]
    return not (fconf.threads and fconf.threads < cores)


_OPEN = CoreGate(alternate=False)


def _load_one(uri: str, etag: str | None, fconf: FeaturizerConf, sconf: StorageConf, gate: CoreGate = _OPEN) -> Loaded:
    """Fetch and decode one image; a failure of the input is returned as (stage, error_type, message)."""
    try:
        client = cached_s3_client(sconf) if uri.startswith("s3://") else None
        data = read_object(uri, client=client, etag=etag, attempts=sconf.max_attempts)
    except Exception as exc:  # a storage failure is a per-object errors row, never a task failure
        return None, _input_problem("fetch", exc)
    gate.wait()
    try:
        return decode_image(data, size=fconf.image_size, max_pixels=fconf.max_image_pixels), None
    except Exception as exc:  # DecodeError, or anything odd EXIF/TIFF/codec data makes Pillow raise: one object's row
        return None, _input_problem("decode", exc)


def _load_auto(row: dict[str, Any], fconf: FeaturizerConf, sconf: StorageConf, vconf: VideoConf, gate: CoreGate = _OPEN) -> Loaded | str:
    """An object whose extension says nothing: ``"video"`` when its first bytes are a container, else the image."""
    try:
        head = read_head(open_source(row["uri"], size=int(row["size"] or 0), etag=row["etag"], sconf=sconf, vconf=vconf))
    except Exception as exc:  # storage failure: the object's errors row
        return None, _input_problem("fetch", exc)
    if sniff_is_video(head):
        return "video"
    return _load_one(row["uri"], row["etag"], fconf, sconf, gate)


def _timed_load(
    row: dict[str, Any], fconf: FeaturizerConf, sconf: StorageConf, vconf: VideoConf, started: dict[int, float], token: int, durations: list[float], gate: CoreGate = _OPEN
) -> Loaded | str:
    """Load one image (or sniff an extension-less object), noting when a fetch thread started on it and how long it took."""
    started[token] = t0 = time.monotonic()
    try:
        return _load_auto(row, fconf, sconf, vconf, gate) if row["kind"] == "auto" else _load_one(row["uri"], row["etag"], fconf, sconf, gate)
    finally:
        durations.append(time.monotonic() - t0)  # list.append is atomic: no lock between fetch threads


def opt_int(value: Any) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def segment_of(row: dict[str, Any]) -> Segment:
    """The :class:`Segment` a work row stands for (the whole video when it was not split)."""
    return Segment(
        start_pts=opt_int(row.get("seg_start")),
        end_pts=opt_int(row.get("seg_end")),
        first_idx=opt_int(row.get("first_idx")) or 0,
        prev_pts=opt_int(row.get("prev_pts")),
        last_idx=opt_int(row.get("last_idx")),
        seg_no=opt_int(row.get("seg_no")) or 0,
    )


def _identity(row: dict[str, Any]) -> dict[str, Any]:
    """A work row's identity columns, and its object's time (the base of a video's frame times)."""
    return {**{c: row[c] for c in _IDENTITY_COLUMNS}, "object_ts": row["frame_ts"]}


def _frame_identity(row: dict[str, Any], frame: VideoFrame, session_tz: str = "UTC", zones: TimeZones | None = None) -> dict[str, Any]:
    """A video frame's identity: its time is the object's start plus its pts; its date is the frame's date in the camera's zone, as for stills.

    Timestamps reach ``mapInPandas`` naive, in the session time zone, and must leave the same way.
    A video across local midnight has frames on two dates.
    """
    ident = _identity(row)
    start = pd.Timestamp(row["frame_ts"])
    start = start.tz_localize(session_tz) if start.tzinfo is None else start
    ts = (start + pd.Timedelta(microseconds=round(frame.seconds * 1_000_000))).tz_convert("UTC")
    local = local_date_of(ts, row["camera_id"], zones)
    ident.update(
        video_id=row["video_id"] or key_without_extension(row["key"]), frame_idx=frame.idx, frame_ts=ts.tz_convert(session_tz).tz_localize(None), date=local, dropped_frames=frame.dropped_before
    )
    return ident


def local_date_of(ts: pd.Timestamp, camera_id: str | None, zones: TimeZones | None) -> date:
    """The date of the instant ``ts`` (tz-aware) in the camera's zone (UTC without ``zones``)."""
    instant = ts.to_pydatetime()
    return instant.astimezone(zones.zone(camera_id)).date() if zones is not None else instant.date()


def _error_stage(source: Any) -> str:
    return "fetch" if is_storage_error(source) else "decode"


def make_probe_fn(vconf: VideoConf, sconf: StorageConf) -> Any:
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
                except Exception as exc:  # a probe that fails on the input is this video's errors row; a bug fails the task
                    stage, error_type, message = _input_problem("decode", exc)
                    segments, report = [], DecodeReport(errors=[(error_type, message)])
                for seg in segments:
                    out.append({**base, "seg_start": seg.start_pts, "seg_end": seg.end_pts, "first_idx": seg.first_idx, "prev_pts": seg.prev_pts, "last_idx": seg.last_idx, "seg_no": seg.seg_no})
                err = report.error()
                if err is not None:
                    out.append({**base, "stage": stage, "error_type": err[0], "message": error_message(err[1])})
            yield pd.DataFrame.from_records(out, columns=_PLAN_COLUMNS)

    return plan_partition


VERSIONS_KEY = "versions: "
MODEL_KEY = "model: "
GPU_KEY = "gpu: "  # + JSON of the task's placement: the run record's executor_gpus
THUMB = 28  # skip_static compares 28x28 colour thumbnails of the model input


def thumbnail(pixels: np.ndarray) -> np.ndarray:
    """A frame's colour thumbnail for :data:`FeaturizerConf.skip_static`: means of square blocks (28x28x3 at 224), 0..1.

    Colour, not grey: an object can differ from the background in hue at the same brightness.
    """
    size = pixels.shape[0]
    block = max(1, size // THUMB)
    n = size // block
    px = pixels[: n * block, : n * block].astype(np.float32)
    return px.reshape(n, block, n, block, 3).mean(axis=(1, 3)) / 255.0


def static_difference(a: np.ndarray, b: np.ndarray) -> float:
    """How much two thumbnails differ, 0..1: the largest change of any cell (8x8 pixels, one colour, at 224).

    The largest, not the mean: a person far from the camera changes a few cells a lot and the rest
    not at all, and a whole-frame mean would let that through. Sensor noise averages out within a
    cell (sigma 2 grey levels gives about 0.001 per cell), and H.264 removes most of it anyway.
    """
    return float(np.abs(a - b).max())


class TaskStats(AccumulatorParam):  # type: ignore[type-arg]
    """Spark accumulator of featurize task timings: keys ending in ``_max`` keep the maximum, others add up.

    Per task: ``tasks``, ``frames`` (through the model), ``frames_skipped`` (``skip_static``: features
    reused), ``task_s`` (whole task), ``startup_s_max`` (task start to the model's first call: model
    build in a fresh worker, the first batch's fetches), ``model_s`` (in model calls), ``wait_s``
    (model thread waiting for frames: fetch/decode could not keep up, or decoding between model
    calls in ``alternate`` mode), ``decode_s`` (fetch and decode of images, summed over threads,
    waits for the model excluded; videos decode in the producer thread), ``errors`` (errors rows),
    ``versions: tensorflow X, keras Y`` (tasks whose model those made) and ``model: batch B (how),
    PRECISION, N threads, DEVICE, decode MODE`` (tasks that ran so).
    """

    def zero(self, value: dict[str, float]) -> dict[str, float]:
        return {}

    def addInPlace(self, a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
        for k, v in b.items():
            a[k] = max(a.get(k, 0.0), v) if k.endswith("_max") else a.get(k, 0.0) + v
        return a


class _Stopped(Exception):
    """The consumer went away; the producer thread ends quietly."""


_DONE = object()


class _Ref:
    """The last frame of a video (segment) that went through the model: its thumbnail, index and, once computed, features."""

    __slots__ = ("features", "idx", "thumb")

    def __init__(self, thumb: np.ndarray, idx: int) -> None:
        self.thumb = thumb
        self.idx = idx
        self.features: np.ndarray | None = None


def make_featurize_fn(
    fconf: FeaturizerConf,
    sconf: StorageConf,
    featurizer_id: str,
    vconf: VideoConf | None = None,
    session_tz: str = "UTC",
    stats: Any | None = None,
    *,
    iconf: InputConf | None = None,
    executor_gpus: float = 0.0,
) -> Any:
    """The ``mapInPandas`` function: work rows in, FEATURIZE_RESULT_SCHEMA batches out (one row per frame or error).

    ``executor_gpus``: ``spark.executor.resource.gpu.amount``, which decides how a task's model is
    placed on the GPU Spark assigned it (:mod:`vidspark.gpus`).

    A producer thread turns work rows into frames (images fetched and decoded on a thread pool with
    a look-ahead of two model batches, videos streamed and decoded in order) and hands them over a
    bounded queue; the task's own thread runs the model on full batches. Memory is bounded by the
    queue, the look-ahead and the model batch, whatever the objects' sizes. ``iconf`` gives the
    cameras' zones, which date a video's frames. Decoding waits while the model runs where the
    model has every core (:class:`CoreGate`). With ``skip_static``, a video frame whose thumbnail
    differs from the last featurized frame of its video by less than the threshold in every cell
    (:func:`static_difference`) reuses that frame's features and names it in ``features_from_idx``.
    """
    vconf = vconf or VideoConf()
    zones = TimeZones.from_conf(iconf) if iconf is not None else None

    def featurize_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        t_task = time.perf_counter()
        work = [r for pdf in batches for r in pdf.to_dict("records")]  # metadata only, a few hundred bytes a row
        if not work:
            return
        timing = {"tasks": 1.0, "frames": 0.0, "frames_skipped": 0.0, "model_s": 0.0, "wait_s": 0.0}
        durations: list[float] = []  # fetch + decode of each image, from the pool threads
        planned = fconf.batch_size or 64  # bounds memory until the model says its batch size
        frames: queue.Queue[Any] = queue.Queue(maxsize=max(2, planned))
        stop = threading.Event()
        gate = CoreGate(decode_alternates(fconf))

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
                source = open_source(row["uri"], size=opt_int(row["size"]) or 0, etag=row["etag"], sconf=sconf, vconf=vconf)
                stream = (row["uri"], segment.seg_no)  # skip_static compares frames within one decode of one video
                gate.wait()
                for frame in decode_frames(source, vconf, size=fconf.image_size, segment=segment, report=report, stall_timeout_s=fconf.decode_timeout_s):
                    put((_frame_identity(row, frame, session_tz, zones), frame.pixels, None, stream))
                    gate.wait()  # the next frame decodes when the model is not running
            except _Stopped:
                raise
            except Exception as exc:  # anything PyAV or the reader raises is this video's errors row; a bug fails the task
                _, error_type, message = _input_problem("decode", exc)
                report.add(error_type, message)
            err = report.error()
            if err is not None:
                put((_identity(row), None, (_error_stage(source), err[0], error_message(err[1])), None))

        def produce() -> None:
            try:
                pool = ThreadPoolExecutor(max_workers=fconf.fetch_threads, thread_name_prefix="vidspark-fetch")
                try:
                    pending: dict[Future[Any], tuple[dict[str, Any], int]] = {}
                    started: dict[int, float] = {}  # token -> when a fetch thread began the object
                    abandoned: list[Future[Any]] = []
                    lookahead = max(2 * planned, 2 * fconf.fetch_threads)

                    def emit(row: dict[str, Any], result: Any) -> None:
                        if result == "video":
                            emit_video({**row, "video_id": row["video_id"] or key_without_extension(row["key"])}, WHOLE)
                        else:
                            put((_identity(row), result[0], result[1], None))

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
                                    put((_identity(row), None, ("decode", "DecodeTimeout", f"fetch and decode took over featurizer.decode_timeout_s ({fconf.decode_timeout_s:g} s)"), None))

                    for row in work:
                        if row["kind"] == "video":
                            drain(0)
                            emit_video(row)
                            continue
                        token = id(row)  # rows live as long as the task
                        pending[pool.submit(_timed_load, row, fconf, sconf, vconf, started, token, durations, gate)] = (row, token)
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
            model: Any = None
            batch: list[tuple[dict[str, Any], np.ndarray, _Ref | None]] = []
            failed: list[dict[str, Any]] = []
            skipped: list[tuple[dict[str, Any], _Ref]] = []
            refs: dict[Any, _Ref] = {}  # per video (segment) in this task: the last frame that went through the model
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
                ident, pixels, err, stream = item
                if err is not None:
                    failed.append({**ident, "stage": err[0], "error_type": err[1], "message": err[2]})
                    continue
                if model is None:
                    with gate.hold():  # building (and calibrating) uses every core too
                        model = cached_model(fconf, sconf, executor_gpus=executor_gpus)
                    place = getattr(model, "place", None)
                    if place is not None and place.mode != "none":
                        timing[GPU_KEY + json.dumps({**place.record(model.device), "pid": os.getpid()}, sort_keys=True)] = 1.0
                    timing[VERSIONS_KEY + getattr(model, "versions", "unknown")] = 1.0  # which TensorFlow/Keras made these features (run record: executor_versions)
                    describe = getattr(model, "describe", None)
                    timing[MODEL_KEY + (describe() if describe else "unknown") + f", decode {'alternate' if gate.alternate else 'overlap'}"] = 1.0
                ref: _Ref | None = None
                if fconf.skip_static > 0 and stream is not None:
                    thumb = thumbnail(pixels)
                    last = refs.get(stream)
                    if last is not None and last.idx >= 0 and static_difference(thumb, last.thumb) < fconf.skip_static:
                        skipped.append((ident, last))
                        if len(skipped) >= 4 * getattr(model, "batch_size", planned):
                            ready = [s for s in skipped if s[1].features is not None]
                            if ready:
                                skipped = [s for s in skipped if s[1].features is None]
                                yield _reused_rows(ready, featurizer_id, getattr(model, "versions", None), timing)
                        continue
                    ref = refs[stream] = _Ref(thumb, int(ident["frame_idx"]))
                batch.append((ident, pixels, ref))
                if len(batch) >= getattr(model, "batch_size", planned):
                    with gate.hold():
                        out = _run_model(batch, failed, fconf, sconf, featurizer_id, timing, t_task, model=model)
                    yield _with_reused(out, skipped, featurizer_id, model, timing)
                    batch, failed, skipped = [], [], [s for s in skipped if s[1].features is None and s[1].idx >= 0]
            if batch or failed:
                with gate.hold():
                    out = _run_model(batch, failed, fconf, sconf, featurizer_id, timing, t_task, model=model)
                yield _with_reused(out, skipped, featurizer_id, model, timing)
            elif skipped:
                yield _reused_rows(skipped, featurizer_id, getattr(model, "versions", None), timing)
            timing["task_s"] = time.perf_counter() - t_task
            timing["decode_s"] = max(0.0, float(sum(durations)) - gate.waited_s)
            timing.setdefault("startup_s_max", timing["task_s"])
            if stats is not None:
                stats.add(timing)
        finally:
            stop.set()
            producer.join(timeout=30)

    return featurize_partition


def _with_reused(out: pd.DataFrame, skipped: list[tuple[dict[str, Any], _Ref]], featurizer_id: str, model: Any, timing: dict[str, float]) -> pd.DataFrame:
    """A model batch's rows plus the skipped frames whose reference has its features now (the others wait for theirs)."""
    ready = [s for s in skipped if s[1].features is not None or s[1].idx < 0]
    if not ready:
        return out
    return pd.concat([out, _reused_rows(ready, featurizer_id, getattr(model, "versions", None), timing)], ignore_index=True)


def _reused_rows(skipped: list[tuple[dict[str, Any], _Ref]], featurizer_id: str, framework: str | None, timing: dict[str, float]) -> pd.DataFrame:
    """Rows of frames that reuse their reference frame's features (``features_from_idx``); an errors row where the reference had none."""
    records = []
    for ident, ref in skipped:
        if ref.features is not None:
            records.append({**ident, "features": ref.features, "featurizer": featurizer_id, "framework": framework, "features_from_idx": ref.idx})
        else:
            records.append({**ident, "stage": "featurize", "error_type": "NonFiniteFeatures", "message": "reuses the features of a frame whose model output had NaN or inf (featurizer.skip_static)"})
            timing["errors"] = timing.get("errors", 0.0) + 1.0
    timing["frames_skipped"] = timing.get("frames_skipped", 0.0) + float(sum(1 for _, ref in skipped if ref.features is not None))
    return _frame(records)


def _frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    out = pd.DataFrame({c: [r.get(c) for r in records] for c in _RESULT_COLUMNS})  # absent keys are None, not NaN
    out["frame_idx"] = out["frame_idx"].astype("int64")
    out["dropped_frames"] = out["dropped_frames"].astype("Int64")  # null for stills
    out["features_from_idx"] = out["features_from_idx"].astype("Int64")  # null: the frame went through the model
    return out


def _run_model(
    batch: list[Any],
    failed: list[dict[str, Any]],
    fconf: FeaturizerConf,
    sconf: StorageConf,
    featurizer_id: str,
    timing: dict[str, float],
    t_task: float,
    *,
    model: Any = None,
) -> pd.DataFrame:
    """Features for a batch of decoded frames, plus the error rows gathered alongside it.

    A model that cannot load or a model call that fails (resource exhaustion, a device error, a bug)
    fails the task, which Spark retries: frames of a fixed shape are no input problem. Only NaN or
    inf in a frame's features is that frame's errors row. A batch entry's third item, a skip_static
    reference, receives the frame's features (None where they are not finite: frames that would
    reuse them get errors rows).
    """
    records = []
    if batch:
        model = model if model is not None else cached_model(fconf, sconf)
        timing[VERSIONS_KEY + getattr(model, "versions", "unknown")] = 1.0
        t0 = time.perf_counter()
        feats = featurize_arrays(model, np.stack([entry[1] for entry in batch]), batch_size=fconf.batch_size or 32)
        timing["model_s"] += time.perf_counter() - t0
        timing["frames"] += len(batch)
        timing.setdefault("startup_s_max", t0 - t_task)
        bad = ~np.isfinite(feats).all(axis=1)
        for entry, vec, nonfinite in zip(batch, feats, bad, strict=True):
            ident: dict[str, Any] = entry[0]
            ref: _Ref | None = entry[2] if len(entry) > 2 else None
            if nonfinite:
                records.append({**ident, "stage": "featurize", "error_type": "NonFiniteFeatures", "message": "model output has NaN or inf"})
                if ref is not None:
                    ref.idx = -1  # frames reusing it are errors rows too
            else:
                records.append({**ident, "features": vec, "featurizer": featurizer_id, "framework": getattr(model, "versions", None)})
                if ref is not None:
                    ref.features = vec
    records.extend(failed)
    timing["errors"] = timing.get("errors", 0.0) + float(len(failed) + int(bad.sum() if batch else 0))
    return _frame(records)


def with_features(
    work_df: DataFrame,
    *,
    fconf: FeaturizerConf,
    sconf: StorageConf,
    featurizer_id: str,
    vconf: VideoConf | None = None,
    num_tasks: int | None = None,
    session_tz: str = "UTC",
    stats: Any | None = None,
    iconf: InputConf | None = None,
    executor_gpus: float = 0.0,
    profile: Any | None = None,
) -> DataFrame:
    """Featurize every work row (image, video or video segment); failures carry ``stage``/``error_type``/``message``.

    Parameters
    ----------
    work_df
        Rows of ``WORK_SCHEMA``.
    fconf, sconf, vconf
        Featurizer, storage and video settings (shipped to executors with the function).
    iconf
        Input settings: the cameras' zones, which give a video frame its local ``date`` (None: UTC dates).
    featurizer_id
        Featurizer id written with every features row.
    num_tasks
        Repartition to this many tasks first (None keeps the partitioning).
    stats
        A :class:`TaskStats` accumulator that each task adds its timings to.
    executor_gpus, profile
        The executors' GPUs (placement, :mod:`vidspark.gpus`) and the stage's own ResourceProfile
        (:func:`vidspark.gpus.stage_request`; None: the stage asks for nothing of its own).

    Returns
    -------
    DataFrame
        ``FEATURIZE_RESULT_SCHEMA``: one row per frame, and one per object (or video segment) that failed.
    """
    df = work_df.repartition(num_tasks) if num_tasks else work_df
    fn = make_featurize_fn(fconf, sconf, featurizer_id, vconf, session_tz, stats, iconf=iconf, executor_gpus=executor_gpus)
    if profile is None:
        return df.mapInPandas(fn, schema=FEATURIZE_RESULT_SCHEMA)
    # The stage's own resources (a GPU share); the shuffle after it ends the stage, so what reads the features holds no GPU.
    return df.mapInPandas(fn, schema=FEATURIZE_RESULT_SCHEMA, profile=profile).repartition("camera_id", "date")


def with_segments(videos_df: DataFrame, *, vconf: VideoConf, sconf: StorageConf) -> DataFrame:
    """Probe each video (executors) and cut it into keyframe-aligned segments (``PLAN_SCHEMA``)."""
    return videos_df.mapInPandas(make_probe_fn(vconf, sconf), schema=PLAN_SCHEMA)


def nullable_ints_for_arrow(pdf: pd.DataFrame) -> pd.DataFrame:
    """Nullable integer columns as Python ints and None, which Arrow turns into longs with nulls."""
    pdf = pdf.copy()
    for col in ("size", "seg_start", "seg_end", "first_idx", "prev_pts", "last_idx", "seg_no"):
        pdf[col] = [opt_int(v) for v in pdf[col]]
    return pdf
