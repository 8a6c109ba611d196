"""Inventory: the listing of an input parsed with the layout into work rows, selection and events (driver side).

Everything that identifies a frame (camera, video, index, time) is decided here, over every listed
object and before ``--since/--until/--cameras`` narrow them, never from upload order, so that a
night's incremental run and a from-scratch run over the same archive agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from vidspark.config import Conf
from vidspark.layout import Layout, LayoutMismatch, natural_key
from vidspark.schemas import WORK_SCHEMA
from vidspark.storage import Location, ObjectInfo, list_objects
from vidspark.video_source import kind_of_key

UNKNOWN_CAMERA = "unknown"
_WORK_COLUMNS = WORK_SCHEMA.fieldNames()


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
      :func:`assign_event_ids`).
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
        rows = assign_event_ids(rows, gap_seconds=gap_seconds, mask=stills & rows["video_id"].isna())
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


def assign_event_ids(rows: pd.DataFrame, *, gap_seconds: float, mask: pd.Series) -> pd.DataFrame:
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


def list_inventory(location: Location, client: Any | None, conf: Conf, *, selection: Selection | None = None) -> Inventory:
    """List the input (the only driver-side pass) and parse keys; the caller has checked it is readable."""
    layout = Layout(conf.input.layout, ts_format=conf.input.ts_format)
    return build_inventory(list_objects(location, client), layout, gap_seconds=conf.events.gap_seconds, selection=selection)
