from __future__ import annotations

from datetime import datetime, timezone

import pytest

from vidspark.errors import ConfigError, LayoutError
from vidspark.layout import Layout, LayoutMismatch, natural_key, natural_sort_text


def test_label_and_double_star():
    layout = Layout("{label}/**")
    assert layout.parse("car/electric-cars-17.jpeg").label == "car"
    assert layout.parse("car/sub/dir/x.png").label == "car"


def test_double_star_needs_a_file_at_the_end():
    with pytest.raises(LayoutMismatch):
        Layout("{label}/**").parse("lonely.jpg")


def test_camera_video_frame_folders():
    kf = Layout("{camera_id}/{video_id}/**").parse("cam1/vid-7/frame_0003.jpg")
    assert (kf.camera_id, kf.video_id, kf.label, kf.frame_idx) == ("cam1", "vid-7", None, None)


def test_ignored_component_and_whole_file_field_drops_extension():
    kf = Layout("{camera_id}/{_}/{video_id}").parse("cam3/2026-11-20/143000.mp4")
    assert (kf.camera_id, kf.video_id) == ("cam3", "143000")


def test_frame_idx_and_literal_text_in_component():
    kf = Layout("{camera_id}/frame_{frame_idx}.jpg").parse("cam2/frame_0042.jpg")
    assert kf.frame_idx == 42 and kf.camera_id == "cam2"
    with pytest.raises(LayoutMismatch):
        Layout("{camera_id}/frame_{frame_idx}.jpg").parse("cam2/frame_x.jpg")


def test_ts_parsed_as_utc():
    kf = Layout("{camera_id}/{ts}.jpg", ts_format="%Y%m%dT%H%M%S").parse("cam1/20261120T143005.jpg")
    assert kf.ts == datetime(2026, 11, 20, 14, 30, 5, tzinfo=timezone.utc)


def test_ts_that_does_not_match_format_is_a_mismatch():
    with pytest.raises(LayoutMismatch, match="ts_format"):
        Layout("{camera_id}/{ts}.jpg").parse("cam1/yesterday.jpg")


def test_middle_double_star():
    layout = Layout("{camera_id}/**/{video_id}")
    assert layout.parse("cam1/a/b/c/v1.mp4").video_id == "v1"
    assert layout.parse("cam1/v2.mp4").video_id == "v2"


@pytest.mark.parametrize("key", ["car", "", "car/x/y.jpg"])
def test_non_matching_keys(key):
    with pytest.raises(LayoutMismatch):
        Layout("{label}/{_}").parse(key)


@pytest.mark.parametrize("template", ["", "/", "{colour}/**", "{label}/{label}", "{label}/a**b", "{label/x"])
def test_bad_templates_raise_config_errors(template):
    with pytest.raises(LayoutError) as info:
        Layout(template)
    assert isinstance(info.value, ConfigError)
    assert "layout template" in str(info.value)


def test_natural_sort():
    names = ["frame_10.jpg", "frame_2.jpg", "frame_1.jpg", "Frame_3.jpg"]
    assert sorted(names, key=natural_key) == ["frame_1.jpg", "frame_2.jpg", "Frame_3.jpg", "frame_10.jpg"]


def test_natural_sort_text_orders_as_natural_key_byte_by_byte():
    # Spark sorts strings by their UTF-8 bytes: the one-string form must give natural_key's order
    names = ["frame_10.jpg", "frame_2.jpg", "frame_1.jpg", "Frame_3.jpg", "f-1.jpg", "f.jpg", "f_01.jpg", "f_1.jpg", "a10b2", "a10b10", "a9", "a", "a-", "Ä1", "z"]
    names += ["٣.jpg", "12345678901234567890123.jpg", "9.jpg"]
    by_bytes = sorted(names, key=lambda n: (natural_sort_text(n).encode(), n))
    assert [natural_key(n) for n in by_bytes] == sorted(natural_key(n) for n in names)
    date = Layout("{camera_id}/{date}/{ts}.jpg", ts_format="%H%M%S").parse("c1/2026-11-21/101500.jpg")
    assert (date.date.isoformat(), date.ts.isoformat()) == ("2026-11-21", "2026-11-21T10:15:00+00:00")
    with pytest.raises(LayoutMismatch, match="date_format"):
        Layout("{camera_id}/{date}/**").parse("c1/21.11.2026/x.jpg")
    # what strptime forgives, a listing by day prefix would not find: such keys do not fit
    with pytest.raises(LayoutMismatch, match="not written exactly"):
        Layout("{camera_id}/{date}/**").parse("c1/2026-11-5/x.jpg")
    with pytest.raises(LayoutMismatch, match="does not start with its day"):
        Layout("{camera_id}/{ts}.jpg").parse("c1/20261122t003000.jpg")
    assert Layout("{camera_id}/{ts}.jpg", ts_format="%Y%m%dT%H%M%S.%f").parse("c1/20261122T003000.5.jpg").ts is not None


def test_natural_sort_with_unicode_digits_does_not_crash():
    names = ["frame_1²2.jpg", "3①4.jpg", "frame_10.jpg", "frame_9.jpg"]
    assert sorted(names, key=natural_key)[:2] == ["3①4.jpg", "frame_1²2.jpg"]


def test_alternative_templates_first_match_wins():
    layout = Layout("{camera_id}/{video_id}/** | {camera_id}/{ts}")
    assert layout.parse("cam1/v1/frame_1.jpg").video_id == "v1"
    kf = layout.parse("cam3/20261120T150000.mp4")
    assert kf.camera_id == "cam3" and kf.video_id is None and kf.ts is not None
    assert set(layout.fields) == {"camera_id", "video_id", "ts"}
    with pytest.raises(LayoutMismatch):
        layout.parse("loose.jpg")
    with pytest.raises(LayoutError):
        Layout("{camera_id}/** | ")


def test_layout_list_in_conf_means_alternatives():
    from vidspark.config import from_dict

    conf = from_dict({"input": {"layout": ["{camera_id}/{video_id}/**", "{camera_id}/{ts}"]}})
    assert conf.input.layout == "{camera_id}/{video_id}/** | {camera_id}/{ts}"
