"""Time zones: keys named in the cameras' local time, camera-local ``date`` partitions, ``--since/--until`` with an offset or a zone."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from vidspark.cli import _selection, build_parser, main, parse_when
from vidspark.config import Conf, load_conf
from vidspark.errors import ConfigError
from vidspark.frames import _frame_identity
from vidspark.inventory import Selection, build_inventory
from vidspark.layout import Layout, TimeZones
from vidspark.listing import day_range, listing_frame, make_children, plan_listing, resolve
from vidspark.schemas import LISTING_SCHEMA
from vidspark.storage import parse_uri
from vidspark.video import VideoFrame

BERLIN, NEW_YORK = ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York")
UTC = timezone.utc
HOUR = timedelta(hours=1)
TS = "%Y%m%dT%H%M%S"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local_names(tz: ZoneInfo, start: datetime, hours: int) -> list[datetime]:
    """``hours`` hourly instants from ``start`` (UTC), as the local wall-clock times a recorder in ``tz`` names its files by."""
    return [(start + i * HOUR).astimezone(tz) for i in range(hours)]


# --- pure Python: the layout, --since/--until, the listing's days ---------------------------------


def test_ts_is_read_in_the_cameras_zone_and_an_offset_wins():
    layout = Layout("{camera_id}/{ts}.jpg", timezone="Europe/Berlin", timezones={"cam3": "America/New_York"})
    assert layout.parse("cam1/20261120T220000.jpg").ts == utc(2026, 11, 20, 21)
    assert layout.parse("cam3/20261120T220000.jpg").ts == utc(2026, 11, 21, 3)  # per-camera override
    assert Layout("{camera_id}/{ts}.jpg").parse("cam1/20261120T220000.jpg").ts == utc(2026, 11, 20, 22)  # default: UTC, as before
    zoned = Layout("{camera_id}/{ts}.jpg", ts_format=TS + "%z", timezone="America/New_York")
    assert zoned.parse("cam1/20261120T220000+0100.jpg").ts == utc(2026, 11, 20, 21)  # %z wins over the zone
    # a {ts} with only a time of day takes its day from {date}, both local
    dated = Layout("{camera_id}/{date}/{ts}.jpg", ts_format="%H%M%S", timezone="Europe/Berlin")
    assert dated.parse("cam1/2026-11-21/003000.jpg").ts == utc(2026, 11, 20, 23, 30)


def test_dst_gap_and_repeated_hour_follow_the_documented_rule():
    layout = Layout("{camera_id}/{ts}.jpg", timezone="Europe/Berlin")
    # clocks go forward at 02:00 -> 03:00 on 2026-03-29: 02:30 does not exist, read with the offset before (+01:00)
    assert layout.parse("c/20260329T013000.jpg").ts == utc(2026, 3, 29, 0, 30)
    assert layout.parse("c/20260329T023000.jpg").ts == utc(2026, 3, 29, 1, 30)
    assert layout.parse("c/20260329T033000.jpg").ts == utc(2026, 3, 29, 1, 30)  # the same instant, written right
    # clocks go back at 03:00 -> 02:00 on 2026-10-25: 02:30 occurs twice, read as the first (+02:00)
    assert layout.parse("c/20261025T023000.jpg").ts == utc(2026, 10, 25, 0, 30)
    zoned = Layout("{camera_id}/{ts}.jpg", ts_format=TS + "%z", timezone="Europe/Berlin")
    assert zoned.parse("c/20261025T023000+0100.jpg").ts == utc(2026, 10, 25, 1, 30)  # an offset in the name tells them apart


def test_local_day_bounds_have_23_24_and_25_hours():
    zones = TimeZones("Europe/Berlin", {"cam3": "America/New_York"})
    for day, hours in ((date(2026, 3, 29), 23), (date(2026, 10, 25), 25), (date(2026, 11, 21), 24)):
        start, end = zones.day_bounds(day, "cam1")
        assert end - start == timedelta(hours=hours) and start.astimezone(BERLIN).hour == 0
    assert zones.day_bounds(date(2026, 11, 21), "cam3") == (utc(2026, 11, 21, 5), utc(2026, 11, 22, 5))
    assert zones.day_bounds(date(2026, 11, 21), "cam9") == (utc(2026, 11, 20, 23), utc(2026, 11, 21, 23))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2026-11-20T22:00+01:00", utc(2026, 11, 20, 21)),
        ("2026-11-20T21:00Z", utc(2026, 11, 20, 21)),
        ("2026-11-20T22:00 Europe/Berlin", utc(2026, 11, 20, 21)),
        ("2026-11-20T22:00[Europe/Berlin]", utc(2026, 11, 20, 21)),
        ("2026-11-20 22:00 America/New_York", utc(2026, 11, 21, 3)),
        ("2026-11-20 Europe/Berlin", utc(2026, 11, 19, 23)),  # a date with a zone: its local midnight
        ("2026-11-20 22:00", utc(2026, 11, 21, 3)),  # naive: in input.timezone (America/New_York here)
        ("2026-11-20", utc(2026, 11, 20, 5)),
        ("2026-10-25T02:30 Europe/Berlin", utc(2026, 10, 25, 0, 30)),  # repeated hour: the first
        ("2026-10-25T02:30+01:00[Europe/Berlin]", utc(2026, 10, 25, 1, 30)),  # an offset picks the second
        ("2026-03-29T02:30[Europe/Berlin]", utc(2026, 3, 29, 1, 30)),  # skipped hour: the offset before
    ],
)
def test_since_until_forms(text, expected):
    assert parse_when("--since", text, default_zone="America/New_York") == expected


def test_since_until_default_to_utc_as_before():
    assert parse_when("--until", "2026-11-20T22:00") == utc(2026, 11, 20, 22)
    assert parse_when("--until", "2026-11-20") == utc(2026, 11, 20)
    assert parse_when("--until", None) is None


@pytest.mark.parametrize(
    "text, needle",
    [
        ("yesterday", "not a date or time"),
        ("2026-11-20T22:00 Europe/Berln", "'Europe/Berln' is not a known IANA time zone"),
        ("2026-11-20T22:00[Mars/Olympus]", "'Mars/Olympus' is not a known IANA time zone"),
        ("2026-11-20T22:00+05:00[Europe/Berlin]", r"offset \+0500 is not Europe/Berlin's"),
    ],
)
def test_bad_since_until_names_the_option_value_and_forms(text, needle):
    with pytest.raises(ConfigError, match=needle) as info:
        parse_when("--until", text)
    assert str(info.value).startswith(f"--until {text!r}") and ("2026-11-20T22:00[Europe/Berlin]" in str(info.value) or "offset" in str(info.value))


def test_naive_since_until_are_in_input_timezone():
    conf = load_conf(overrides=["input.timezone=Europe/Berlin"])
    args = SimpleNamespace(since="2026-11-21", until="2026-11-21T06:00", cameras=None)
    sel = _selection(args, conf)
    assert (sel.since, sel.until) == (utc(2026, 11, 20, 23), utc(2026, 11, 21, 5))


def test_listing_days_cover_the_local_days_of_every_zone():
    since, until = utc(2026, 11, 21, 1), utc(2026, 11, 21, 4)  # 02:00-05:00 in Berlin, 20:00-23:00 the day before in New York
    assert day_range(since, until) == [date(2026, 11, 21)]
    assert day_range(since, until, ["America/New_York"]) == [date(2026, 11, 20)]
    assert day_range(since, until, ["Europe/Berlin", "America/New_York"]) == [date(2026, 11, 20), date(2026, 11, 21)]
    layout = Layout("{camera_id}/{date}/**", timezone="Europe/Berlin", timezones={"cam3": "America/New_York"})
    assert plan_listing(layout, since=since, until=until).patterns == ((None, "2026-11-20/"), (None, "2026-11-21/"))
    assert plan_listing(layout, since=since, until=until, cameras=frozenset({"cam1"})).patterns == (("cam1/2026-11-21/",),)
    assert plan_listing(layout, since=since, until=until, cameras=frozenset({"cam3"})).patterns == (("cam3/2026-11-20/",),)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("input.timezone=Europe/Berln", "conf key 'input.timezone': 'Europe/Berln' is not a known time zone; allowed: an IANA"),
        ("input.timezones.cam3=+01:00", "conf key 'input.timezones.cam3': '\\+01:00' is not a known time zone"),
        ("input.timezone=", "conf key 'input.timezone': '' is not a known time zone"),
    ],
)
def test_bad_zones_in_conf_name_the_key_the_value_and_what_is_allowed(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_conf(overrides=[override])


def test_zones_in_conf_and_layout_from_conf(tmp_path):
    path = tmp_path / "tz.yaml"
    path.write_text("input:\n  layout: '{camera_id}/{ts}'\n  timezone: Europe/Berlin\n  timezones:\n    cam3: America/New_York\n", encoding="utf-8")
    conf = load_conf(path)
    assert conf.input.timezone == "Europe/Berlin" and dict(conf.input.timezones) == {"cam3": "America/New_York"}
    assert load_conf(overrides=["input.timezones.cam3=America/New_York"]).input.timezones == {"cam3": "America/New_York"}
    assert Conf().input.timezone == "UTC" and not Conf().input.timezones
    layout = Layout.from_conf(conf.input)
    assert layout.zones.name("cam3") == "America/New_York" and layout.zones.name("cam1") == "Europe/Berlin"
    assert conf.replace("input", layout="{label}/**").input.timezones == {"cam3": "America/New_York"}
    with pytest.raises(ConfigError, match="camera id 7 is a int"):
        path.write_text("input:\n  timezones:\n    7: Europe/Berlin\n", encoding="utf-8")
        load_conf(path)


def test_a_video_frame_gets_its_own_local_date():
    # a clip starting 23:59:58 in New York (04:59:58 UTC): its frames after local midnight are on the next local date
    zones = TimeZones("Europe/Berlin", {"cam3": "America/New_York"})
    start = datetime(2026, 11, 20, 23, 59, 58, tzinfo=NEW_YORK).astimezone(UTC)
    row: dict[str, Any] = {"uri": "u", "etag": "e", "camera_id": "cam3", "video_id": None, "key": "cam3/20261120T235958.mp4", "frame_idx": 0, "label": None}
    row.update(frame_ts=start.replace(tzinfo=None), date=date(2026, 11, 20))  # as mapInPandas hands it over: naive, session time zone UTC
    pixels = np.zeros((2, 2, 3), np.float32)
    out = [_frame_identity(row, VideoFrame(i, i * 0.5, pixels), "UTC", zones) for i in range(8)]
    assert [o["date"] for o in out] == [date(2026, 11, 20)] * 4 + [date(2026, 11, 21)] * 4
    assert [o["frame_ts"] for o in out] == [start.replace(tzinfo=None) + timedelta(seconds=i * 0.5) for i in range(8)]
    assert {o["date"] for o in (_frame_identity(row, VideoFrame(i, i * 0.5, pixels)) for i in range(8))} == {date(2026, 11, 21)}  # no zones: UTC dates, as before


# --- on Spark: the inventory of tiny keys ----------------------------------------------------------


def inventory_rows(spark, keys: list[str], layout: Layout, *, modified: datetime = utc(2026, 1, 1), selection: Selection | None = None) -> pd.DataFrame:
    """The selected work rows of these keys: key, camera_id, frame_ts as UTC, date."""
    listing = spark.createDataFrame([(f"s3://b/{k}", k, 1, "e", modified) for k in keys], schema=LISTING_SCHEMA)
    inv = build_inventory(listing, layout, selection=selection)
    try:
        pdf = inv.rows.select("key", "camera_id", F.unix_micros("frame_ts").alias("us"), "date").toPandas()
    finally:
        inv.unpersist()
    pdf["frame_ts"] = pd.to_datetime(pdf["us"], unit="us", utc=True)
    return pdf.sort_values("frame_ts").reset_index(drop=True)


def test_dst_nights_in_both_directions(spark):
    layout = Layout("{camera_id}/{ts}.jpg", timezone="Europe/Berlin")
    zoned = Layout("{camera_id}/{ts}.jpg", ts_format=TS + "%z", timezone="Europe/Berlin")
    # hourly from local midnight to local midnight, named in local time: 23 files in spring, 24 names in autumn (02:00 twice, one name)
    spring = local_names(BERLIN, utc(2026, 3, 28, 23), 23)
    autumn = local_names(BERLIN, utc(2026, 10, 24, 22), 25)
    nights = {
        "spring": (layout, [f"spring/{t:{TS}}.jpg" for t in spring], spring),
        "autumn": (layout, [f"autumn/{t:{TS}}.jpg" for t in dict.fromkeys(t.replace(tzinfo=None) for t in autumn)], [t for t in autumn if t.fold == 0]),
        "autumn-offset": (zoned, [f"autumn-offset/{t:{TS}%z}.jpg" for t in autumn], autumn),  # an offset in the name keeps all 25
    }
    for camera, (lay, keys, instants) in nights.items():
        rows = inventory_rows(spark, keys, lay)
        assert list(rows["frame_ts"]) == [pd.Timestamp(t) for t in instants], camera
        assert rows["frame_ts"].is_monotonic_increasing and rows["frame_ts"].is_unique, camera
        local_day = {"spring": date(2026, 3, 29)}.get(camera, date(2026, 10, 25))
        assert set(rows["date"]) == {local_day}, camera  # one partition for the local day
        assert rows["frame_ts"].dt.floor("h").nunique() == {"spring": 23, "autumn": 24, "autumn-offset": 25}[camera], camera
    # UTC dates would have cut the same night at UTC midnight into two partitions
    assert set(inventory_rows(spark, nights["autumn-offset"][1], Layout("{camera_id}/{ts}.jpg", ts_format=TS + "%z"))["date"]) == {date(2026, 10, 24), date(2026, 10, 25)}


def test_a_night_across_local_midnight_with_a_per_camera_zone(spark):
    layout = Layout("{camera_id}/{ts}.jpg", timezone="Europe/Berlin", timezones={"cam3": "America/New_York"})
    names = [f"2026112{d}T{h:02d}0000" for d, h in ((0, 22), (0, 23), (1, 0), (1, 1), (1, 2))]  # 22:00 to 02:00 local
    rows = inventory_rows(spark, [f"cam1/{n}.jpg" for n in names] + [f"cam3/{n}.jpg" for n in names], layout).set_index("key")
    expected = {"cam1": utc(2026, 11, 20, 21), "cam3": utc(2026, 11, 21, 3)}  # 22:00 local on the 20th
    for cam, first in expected.items():
        assert [rows.loc[f"{cam}/{n}.jpg", "frame_ts"] for n in names] == [pd.Timestamp(first + i * HOUR) for i in range(5)]
        assert [rows.loc[f"{cam}/{n}.jpg", "date"] for n in names] == [date(2026, 11, 20)] * 2 + [date(2026, 11, 21)] * 3
    # UTC dates would have put all of cam3's night on the 21st, and cut cam1's an hour early
    assert {t.date() for t in rows.loc[[f"cam3/{n}.jpg" for n in names], "frame_ts"]} == {date(2026, 11, 21)}
    assert [t.date() for t in rows.loc[[f"cam1/{n}.jpg" for n in names], "frame_ts"]] == [date(2026, 11, 20)] * 3 + [date(2026, 11, 21)] * 2


def test_date_only_keys_use_the_camera_local_day(spark):
    layout = Layout("{camera_id}/{date}/{_}", timezone="Europe/Berlin", timezones={"cam3": "America/New_York"})
    keys = ["cam1/2026-11-21/a.jpg", "cam3/2026-11-21/a.jpg"]
    # last-modified 00:30 on the 21st in Berlin (23:30 UTC on the 20th): on cam1's day, kept; before cam3's day, its start instead
    rows = inventory_rows(spark, keys, layout, modified=utc(2026, 11, 20, 23, 30)).set_index("key")
    assert rows.loc["cam1/2026-11-21/a.jpg", "frame_ts"] == pd.Timestamp(utc(2026, 11, 20, 23, 30))
    assert rows.loc["cam3/2026-11-21/a.jpg", "frame_ts"] == pd.Timestamp(utc(2026, 11, 21, 5))  # local midnight in New York
    assert set(rows["date"]) == {date(2026, 11, 21)}
    # a window after Berlin's 21st ended (23:00 UTC) but within New York's (until 05:00 UTC on the 22nd)
    sel = Selection(since=utc(2026, 11, 21, 23, 30), until=utc(2026, 11, 22, 2))
    assert list(inventory_rows(spark, keys, layout, selection=sel)["key"]) == ["cam3/2026-11-21/a.jpg"]


@pytest.fixture(scope="module")
def night_archive(tmp_path_factory) -> Path:
    """Hourly stills of one night, named in local time: cam1 in Berlin 22:00-06:00, cam3 in New York 18:00-02:00."""
    root = tmp_path_factory.mktemp("tz-archive")
    for cam, start in (("cam1", datetime(2026, 11, 20, 22)), ("cam3", datetime(2026, 11, 20, 18))):
        for i in range(9):
            path = root / cam / f"{start + i * HOUR:{TS}}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"not decoded here")
    return root


def selected_keys(spark, root: Path, conf: Conf, argv: list[str]) -> list[str]:
    """The keys a featurize run with these ``--since/--until`` flags would take, listed as it lists them."""
    args = build_parser().parse_args(["featurize", "--input", str(root), "--output", "unused", *argv])
    layout, sel = Layout.from_conf(conf.input), _selection(args, conf)
    location = parse_uri(str(root))
    resolved = resolve(plan_listing(layout, since=sel.since, until=sel.until, cameras=sel.cameras), make_children(location, None, limit=100))
    inv = build_inventory(listing_frame(spark, location, resolved, conf.storage, parallelism=2), layout, selection=sel)
    try:
        return sorted(r["key"] for r in inv.rows.select("key").collect())
    finally:
        inv.unpersist()


def test_since_until_with_an_offset_and_a_zone_select_exactly_the_window(spark, night_archive):
    conf = load_conf(overrides=["input.layout={camera_id}/{ts}.jpg", "input.timezone=Europe/Berlin", "input.timezones.cam3=America/New_York"])
    # 01:00-04:00 UTC: 02:00-05:00 on the 21st in Berlin, 20:00-23:00 on the 20th in New York (whose keys a UTC day listing would miss)
    expected = ["cam1/20261121T020000.jpg", "cam1/20261121T030000.jpg", "cam1/20261121T040000.jpg", "cam3/20261120T200000.jpg", "cam3/20261120T210000.jpg", "cam3/20261120T220000.jpg"]
    for window in (["--since", "2026-11-21T02:00+01:00", "--until", "2026-11-21T05:00 Europe/Berlin"], ["--since", "2026-11-20T20:00[America/New_York]", "--until", "2026-11-21T04:00Z"]):
        assert selected_keys(spark, night_archive, conf, window) == expected, window
    # naive: in input.timezone (Berlin)
    assert selected_keys(spark, night_archive, conf, ["--since", "2026-11-21T02:00", "--until", "2026-11-21T05:00"]) == expected


def test_a_bad_since_exits_2_naming_the_option(spark, night_archive, tmp_path, capsys):
    code = main(["featurize", "--input", str(night_archive), "--output", str(tmp_path / "f"), "--since", "2026-11-21T02:00 Europe/Nowhere", "--dry-run"], spark=spark)
    assert code == 2 and "--since '2026-11-21T02:00 Europe/Nowhere'" in capsys.readouterr().err


@pytest.mark.slow
def test_featurize_dates_each_video_frame_in_its_cameras_zone(spark, tmp_path):
    """End to end: a clip named in New York time that crosses local midnight lands in two local-date partitions."""
    from vidspark.outputs import read_table
    from vidspark.schemas import FEATURES_SCHEMA
    from vidspark.synthetic import LocalSink, encode_video, jpeg_bytes, scene

    rng = np.random.default_rng(3)
    frames = [scene("car", rng, size=(64, 48), phase=i / 3) for i in range(24)]
    sink = LocalSink(tmp_path / "in")
    sink.put("cam3/20261120T235958.mp4", encode_video(frames, fps=8, gop=8))  # 3 s from 23:59:58 local
    sink.put("cam1/20261121T003000.jpg", jpeg_bytes(frames[0]))  # 00:30 in Berlin: 23:30 UTC the day before
    argv = ["featurize", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "features"), "--layout", "{camera_id}/{ts}"]
    for s in ("input.timezone=Europe/Berlin", "input.timezones.cam3=America/New_York", "featurizer.weights=random", "featurizer.image_size=32", "featurizer.batch_size=8", "video.every_n_frames=4"):
        argv += ["--set", s]
    assert main(argv, spark=spark) == 0
    rows = read_table(spark, str(tmp_path / "features"), FEATURES_SCHEMA).select("camera_id", "frame_idx", F.unix_micros("frame_ts").alias("us"), "date").toPandas()
    video = rows[rows["camera_id"] == "cam3"].sort_values("frame_idx")
    start = datetime(2026, 11, 21, 4, 59, 58, tzinfo=UTC)
    assert list(video["frame_idx"]) == list(range(0, 24, 4))
    assert list(video["us"]) == [int((start + timedelta(seconds=i / 8)).timestamp() * 1_000_000) for i in range(0, 24, 4)]
    assert [d.isoformat() for d in video["date"]] == ["2026-11-20"] * 4 + ["2026-11-21"] * 2  # frames 16 and 20 are after local midnight
    still = rows[rows["camera_id"] == "cam1"].iloc[0]
    assert still["us"] == int(utc(2026, 11, 20, 23, 30).timestamp() * 1_000_000) and still["date"] == date(2026, 11, 21)
    parts = sorted(p.relative_to(tmp_path / "features").as_posix() for p in (tmp_path / "features").glob("camera_id=*/date=*"))
    assert parts == ["camera_id=cam1/date=2026-11-21", "camera_id=cam3/date=2026-11-20", "camera_id=cam3/date=2026-11-21"]
