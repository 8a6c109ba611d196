"""The inventory (a listing parsed with the layout into work rows) runs on the executors: these run it on Spark."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pandas as pd
import pytest

from vidspark.inventory import UNKNOWN_CAMERA, Selection, build_inventory
from vidspark.layout import Layout
from vidspark.listing import Resolved, list_prefix, listing_pandas
from vidspark.schemas import LISTING_SCHEMA
from vidspark.storage import ObjectInfo, parse_uri

T0 = datetime(2026, 11, 20, 23, 59, 59, tzinfo=timezone.utc)


def obj(key: str, seconds: float) -> ObjectInfo:
    return ObjectInfo(uri=f"s3://b/{key}", rel_key=key, size=1, etag="e", last_modified=T0 + timedelta(seconds=seconds))


@dataclass
class Inv:
    rows: pd.DataFrame
    errors: list[dict[str, Any]]
    counts: dict[str, int]

    @property
    def listed(self) -> int:
        return self.counts["listed"]

    @property
    def unselected(self) -> int:
        return self.counts["unselected"]


def python_nodes(df) -> list[str]:
    """The physical plan's nodes that run Python (a pandas UDF, mapInPandas): each needs Python workers."""
    plan = df._jdf.queryExecution().executedPlan().toString()
    return [line.strip() for line in plan.splitlines() if "Python" in line or "ArrowEval" in line or "MapInArrow" in line or "MapInPandas" in line]


@pytest.fixture()
def inventory(spark, request):
    """``inventory(objects, layout, **kw)``: build the inventory of these listed objects on Spark, rows as pandas (UTC).

    Keys parsed on the driver (a listing small enough for the driver to make,
    :func:`vidspark.listing.list_on_driver`), or on the executors where a test is parametrized with
    ``executors``: the tests so marked hold for both.
    """
    where = getattr(request, "param", "driver")

    def run(objs: list[ObjectInfo], layout: Layout, **kw: Any) -> Inv:
        data = [(o.uri, o.rel_key, o.size, o.etag, o.last_modified) for o in objs]
        listing = spark.createDataFrame(data, schema=LISTING_SCHEMA)
        local = listing_pandas(Resolved([], objs)) if where == "driver" else None
        inv = build_inventory(listing, layout, local=local, **kw)
        if local is not None and kw.get("gap_seconds") is None:
            assert python_nodes(inv.parsed) == [] and python_nodes(inv.rows) == []  # keys parsed here: no Python worker needed
        elif local is None:
            assert python_nodes(inv.parsed)  # the check above can fail
        try:
            rows = inv.rows.toPandas()
            rows["frame_ts"] = pd.to_datetime(rows["frame_ts"]).dt.tz_localize(spark.conf.get("spark.sql.session.timeZone")).dt.tz_convert("UTC")
            rows = rows.sort_values("key").reset_index(drop=True)
            rows["video_id"] = rows["video_id"].astype(object).where(rows["video_id"].notna(), None)
            return Inv(rows, [r.asDict() for r in inv.errors.collect()], inv.counts())
        finally:
            inv.unpersist()

    return run


@pytest.mark.parametrize("inventory", ["executors", "driver"], indirect=True)
def test_frame_folders_follow_file_name_order_even_when_uploaded_out_of_order(inventory):
    # frame_10 was uploaded before frame_2: order follows the file names, and the folder has one time (its earliest)
    objs = [obj("cam1/v1/frame_2.jpg", 5), obj("cam1/v1/frame_10.jpg", 1), obj("cam1/v1/frame_1.jpg", 0.5), obj("cam1/v2/a.jpg", 3)]
    inv = inventory(objs, Layout("{camera_id}/{video_id}/**"))
    rows = inv.rows.set_index("uri")
    assert [rows.loc[f"s3://b/cam1/v1/frame_{i}.jpg", "frame_idx"] for i in (1, 2, 10)] == [0, 1, 2]
    assert {rows.loc[f"s3://b/cam1/v1/frame_{i}.jpg", "frame_ts"] for i in (1, 2, 10)} == {T0 + timedelta(seconds=0.5)}
    assert rows.loc["s3://b/cam1/v1/frame_10.jpg", "date"] == date(2026, 11, 20)
    assert rows.loc["s3://b/cam1/v2/a.jpg", "frame_idx"] == 0 and rows.loc["s3://b/cam1/v2/a.jpg", "date"] == date(2026, 11, 21)


def _identity(inv) -> dict:
    return inv.rows.set_index("uri")[["video_id", "frame_idx", "frame_ts", "date"]].to_dict("index")


def test_frame_identity_does_not_depend_on_upload_time_or_selection(inventory):
    objs = [obj(f"cam1/evt1/f{i:03d}.jpg", i) for i in range(20)]
    before = _identity(inventory(objs, Layout("{camera_id}/{video_id}/**")))
    # f005 uploaded again hours later (same bytes, new last-modified): nothing about any frame moves
    reuploaded = [o if "f005" not in o.rel_key else obj(o.rel_key, 7200) for o in objs]
    assert _identity(inventory(reuploaded, Layout("{camera_id}/{video_id}/**"))) == before
    # a run selecting by time sees the same index and time for what it selects
    since = T0 + timedelta(seconds=3)
    narrowed = inventory(reuploaded, Layout("{camera_id}/{video_id}/**"), selection=Selection(since=since))
    assert narrowed.rows.empty and narrowed.unselected == 20  # a folder is selected by its time, as a whole
    sel = inventory(objs[10:] + objs[:10], Layout("{camera_id}/{video_id}/**"), selection=Selection(until=since))
    assert _identity(sel) == before


def test_a_still_named_like_a_video_beside_it_is_a_video_of_its_own(inventory):
    objs = [obj("cam1/1430.mp4", 0), obj("cam1/1430.jpg", 1), obj("cam1/1431.jpg", 2)]
    rows = inventory(objs, Layout("{camera_id}/{video_id}")).rows.set_index("key")
    assert rows.loc["cam1/1430.mp4", "video_id"] == "1430"
    assert rows.loc["cam1/1430.jpg", "video_id"] == "1430.jpg" and rows.loc["cam1/1430.jpg", "frame_idx"] == 0
    assert rows["video_id"].nunique() == 3


@pytest.mark.parametrize("inventory", ["executors", "driver"], indirect=True)
def test_layout_ts_and_defaults_and_mismatches(inventory):
    objs = [obj("car/x.jpg", 0), obj("stray.jpg", 0), obj("person/y.jpg", 0)]
    inv = inventory(objs, Layout("{label}/**"))
    assert inv.listed == 3 and len(inv.rows) == 2
    assert inv.errors[0]["stage"] == "layout" and "stray.jpg" in inv.errors[0]["message"]
    assert set(inv.rows["camera_id"]) == {UNKNOWN_CAMERA} and inv.rows["video_id"].isna().all()
    assert (inv.rows["frame_idx"] == 0).all()
    ts_inv = inventory([obj("cam2/20261120T101500.jpg", 999)], Layout("{camera_id}/{ts}.jpg"))
    assert ts_inv.rows.loc[0, "frame_ts"] == datetime(2026, 11, 20, 10, 15, tzinfo=timezone.utc)


@pytest.mark.parametrize("inventory", ["executors", "driver"], indirect=True)
def test_date_folders_select_by_day_and_scope_frame_folders(inventory):
    # {date} folders hold the frame folders: a folder named the same on two days is two frame sequences
    layout = Layout("{camera_id}/{date}/{video_id}/**")
    objs = [obj("c/2026-11-20/clip/f_2.jpg", 0), obj("c/2026-11-20/clip/f_1.jpg", 1), obj("c/2026-11-21/clip/f_1.jpg", 90_000)]
    rows = inventory(objs, layout).rows.set_index("key")
    assert rows.loc["c/2026-11-20/clip/f_1.jpg", "frame_idx"] == 0 and rows.loc["c/2026-11-20/clip/f_2.jpg", "frame_idx"] == 1
    assert rows.loc["c/2026-11-21/clip/f_1.jpg", "frame_idx"] == 0
    # a folder's time is its earliest upload on its day; an upload after the day counts as the day's start
    assert rows.loc["c/2026-11-20/clip/f_2.jpg", "frame_ts"] == datetime(2026, 11, 20, tzinfo=timezone.utc)
    assert rows.loc["c/2026-11-21/clip/f_1.jpg", "frame_ts"] == datetime(2026, 11, 21, tzinfo=timezone.utc)
    on_day = inventory([obj("c/2026-11-20/clip/f_2.jpg", 0)], layout).rows
    assert on_day.loc[0, "frame_ts"] == T0 and on_day.loc[0, "date"] == date(2026, 11, 20)
    # a {date} key is taken when its day overlaps the window, whatever its upload time
    noon = datetime(2026, 11, 21, 12, tzinfo=timezone.utc)
    sel = inventory(objs, layout, selection=Selection(since=noon))
    assert list(sel.rows["key"]) == ["c/2026-11-21/clip/f_1.jpg"] and sel.unselected == 2
    # a time of day in the file name takes its day from the {date} folder
    timed = inventory([obj("c/2026-11-21/101500.jpg", 0)], Layout("{camera_id}/{date}/{ts}.jpg", ts_format="%H%M%S"))
    assert timed.rows.loc[0, "frame_ts"] == datetime(2026, 11, 21, 10, 15, tzinfo=timezone.utc)


def test_empty_listing_gives_empty_inventory(inventory):
    inv = inventory([], Layout("{label}/**"))
    assert inv.listed == 0 and inv.rows.empty


def test_broken_link_is_listed_not_dropped(tmp_path):
    (tmp_path / "car").mkdir()
    (tmp_path / "car" / "ok.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "car" / "dangling.jpg")
    keys = sorted(o.rel_key for o in list_prefix(parse_uri(str(tmp_path)), ""))
    assert keys == ["car/dangling.jpg", "car/ok.jpg"]


@pytest.mark.parametrize("inventory", ["executors", "driver"], indirect=True)
def test_motion_stills_are_grouped_into_events_by_gap(inventory):
    # cam1: 3 frames 2 s apart, a 40 s pause, 2 frames; cam2 interleaved in time but its own events
    times = {"cam1": [0, 2, 4, 44, 45], "cam2": [1, 3, 100]}
    objs = [obj(f"{cam}/motion_{i:03d}.jpg", t) for cam, ts in times.items() for i, t in enumerate(ts)]
    inv = inventory(objs[::-1], Layout("{camera_id}/**"), gap_seconds=10)
    rows = inv.rows.sort_values(["camera_id", "frame_ts"])
    events = rows.groupby(["camera_id", "video_id"], sort=False)["frame_idx"].apply(list).to_dict()
    assert events == {
        ("cam1", "evt-20261120T235959"): [0, 1, 2],
        ("cam1", "evt-20261121T000043"): [0, 1],
        ("cam2", "evt-20261121T000000"): [0, 1],
        ("cam2", "evt-20261121T000139"): [0],
    }
    # the boundary is "further apart than the gap": exactly the gap stays in the event
    same = inventory([obj("c/a.jpg", 0), obj("c/b.jpg", 10)], Layout("{camera_id}/**"), gap_seconds=10)
    assert same.rows["video_id"].nunique() == 1
    # without gap_seconds nothing is grouped
    assert inventory(objs, Layout("{camera_id}/**")).rows["video_id"].isna().all()


def test_video_objects_get_kind_and_default_video_id(inventory):
    objs = [obj("cam3/2026-11-20/143000.mp4", 0), obj("cam3/2026-11-21/143000.mp4", 0), obj("cam1/v1/f_1.jpg", 0), obj("cam1/v1/readme", 0)]
    inv = inventory(objs, Layout("{camera_id}/{video_id}/** | {camera_id}/**"))
    rows = inv.rows.set_index("key")
    assert rows.loc["cam3/2026-11-20/143000.mp4", "kind"] == "video"
    assert rows.loc["cam1/v1/f_1.jpg", "kind"] == "image" and rows.loc["cam1/v1/readme", "kind"] == "auto"
    # {video_id} here is the day folder, as the layout says; with a layout that names no video id,
    # the key without extension identifies the recording
    inv2 = inventory(objs[:2], Layout("{camera_id}/**"))
    assert sorted(inv2.rows["video_id"]) == ["cam3/2026-11-20/143000", "cam3/2026-11-21/143000"]


def test_extensionless_objects_are_not_grouped_into_events(inventory):
    objs = [obj("cam1/a.jpg", 0), obj("cam1/clip0001", 1), obj("cam1/c.jpg", 2)]
    inv = inventory(objs, Layout("{camera_id}/**"), gap_seconds=10).rows.set_index("key")
    assert inv.loc["cam1/a.jpg", "video_id"] == inv.loc["cam1/c.jpg", "video_id"] == "evt-20261120T235959"
    assert inv.loc["cam1/clip0001", "video_id"] is None and inv.loc["cam1/c.jpg", "frame_idx"] == 1
