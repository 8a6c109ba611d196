"""Video decoding with PyAV: sampling, timestamps, keyframe splits, truncation, streaming reads (no Spark)."""

from __future__ import annotations

import contextlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from vidspark.config import VideoConf
from vidspark.synthetic import encode_video, scene
from vidspark.video import WHOLE, DecodeReport, decode_frames, probe_segments
from vidspark.video_source import RangeReader, kind_of_key, read_head, sniff_is_video

N_FRAMES = 60
FPS = 10


def _frames(n: int = N_FRAMES, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [scene(("car", "person")[(i // 7) % 2], rng, size=(160, 120), phase=i / 4.0) for i in range(n)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """H.264 in MP4 (B-frames, GOP 8), MJPEG in AVI, H.264 in Matroska and MPEG-TS, all 60 frames at 10 fps."""
    root = tmp_path_factory.mktemp("videos")
    frames = _frames()
    specs = {
        "h264.mp4": dict(codec="libx264", container_format="mp4"),
        "mjpeg.avi": dict(codec="mjpeg", container_format="avi"),
        "h264.mkv": dict(codec="libx264", container_format="matroska"),
        "h264.ts": dict(codec="libx264", container_format="mpegts"),
    }
    out = {}
    for name, kw in specs.items():
        path = root / name
        path.write_bytes(encode_video(frames, fps=FPS, gop=8, **kw))
        out[name] = path
    return out


def pyav_frames(path: Path) -> list[tuple[int, Fraction]]:
    """Independent reference: every frame PyAV decodes, as (index, seconds after the stream start)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        start = s.start_time or 0
        return [(i, (f.pts - start) * Fraction(s.time_base)) for i, f in enumerate(c.decode(s))]


def run(path, vconf, segment=WHOLE, size=32):
    report = DecodeReport()
    frames = list(decode_frames(str(path), vconf, size=size, segment=segment, report=report))
    return frames, report


@pytest.mark.parametrize("name", ["h264.mp4", "mjpeg.avi"])
@pytest.mark.parametrize("every", [1, 3, 7])
def test_every_n_frames_counts_and_timestamps(videos, name, every):
    ref = pyav_frames(videos[name])
    assert len(ref) == N_FRAMES  # what was encoded is what PyAV reads back
    frames, report = run(videos[name], VideoConf(every_n_frames=every))
    assert report.error() is None
    expected = [(i, t) for i, t in ref if i % every == 0]
    assert len(frames) == -(-N_FRAMES // every)
    assert [f.idx for f in frames] == [i for i, _ in expected]
    np.testing.assert_allclose([f.seconds for f in frames], [float(t) for _, t in expected], atol=1e-9)
    np.testing.assert_allclose([f.seconds for f in frames], [i / FPS for i, _ in expected], atol=1e-6)
    assert frames[0].pixels.shape == (32, 32, 3) and frames[0].pixels.dtype == np.uint8


@pytest.mark.parametrize("name", ["h264.mp4", "mjpeg.avi"])
@pytest.mark.parametrize("fps", [1.0, 2.5, 3.0, 10.0, 25.0])
def test_fps_sampling_takes_first_frame_at_or_after_each_tick(videos, name, fps):
    ref = pyav_frames(videos[name])
    duration = ref[-1][1]
    step = Fraction(str(fps))
    expected: list[int] = []
    k = 0
    while k / step <= duration:  # for every tick k/fps, the first frame at or after it
        first = next(i for i, t in ref if t >= k / step)
        if not expected or expected[-1] != first:
            expected.append(first)
        k += 1
    frames, report = run(videos[name], VideoConf(fps=fps))
    assert report.error() is None
    assert [f.idx for f in frames] == expected
    assert len(frames) == min(N_FRAMES, int(duration * step) + 1)


def test_max_frames_caps_sampled_frames(videos):
    frames, _ = run(videos["h264.mp4"], VideoConf(every_n_frames=4, max_frames=5))
    assert [f.idx for f in frames] == [0, 4, 8, 12, 16]


def test_containers_without_presentation_times_are_never_split(videos):
    segments, report = probe_segments(str(videos["mjpeg.avi"]), VideoConf(segment_seconds=1.2))
    assert segments == [WHOLE] and report.error() is None


@pytest.mark.parametrize("name", ["h264.mp4", "h264.mkv", "h264.ts"])
@pytest.mark.parametrize("sampling", [dict(), dict(every_n_frames=3), dict(fps=3.0), dict(fps=2.0, max_frames=7)])
def test_split_decoding_gives_exactly_the_frames_of_one_decode(videos, name, sampling):
    vconf = VideoConf(segment_seconds=1.2, **sampling)
    whole, _ = run(videos[name], vconf)
    segments, report = probe_segments(str(videos[name]), vconf)
    assert report.error() is None
    # Really split (keyframes every 0.8 s); with max_frames, segments past the cap are not planned.
    assert len(segments) >= (2 if "max_frames" in sampling else 3)
    starts = [s.start_pts for s in segments[1:]]
    assert starts == sorted(starts) and segments[0].start_pts is None
    assert segments[-1].end_pts is None or "max_frames" in sampling
    split = [f for seg in segments for f in run(videos[name], vconf, segment=seg)[0]]
    assert [(f.idx, f.seconds) for f in split] == [(f.idx, f.seconds) for f in whole]
    for a, b in zip(split, whole, strict=True):  # same pixels: each segment starts on a keyframe
        np.testing.assert_array_equal(a.pixels, b.pixels)


def _decodable(data: bytes) -> int:
    """Independent count of the frames PyAV gets out of (possibly broken) bytes."""
    import io

    n = 0
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]
        for packet in c.demux(s):
            with contextlib.suppress(av.error.FFmpegError):
                n += len(packet.decode())
    return n


@pytest.mark.parametrize("name", ["h264.mp4", "mjpeg.avi"])
def test_truncated_video_gives_decodable_frames_and_one_error(videos, tmp_path, name):
    data = videos[name].read_bytes()
    cut = tmp_path / f"cut-{name}"
    cut.write_bytes(data[: len(data) * 6 // 10])
    frames, report = run(cut, VideoConf())
    assert 0 < len(frames) < N_FRAMES
    assert len(frames) == _decodable(cut.read_bytes())
    err = report.error()
    assert err is not None
    _etype, message = err
    assert f"frame {len(frames)}" in message or "t=" in message, message
    # Split decoding of the same file keeps the same frames; the probe reports the truncation
    # (an AVI is decoded whole, and that decode reports it).
    segments, preport = probe_segments(str(cut), VideoConf(segment_seconds=1.0))
    assert preport.error() is not None or segments == [WHOLE]
    split = [f.idx for seg in segments for f in run(cut, VideoConf(segment_seconds=1.0), segment=seg)[0]]
    assert split == [f.idx for f in frames]


def test_moov_less_mp4_is_one_clear_error(videos, tmp_path):
    frames_in = _frames(12)
    path = tmp_path / "no-faststart.mp4"
    data = encode_video(frames_in, fps=FPS, faststart=False)
    path.write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: cut off
    frames, report = run(path, VideoConf())
    assert frames == []
    assert "cannot open video" in report.error()[1]


def test_not_a_video_is_an_error_not_an_exception(tmp_path):
    path = tmp_path / "fake.mp4"
    path.write_bytes(b"this is not a video" * 50)
    frames, report = run(path, VideoConf())
    assert frames == [] and report.error() is not None
    segments, preport = probe_segments(str(path), VideoConf())
    assert segments == [] and preport.error() is not None


def test_kind_and_sniff(videos):
    assert kind_of_key("cam/2026/143000.MP4") == "video"
    assert kind_of_key("cam/a.jpeg") == "image"
    assert kind_of_key("cam/recording") == "auto"
    for name in videos:
        assert sniff_is_video(read_head(str(videos[name]))), name
    from vidspark.synthetic import jpeg_bytes

    assert not sniff_is_video(jpeg_bytes(_frames(1)[0]))
    assert not sniff_is_video(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00")  # HEIF still, not a video


@pytest.mark.parametrize("name", ["h264.mp4", "h264.ts"])  # TS is read sequentially: a second container on the same reader would move it
def test_range_reader_streams_from_s3_with_bounded_memory(videos, s3_client, bucket, name):
    data = videos[name].read_bytes()
    s3_client.put_object(Bucket=bucket, Key="cam/v.mp4", Body=data)
    etag = s3_client.head_object(Bucket=bucket, Key="cam/v.mp4")["ETag"].strip('"')
    block = 4096
    sniffer = RangeReader(s3_client, f"s3://{bucket}/cam/v.mp4", size=len(data), etag=etag, block_size=block)
    assert read_head(sniffer) == data[:512] and sniffer.requests == 0  # a 512-byte range, not a read block
    reader = RangeReader(s3_client, f"s3://{bucket}/cam/v.mp4", size=len(data), etag=etag, block_size=block)
    vconf = VideoConf(read_block_bytes=block, segment_seconds=1.2)
    report = DecodeReport()
    remote = list(decode_frames(reader, vconf, size=32, report=report))
    local, _ = run(videos[name], vconf)
    assert report.error() is None
    assert [(f.idx, f.seconds) for f in remote] == [(f.idx, f.seconds) for f in local]
    for a, b in zip(remote, local, strict=True):
        np.testing.assert_array_equal(a.pixels, b.pixels)
    assert reader.requests >= len(data) // block  # read in ranges, never as one object
    assert reader.max_buffered <= 2 * block
    probe_reader = RangeReader(s3_client, f"s3://{bucket}/cam/v.mp4", size=len(data), etag=etag, block_size=block)
    assert probe_segments(probe_reader, vconf)[0] == probe_segments(str(videos[name]), vconf)[0]
    if name.endswith(".ts"):
        return
    # An object replaced after listing is refused (IfMatch), and reported as a storage problem.
    s3_client.put_object(Bucket=bucket, Key="cam/v.mp4", Body=data + b"\x00")
    stale = RangeReader(s3_client, f"s3://{bucket}/cam/v.mp4", size=len(data), etag=etag, block_size=block)
    report = DecodeReport()
    assert list(decode_frames(stale, vconf, size=32, report=report)) == []
    assert report.error() is not None and stale.error is not None


def test_intact_m2ts_and_video_with_longer_audio_are_not_truncated(tmp_path):
    import av as pyav

    frames = _frames(24)
    m2ts = tmp_path / "cam.m2ts"
    with pyav.open(str(m2ts), "w", format="mpegts", options={"mpegts_m2ts_mode": "1"}) as out:  # 192-byte packets
        s = out.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = 160, 120, "yuv420p"
        for img in frames:
            for p in s.encode(pyav.VideoFrame.from_ndarray(np.asarray(img), format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    assert m2ts.stat().st_size % 192 == 0 and m2ts.stat().st_size % 188 != 0
    got, report = run(m2ts, VideoConf())
    assert len(got) == 24 and report.error() is None

    with_audio = tmp_path / "av.mp4"
    with pyav.open(str(with_audio), "w") as out:  # 2.4 s of video, 5 s of audio
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = 160, 120, "yuv420p"
        aus = out.add_stream("aac", rate=16000)
        for img in frames:
            for p in vs.encode(pyav.VideoFrame.from_ndarray(np.asarray(img), format="rgb24")):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        for i in range(5 * 16000 // 1024):
            af = pyav.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
            af.sample_rate, af.pts = 16000, i * 1024
            for p in aus.encode(af):
                out.mux(p)
        for p in aus.encode():
            out.mux(p)
    got, report = run(with_audio, VideoConf())
    assert len(got) == 24 and report.error() is None
    segments, preport = probe_segments(str(with_audio), VideoConf(segment_seconds=0.5))
    assert preport.error() is None and len(segments) > 1


def test_corrupt_packets_keep_frame_numbers_of_split_and_whole_decodes(videos, tmp_path):
    data = bytearray(videos["h264.mp4"].read_bytes())  # MP4: the index still lists every packet
    with av.open(str(videos["h264.mp4"])) as c:  # garble the payload of three packets in the middle
        packets = [(p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size][25:28]
    noise = np.random.default_rng(0).integers(0, 256, size=len(data), dtype=np.uint8)
    for pos, size in packets:
        data[pos + 8 : pos + size] = bytes(noise[pos + 8 : pos + size])
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    vconf = VideoConf(segment_seconds=1.2)
    whole, report = run(bad, vconf)
    assert report.error() is not None and 0 < len(whole) < N_FRAMES
    segments, _ = probe_segments(str(bad), vconf)
    split = [f for seg in segments for f in run(bad, vconf, segment=seg)[0]]
    assert [(f.idx, f.seconds) for f in split] == [(f.idx, f.seconds) for f in whole]
    # a frame's index is its place in the stream, whatever failed before it
    np.testing.assert_allclose([f.seconds for f in whole], [f.idx / FPS for f in whole], atol=1e-6)


@pytest.mark.parametrize("fmt", ["avi", "matroska"])
def test_a_video_stream_without_frames_is_one_error_not_silence(tmp_path, fmt):
    path = tmp_path / f"empty.{fmt}"
    with av.open(str(path), "w", format=fmt) as out:  # a declared video stream, and only audio packets
        s = out.add_stream("mjpeg" if fmt == "avi" else "libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = 64, 48, "yuvj420p" if fmt == "avi" else "yuv420p"
        audio = out.add_stream("mp2", rate=16000)
        for i in range(10):
            af = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.int16), format="s16", layout="mono")
            af.sample_rate, af.pts = 16000, i * 1152
            for p in audio.encode(af):
                out.mux(p)
        for p in audio.encode():
            out.mux(p)
    with av.open(str(path)) as c:
        assert len(c.streams.video) == 1
    frames, report = run(path, VideoConf())
    assert frames == [] and report.error() == ("EmptyVideo", "the video stream has no frames")


@pytest.mark.parametrize("name", ["vtest.avi", "bikes.mp4", "balle1-vp9.avi", "cityCC0.mpg"])
def test_frames_are_scaled_as_pyav_scales_each_frame_alone(name):
    """One swscale context shared by a stream's frames (the speed-up) gives, pixel for pixel, what PyAV's
    ``to_ndarray(width=, height=)`` gives frame by frame, on real recordings of four codecs."""
    path = Path(__file__).parent / "data" / "real" / name
    ours = list(decode_frames(str(path), VideoConf(max_frames=40), size=64))
    last = max(f.idx for f in ours)
    with av.open(str(path)) as container:
        reference = []
        for frame in container.decode(container.streams.video[0]):
            reference.append(frame.to_ndarray(width=64, height=64, format="rgb24", interpolation="BILINEAR"))
            if len(reference) > last:
                break
    assert len(ours) == 40
    for f in ours:
        assert np.array_equal(f.pixels, reference[f.idx]), (name, f.idx)
