"""The listing narrows itself: planned patterns, what the S3 server was asked (through a request-logging proxy), inventory input."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone

import numpy as np
import pytest
from pyspark.sql import functions as F

from tests.faultproxy import FaultProxy
from tests.test_s3_inventory import CSV_FIELDS, csv_report, put_report
from vidspark.cli import main
from vidspark.config import StorageConf
from vidspark.inventory import Selection, build_inventory
from vidspark.layout import Layout
from vidspark.listing import WILD, list_on_driver, listing_frame, listing_pandas, make_children, plan_listing, resolve
from vidspark.storage import make_s3_client, parse_uri
from vidspark.synthetic import S3Sink, jpeg_bytes, scene

SINCE = datetime(2026, 11, 21, tzinfo=timezone.utc)
UNTIL = datetime(2026, 11, 22, tzinfo=timezone.utc)
DAYS = ("2026-11-20", "2026-11-21")
CAMS = ("cam1", "cam2", "cam3")
LAYOUT = "{camera_id}/{date}/{video_id}/**"


def test_plan_narrows_by_camera_and_day_where_the_layout_allows():
    plan = plan_listing(Layout(LAYOUT), since=SINCE, until=UNTIL)
    assert plan.patterns == ((WILD, "2026-11-21/"),) and plan.time_window is not None and not plan.notes
    rx = re.compile(plan.regex())
    assert rx.match("cam9/2026-11-21/v/f.jpg") and rx.match("stray.txt") and not rx.match("cam9/2026-11-20/v/f.jpg")
    cams = plan_listing(Layout(LAYOUT), since=SINCE, until=UNTIL, cameras=frozenset({"b", "a"}))
    assert cams.patterns == (("a/2026-11-21/",), ("b/2026-11-21/",))
    # a {ts} that starts with the day narrows by a key prefix; without --until the days run to tomorrow
    ts = plan_listing(Layout("{camera_id}/{ts}"), since=SINCE)
    assert ts.patterns[0] == (WILD, "20261121T") and len(ts.patterns) >= 2
    # the same layout without a window lists each camera folder whole (cameras known) or everything
    assert plan_listing(Layout("{camera_id}/{ts}"), cameras=frozenset({"c1"})).patterns == (("c1/",),)
    assert plan_listing(Layout("{camera_id}/{ts}")).whole


@pytest.mark.parametrize(
    ("layout", "gap", "why"),
    [
        ("{label}/**", None, "no {date} or day-first {ts}"),
        ("{camera_id}/{video_id}/{ts}.jpg", None, "frame folder's index and time"),
        ("{camera_id}/{ts}", 30.0, "events.gap_seconds"),
    ],
)
def test_layouts_that_cannot_narrow_by_time_say_why(layout, gap, why):
    plan = plan_listing(Layout(layout), since=SINCE, until=UNTIL, gap_seconds=gap)
    assert plan.time_window is None and any(why in n for n in plan.notes)
    assert all(WILD not in p for p in plan.patterns)  # nothing to resolve: listed whole


def test_day_folders_are_listed_whole_and_a_day_wider_when_keys_carry_their_time():
    # keys selected by {ts}: a folder of the 21st may hold 00:05 on the 22nd (a clip across midnight)
    plan = plan_listing(Layout("{camera_id}/{date}/{video_id}/{ts}.jpg"), since=datetime(2026, 11, 22, tzinfo=timezone.utc), until=datetime(2026, 11, 23, tzinfo=timezone.utc))
    assert plan.patterns == tuple((WILD, f"2026-11-{d}/") for d in (21, 22, 23))
    # a day-first {ts} file name right in the day folder: the neighbour folders by the window's day prefix
    files = plan_listing(Layout("{camera_id}/{date}/{ts}.jpg"), since=datetime(2026, 11, 22, tzinfo=timezone.utc), until=datetime(2026, 11, 23, tzinfo=timezone.utc))
    assert files.patterns == tuple((WILD, f"2026-11-{d}/20261122T") for d in (21, 22, 23))
    # a time of day only: its day is the folder's, nothing to widen
    assert plan_listing(Layout("{camera_id}/{date}/{ts}.jpg", ts_format="%H%M%S"), since=SINCE, until=UNTIL).patterns == ((WILD, "2026-11-21/"),)
    # a long window is not a prefix per camera and day: it is listed whole, and the log says why
    long = plan_listing(Layout(LAYOUT), since=datetime(2026, 1, 1, tzinfo=timezone.utc), until=UNTIL)
    assert long.whole and any("longer than" in n for n in long.notes)


def test_alternatives_list_the_union_and_a_whole_alternative_covers_the_rest():
    plan = plan_listing(Layout("{camera_id}/{video_id}/** | {camera_id}/{ts}"), since=SINCE, until=UNTIL, cameras=frozenset({"c1"}))
    assert plan.patterns == (("c1/",),) and plan.time_window is None


@pytest.fixture()
def day_archive(s3_client, bucket):
    """cam1..cam3 / two days / two frame folders of two stills, a stray object at the top and a stray folder."""
    rng = np.random.default_rng(3)
    sink = S3Sink(s3_client, bucket, "arch")
    for cam in CAMS:
        for day in DAYS:
            for v in ("v1", "v2"):
                for f in (1, 2):
                    sink.put(f"{cam}/{day}/{v}/frame_{f}.jpg", jpeg_bytes(scene("car", rng, size=(40, 30))))
    sink.put("readme.txt", b"not a frame")
    return f"s3://{bucket}/arch"


def _selected_keys(spark, listing, layout, selection) -> list[str]:
    inv = build_inventory(listing, layout, selection=selection)
    try:
        return sorted(r["key"] for r in inv.rows.select("key").collect()) + sorted(r["uri"] for r in inv.errors.select("uri").collect())
    finally:
        inv.unpersist()


def test_s3_listing_asks_only_for_the_selected_days(spark, s3_endpoint, s3_client, day_archive):
    location = parse_uri(day_archive)
    layout = Layout(LAYOUT)
    selection = Selection(since=SINCE, until=UNTIL)
    plan = plan_listing(layout, since=SINCE, until=UNTIL)
    with FaultProxy(s3_endpoint, error_rate=0, drop_rate=0) as proxy:
        sconf = StorageConf(endpoint_url=proxy.url)
        from vidspark.storage import make_s3_client

        resolved = resolve(plan, make_children(location, make_s3_client(sconf), limit=100))
        narrowed = listing_frame(spark, location, resolved, sconf, parallelism=2)
        keys = sorted(r["key"] for r in narrowed.collect())
        requests = proxy.list_requests()
    # one delimiter listing found the camera folders; then one listing per camera for the day, nothing else
    assert [(r["prefix"], r.get("delimiter")) for r in requests if r.get("delimiter")] == [("arch/", "/")]
    assert sorted(r["prefix"] for r in requests if not r.get("delimiter")) == [f"arch/{c}/2026-11-21/" for c in CAMS]
    assert resolved.prefixes == [f"{c}/2026-11-21/" for c in CAMS] and [o.rel_key for o in resolved.direct] == ["readme.txt"]
    assert keys == sorted([f"{c}/2026-11-21/{v}/frame_{f}.jpg" for c in CAMS for v in ("v1", "v2") for f in (1, 2)] + ["readme.txt"])
    # what the narrowed listing selects is what a listing of everything selects (the stray key's errors row too)
    whole = listing_frame(spark, location, resolve(plan_listing(layout), make_children(location, s3_client, limit=100)), StorageConf(), parallelism=2)
    assert whole.count() == 2 * len(keys) - 1
    assert _selected_keys(spark, narrowed, layout, selection) == _selected_keys(spark, whole, layout, selection)


def test_the_driver_lists_prefixes_while_they_fit_and_leaves_the_rest_to_the_executors(spark, s3_endpoint, day_archive):
    location = parse_uri(day_archive)
    plan = plan_listing(Layout(LAYOUT), since=SINCE, until=UNTIL)
    with FaultProxy(s3_endpoint, error_rate=0, drop_rate=0) as proxy:
        client = make_s3_client(StorageConf(endpoint_url=proxy.url))
        resolved = resolve(plan, make_children(location, client, limit=100))  # 3 day prefixes of 4 objects, and readme.txt
        whole = list_on_driver(location, resolved, client, max_keys=13)
        part = list_on_driver(location, resolved, client, max_keys=8)  # readme.txt and cam1's 4 fit, cam2's 4 would not
        none = list_on_driver(location, resolved, client, max_keys=4)
        asked = [r["prefix"] for r in proxy.list_requests() if not r.get("delimiter")]
    assert whole.prefixes == [] and whole.driver_listed == 3 and len(whole.direct) == 13
    assert listing_pandas(whole) is not None and sorted(listing_pandas(whole)["key"]) == sorted(o.rel_key for o in whole.direct)
    assert part.prefixes == ["cam2/2026-11-21/", "cam3/2026-11-21/"] and part.driver_listed == 1 and listing_pandas(part) is None
    assert sorted(o.rel_key for o in part.direct) == [
        "cam1/2026-11-21/v1/frame_1.jpg",
        "cam1/2026-11-21/v1/frame_2.jpg",
        "cam1/2026-11-21/v2/frame_1.jpg",
        "cam1/2026-11-21/v2/frame_2.jpg",
        "readme.txt",
    ]
    assert none.prefixes == resolved.prefixes and none.driver_listed == 0 and [o.rel_key for o in none.direct] == ["readme.txt"]
    # each run stops at the prefix that overflows: it reads that one (at most max_keys + 1 objects) and none after it
    assert asked == [f"arch/{c}/2026-11-21/" for c in CAMS] + ["arch/cam1/2026-11-21/", "arch/cam2/2026-11-21/", "arch/cam1/2026-11-21/"]
    # what the executors list of the rest, with what the driver found, is the whole listing
    for r in (whole, part, none):
        keys = sorted(row["key"] for row in listing_frame(spark, location, r, StorageConf(endpoint_url=s3_endpoint), parallelism=2).collect())
        assert keys == sorted(o.rel_key for o in whole.direct)


def test_a_level_with_more_children_than_allowed_is_listed_whole(tmp_path, spark):
    for cam in ("a", "b", "c"):
        (tmp_path / cam / "2026-11-21" / "v").mkdir(parents=True)
        (tmp_path / cam / "2026-11-21" / "v" / "f.jpg").write_bytes(b"x")
        (tmp_path / cam / "2026-11-20").mkdir()
        (tmp_path / cam / "2026-11-20" / "old.jpg").write_bytes(b"x")
    location = parse_uri(str(tmp_path))
    plan = plan_listing(Layout(LAYOUT), since=SINCE, until=UNTIL)
    assert resolve(plan, make_children(location, None, limit=10)).prefixes == ["a/2026-11-21/", "b/2026-11-21/", "c/2026-11-21/"]
    capped = resolve(plan, make_children(location, None, limit=2))
    assert capped.prefixes == [""]
    assert listing_frame(spark, location, capped, StorageConf(), parallelism=2).count() == 6


def _features(spark, out) -> list[tuple]:
    df = spark.read.parquet(str(out / "features"))
    return sorted(tuple(r) for r in df.select("uri", "video_id", "frame_idx", F.unix_micros("frame_ts"), "features").collect())


def test_nights_by_day_equal_a_run_from_scratch_and_prune_only_what_they_list(spark, s3_endpoint, s3_client, bucket, day_archive, tmp_path, test_conf_args):
    common = ["--layout", LAYOUT, *test_conf_args, "--set", "featurizer.image_size=32", "--set", "featurizer.warm_up=false", "--set", "job.max_error_fraction=0.5"]
    nightly, scratch = tmp_path / "nightly", tmp_path / "scratch"
    with FaultProxy(s3_endpoint, error_rate=0, drop_rate=0) as proxy:
        via_proxy = ["--set", f"storage.endpoint_url={proxy.url}"]
        for i, (since, until) in enumerate((("2026-11-20", "2026-11-21"), ("2026-11-21", "2026-11-22"))):
            argv = ["featurize", "--input", day_archive, "--output", str(nightly / "features"), "--since", since, "--until", until, "--run-id", f"n{i}", *common, *via_proxy]
            assert main(argv, spark=spark) == 0
        samples = [r for r in proxy.list_requests() if r.get("max-keys") == "20"]  # the jobs' layout check before Spark: 20 keys
        recursive = sorted({r["prefix"] for r in proxy.list_requests() if not r.get("delimiter") and r not in samples})
    assert len(samples) == 2 and {r["prefix"] for r in samples} == {"arch/"}
    assert recursive == sorted(f"arch/{c}/{d}/" for c in CAMS for d in DAYS)  # no listing of the whole archive
    # the nights are small enough for the driver to list; the run from scratch lists on the executors
    assert main(["featurize", "--input", day_archive, "--output", str(scratch / "features"), "--run-id", "s", *common, "--set", "input.driver_list_max=0"], spark=spark) == 0
    assert _features(spark, nightly) == _features(spark, scratch) and len(_features(spark, scratch)) == 24
    record = json.loads((nightly / "runs" / "n1.json").read_text())["summary"]
    assert record["listing"]["source"] == "live" and record["listing"]["prefixes"] == 3 and record["skipped_unchanged"] == 0
    assert record["listing"]["driver_listed_prefixes"] == 3
    assert json.loads((scratch / "runs" / "s.json").read_text())["summary"]["listing"]["driver_listed_prefixes"] == 0
    assert {(p["camera_id"], p["date"]) for p in record["partitions"]} == {(c, "2026-11-21") for c in CAMS}
    # --prune removes what is gone from the prefixes a night lists, and leaves alone what it did not list
    s3_client.delete_object(Bucket=bucket, Key="arch/cam1/2026-11-21/v1/frame_2.jpg")
    s3_client.delete_object(Bucket=bucket, Key="arch/cam1/2026-11-20/v1/frame_2.jpg")
    argv = ["featurize", "--input", day_archive, "--output", str(nightly / "features"), "--since", "2026-11-21", "--until", "2026-11-22", "--prune", "--run-id", "n2", *common]
    assert main(argv, spark=spark) == 0
    record = json.loads((nightly / "runs" / "n2.json").read_text())["summary"]
    assert record["pruned_objects"] == 1 and record["skipped_unchanged"] == 11 and record["featurized_objects"] == 0
    uris = {u for u, *_ in _features(spark, nightly)}
    assert f"{day_archive}/cam1/2026-11-21/v1/frame_2.jpg" not in uris and f"{day_archive}/cam1/2026-11-20/v1/frame_2.jpg" in uris


def test_inventory_report_lists_like_a_live_listing(spark, s3_client, bucket, day_archive, tmp_path, test_conf_args):
    versions = s3_client.list_object_versions(Bucket=bucket)
    manifest = put_report(s3_client, bucket, bucket, "CSV", CSV_FIELDS, csv_report(bucket, versions))
    s3_client.put_object(Bucket=bucket, Key="arch/cam1/2026-11-21/v9/late.jpg", Body=b"uploaded after the report")
    window = ["--since", "2026-11-21", "--until", "2026-11-22"]
    common = ["--layout", LAYOUT, *window, *test_conf_args, "--set", "featurizer.image_size=32", "--set", "featurizer.warm_up=false", "--set", "job.max_error_fraction=0.5"]
    assert main(["featurize", "--input", day_archive, "--output", str(tmp_path / "inv" / "features"), "--inventory", manifest, "--run-id", "i", *common], spark=spark) == 0
    summary = json.loads((tmp_path / "inv" / "runs" / "i.json").read_text())["summary"]
    assert summary["listing"]["source"] == "inventory" and summary["featurized_objects"] == 12  # the late upload waits for the next report
    s3_client.delete_object(Bucket=bucket, Key="arch/cam1/2026-11-21/v9/late.jpg")
    assert main(["featurize", "--input", day_archive, "--output", str(tmp_path / "live" / "features"), "--run-id", "l", *common], spark=spark) == 0
    assert _features(spark, tmp_path / "inv") == _features(spark, tmp_path / "live")
    # an inventory is a day old: pruning by it would drop what was uploaded since, so it is refused
    argv = ["featurize", "--input", day_archive, "--output", str(tmp_path / "x"), "--inventory", manifest, "--prune", *common]
    assert main(argv, spark=spark) == 2
