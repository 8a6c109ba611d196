"""A corpus of small, real-world-shaped video files for testing the decode path against ground truth.

Every file is produced here with PyAV (plus byte surgery where a container feature needs it), from
seeded synthetic pictures, so the corpus is deterministic and needs no ffmpeg CLI and no downloads.
It covers what archives actually hold: H.264 in every profile and container, HEVC (8 and 10 bit),
MPEG-4 ASP with B-frames and DivX-style packed B-frames, MS-MPEG4 v3, MJPEG, Cinepak with dropped-frame
chunks, MPEG-2 (interlaced, B-frames, program streams), VP9, AV1, variable frame rate, edit lists,
timestamps far from zero or wrapping at 2**33, rotation metadata, and audio, subtitle and data streams
beside the video.

For each file :class:`CorpusFile` records what was *encoded*: the number of pictures and their
presentation times (from the pts this module assigned, at the container's timestamp resolution), so a
decoder under test can be checked against construction, not against another decode. :func:`reference_decode`
is a second, independent opinion (a plain PyAV decode) and :func:`damage` makes truncated and corrupted
copies. ``python tests/corpus.py DIR`` builds the corpus in DIR and prints both side by side.

Timing notes: Matroska/WebM store milliseconds, so their times are the assigned pts rounded to 1 ms;
MPEG-TS/PS store 90 kHz, and every rate used with them divides 90 kHz exactly. Raw elementary streams
carry no timestamps and FFmpeg's raw demuxers assume 25 fps, so the raw file is encoded at 25 fps.
"""

from __future__ import annotations

import math
import os
import struct
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.filter
import numpy as np
from av.video.frame import PictureType

os.environ.setdefault("SVT_LOG", "1")

SIZE = (96, 64)
RAW_FORMATS = frozenset({"h264", "hevc", "m4v", "mpegvideo", "obu", "av1", "vvc", "cavsvideo", "rawvideo"})
MS = Fraction(1, 1000)
BITEXACT = {"fflags": "+bitexact"}
X264_DETERMINISTIC = "mbtree=0"  # x264's macroblock-tree asm gives run-to-run different output on AVX-512 machines
X265 = {"x265-params": "log-level=error:pools=1:frame-threads=1"}
ASS_HEADER = (
    b"[Script Info]\nScriptType: v4.00+\nPlayResX: 384\nPlayResY: 288\n\n[V4+ Styles]\n"
    b"Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, Italic, Underline, StrikeOut, "
    b"ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, MarginV, Encoding\n"
    b"Style: Default,Arial,16,&Hffffff,&Hffffff,&H0,&H0,0,0,0,0,100,100,0,0,1,1,0,2,10,10,10,0\n\n"
    b"[Events]\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n"
)
ROTATE_90 = struct.pack(">9I", 0, 0x00010000, 0, 0xFFFF0000, 0, 0, 0, 0, 0x40000000)


@dataclass(frozen=True)
class CorpusFile:
    """One good file and what it holds by construction."""

    name: str
    path: Path
    description: str
    frames: int
    times: tuple[float, ...]
    dropped: int = 0
    feature: str = ""


class CorpusError(RuntimeError):
    """A file did not come out with the property it was built to have."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise CorpusError(message)


def _seed(name: str) -> int:
    return zlib.crc32(name.encode())


def pictures(n: int, size: tuple[int, int] = SIZE, seed: int = 0) -> list[np.ndarray]:
    """``n`` RGB pictures: a drifting gradient, a square crossing it, a bouncing disc and seeded noise."""
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    side = max(8, h // 4)
    out = []
    for i in range(n):
        img = np.stack([(xx * 200 // w + 2 * i) % 256, yy * 200 // h + 20, (xx + yy) * 160 // (w + h) + 40], axis=-1).astype(np.int16)
        x = (i * 3) % (w - side)
        y = h // 3 + round(h / 6 * math.sin(i / 4))
        img[y : y + side, x : x + side] = (240, 40, 40)
        cx, cy = w - 1 - (i * 2) % w, h // 2 + round(h / 4 * math.cos(i / 3))
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < (side // 2) ** 2] = (30, 220, 60)
        img += rng.integers(-10, 11, img.shape, dtype=np.int16)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def _times(ticks: Sequence[int], time_base: Fraction, resolution: Fraction | None = None) -> tuple[float, ...]:
    """Seconds of each tick relative to the first, after rounding to the container's ``resolution`` (round half away from zero)."""
    exact = [t * time_base for t in ticks]
    if resolution is not None:
        exact = [math.floor(v / resolution + Fraction(1, 2)) * resolution for v in exact]
    return tuple(float(v - exact[0]) for v in exact)


def _steps(pattern: Sequence[int], n: int) -> list[int]:
    """``n`` ticks starting at 0 with gaps taken cyclically from ``pattern``."""
    ticks = [0]
    while len(ticks) < n:
        ticks.append(ticks[-1] + pattern[(len(ticks) - 1) % len(pattern)])
    return ticks


def _video_stream(
    out: av.container.OutputContainer, codec: str, *, rate: int, time_base: Fraction, size: tuple[int, int], pix_fmt: str, options: dict[str, str] | None, **ctx: object
) -> av.VideoStream:
    """A video encoder stream; single-threaded (and x264 without mbtree) so the bytes do not depend on the machine."""
    options = dict(options or {})
    if codec == "libx264":
        options["x264-params"] = ":".join(filter(None, [X264_DETERMINISTIC, options.get("x264-params")]))
    stream = out.add_stream(codec, rate=rate, options=options)
    stream.width, stream.height = size
    stream.pix_fmt = pix_fmt
    stream.codec_context.time_base = time_base
    stream.codec_context.thread_count = 1
    stream.time_base = time_base
    for key, value in ctx.items():
        setattr(stream.codec_context, key, value)
    return stream


def _encode(out: av.container.OutputContainer, stream: av.VideoStream, arrays: Iterable[np.ndarray], ticks: Sequence[int], time_base: Fraction, graph: av.filter.Graph | None = None) -> None:
    for array, tick in zip(arrays, ticks, strict=True):
        frame = av.VideoFrame.from_ndarray(array, format="rgb24").reformat(format=stream.pix_fmt)
        if graph is not None:
            graph.push(frame)
            frame = graph.pull()
        frame.pts, frame.time_base = tick, time_base
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def _video_file(
    directory: Path,
    name: str,
    codec: str,
    description: str,
    feature: str,
    *,
    n: int = 30,
    rate: int = 30,
    time_base: Fraction | None = None,
    ticks: Sequence[int] | None = None,
    resolution: Fraction | None = None,
    fmt: str | None = None,
    size: tuple[int, int] = SIZE,
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    extra: Callable[[av.container.OutputContainer], Callable[[], None]] | None = None,
    graph: av.filter.Graph | None = None,
    **ctx: object,
) -> CorpusFile:
    """Encode ``n`` pictures at ``ticks`` (default ``0..n-1`` of ``1/rate``) into one file.

    ``extra`` may add streams before the video's encoder opens; what it returns is called after the video is muxed.
    """
    time_base = time_base or Fraction(1, rate)
    ticks = list(ticks if ticks is not None else range(n))
    path = directory / name
    with av.open(str(path), "w", format=fmt, container_options=BITEXACT) as out:
        finish = extra(out) if extra else None
        stream = _video_stream(out, codec, rate=rate, time_base=time_base, size=size, pix_fmt=pix_fmt, options=options, **ctx)
        _encode(out, stream, pictures(n, size, _seed(name)), ticks, time_base, graph)
        if finish:
            finish()
    return CorpusFile(name, path, description, n, _times(ticks, time_base, resolution), feature=feature)


def _decoded(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


def _packets(path: Path) -> list[av.Packet]:
    with av.open(str(path)) as container:
        return [p for p in container.demux(video=0) if p.size]


def _require_b_frames(f: CorpusFile) -> CorpusFile:
    _check(any(fr.pict_type == PictureType.B for fr in _decoded(f.path)), f"{f.name}: no B-frames")
    return f


def _box_payloads(data: bytes, kind: bytes) -> list[int]:
    """Offsets of every ``kind`` box's payload (just after its type) found by byte search."""
    found, at = [], data.find(kind)
    while at >= 4:
        found.append(at + 4)
        at = data.find(kind, at + 4)
    return found


def _edit_media_time(path: Path) -> int:
    data = path.read_bytes()
    offsets = _box_payloads(data, b"elst")
    _check(bool(offsets), f"{path.name}: no edit list")
    at = offsets[0]
    version = data[at]
    return struct.unpack_from(">q" if version else ">i", data, at + 8 + (8 if version else 4))[0]


def _rotate_tkhd(path: Path, matrix: bytes = ROTATE_90) -> None:
    """Rewrite the (single) track header's transformation matrix in place."""
    data = bytearray(path.read_bytes())
    offsets = _box_payloads(bytes(data), b"tkhd")
    _check(len(offsets) == 1, f"{path.name}: expected one tkhd")
    at = offsets[0]
    at += 4 + (32 if data[at] == 1 else 20) + 16
    data[at : at + 36] = matrix
    path.write_bytes(bytes(data))


class _Bits:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = (value << 1) | ((self.data[self.pos >> 3] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value


def _vop_time_resolution(data: bytes) -> int:
    """``vop_time_increment_resolution`` from the first MPEG-4 Visual Object Layer header in ``data``."""
    at = 0
    while True:
        at = data.find(b"\x00\x00\x01", at)
        _check(at >= 0, "no VOL header")
        if 0x20 <= data[at + 3] <= 0x2F:
            break
        at += 3
    bits = _Bits(data[at + 4 :])
    bits.read(1 + 8)
    if bits.read(1):
        bits.read(4 + 3)
    if bits.read(4) == 15:
        bits.read(16)
    if bits.read(1):
        bits.read(2 + 1)
        if bits.read(1):
            bits.read(79)
    _check(bits.read(2) == 0, "VOL shape is not rectangular")
    _check(bits.read(1) == 1, "VOL marker bit missing")
    return bits.read(16)


def not_coded_vop(resolution: int, increment: int) -> bytes:
    """A not-coded P-VOP (N-VOP), the placeholder DivX writes into the chunk after a packed P+B pair."""
    width = max(1, (resolution - 1).bit_length())
    bits = "01" + "0" + "1" + format(increment % resolution, f"0{width}b") + "1" + "0"
    bits += "0" + "1" * ((8 - (len(bits) + 1) % 8) % 8)
    return b"\x00\x00\x01\xb6" + int(bits, 2).to_bytes(len(bits) // 8, "big")


def _mpeg4_packets(n: int, rate: int, seed: int) -> list[tuple[bytes, int, bool]]:
    """MPEG-4 ASP with one B-frame between references, as ``(bytes, pts, keyframe)`` in decode order."""
    ctx = av.CodecContext.create("mpeg4", "w")
    ctx.width, ctx.height = SIZE
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = Fraction(1, rate)
    ctx.framerate = Fraction(rate)
    ctx.max_b_frames = 1
    ctx.thread_count = 1
    ctx.gop_size = 12
    ctx.open()
    packets = []
    for i, array in enumerate(pictures(n, SIZE, seed)):
        frame = av.VideoFrame.from_ndarray(array, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        packets += ctx.encode(frame)
    packets += ctx.encode(None)
    return [(bytes(p), p.pts, p.is_keyframe) for p in packets]


def divx_packed_chunks(packets: list[tuple[bytes, int, bool]]) -> list[tuple[bytes, bool]]:
    """Repack decode-order packets the DivX 5 way: ``I0 | P2+B1 | N-VOP | P4+B3 | N-VOP ...`` with the packed-mode user data."""
    resolution = _vop_time_resolution(packets[0][0])
    chunks: list[tuple[bytes, bool]] = []
    i = 0
    while i < len(packets):
        data, pts, key = packets[i]
        if i + 1 < len(packets) and packets[i + 1][1] < pts:
            chunks += [(data + packets[i + 1][0], key), (not_coded_vop(resolution, pts), False)]
            i += 2
        else:
            chunks.append((data, key))
            i += 1
    first = chunks[0][0]
    vop = first.find(b"\x00\x00\x01\xb6")
    gov = first.find(b"\x00\x00\x01\xb3")
    at = gov if 0 <= gov < vop else vop
    chunks[0] = (first[:at] + b"\x00\x00\x01\xb2DivX503b1393p" + first[at:], chunks[0][1])
    return chunks


def _packed_avi(directory: Path) -> CorpusFile:
    name, rate = "mpeg4_divx_packed.avi", 25
    chunks = divx_packed_chunks(_mpeg4_packets(24, rate, _seed(name)))
    path = directory / name
    time_base = Fraction(1, rate)
    with av.open(str(path), "w", container_options=BITEXACT) as out:
        stream = out.add_mux_stream("mpeg4", rate=rate, width=SIZE[0], height=SIZE[1])
        stream.time_base = time_base  # one AVI chunk per 1/rate: a finer clock would make the muxer write empty chunks between them
        for index, (data, key) in enumerate(chunks):
            packet = av.Packet(data)
            packet.stream = stream
            packet.pts = packet.dts = index
            packet.time_base = time_base
            packet.is_keyframe = key
            out.mux(packet)
    decoded = len(_decoded(path))
    _check(decoded == len(chunks), f"{name}: {decoded} pictures decoded from {len(chunks)} chunks")
    with av.open(str(path)) as container:
        header_frames = container.streams.video[0].frames
    _check(header_frames == len(chunks), f"{name}: header says {header_frames} frames for {len(chunks)} chunks")
    return CorpusFile(
        name,
        path,
        f"MPEG-4 ASP, DivX 5 packed B-frames (P+B in one chunk, then N-VOP), AVI; plain decode gives one picture per chunk ({len(chunks)})",
        len(chunks),
        _times(range(len(chunks)), time_base),
        feature="packed-bitstream",
    )


def _cinepak_dropped(directory: Path) -> CorpusFile:
    name, rate = "cinepak_dropped.avi", 15
    slots = [0, 1, 2, 7, 8, 9, 15, 16, 20, 21, 22, 23, 30, 31, 32, 33, 40, 41, 42, 43, 44, 50, 51, 60]
    f = _video_file(
        directory, name, "cinepak", "Cinepak, AVI with empty dropped-frame chunks (VirtualDub-style), ends on a picture", "dropped-chunks", n=len(slots), rate=rate, ticks=slots, pix_fmt="rgb24"
    )
    dropped = slots[-1] + 1 - len(slots)
    with av.open(str(f.path)) as container:
        header_frames = container.streams.video[0].frames
    _check(header_frames == slots[-1] + 1, f"{name}: header says {header_frames} frames, expected {slots[-1] + 1}")
    return CorpusFile(f.name, f.path, f.description, f.frames, f.times, dropped=dropped, feature=f.feature)


def _open_gop(directory: Path) -> CorpusFile:
    f = _video_file(
        directory,
        "h264_high_open_gop.mkv",
        "libx264",
        "H.264 High, B-frames, open GOP (non-IDR I with leading B), keyint 12, Matroska",
        "open-gop",
        n=48,
        rate=25,
        resolution=MS,
        options={"profile": "high", "x264-params": "open-gop=1:keyint=12:min-keyint=12:bframes=3:scenecut=0"},
    )
    packets = _packets(f.path)
    leading = any(p.is_keyframe and any(q.pts < p.pts for q in packets[i + 1 : i + 4]) for i, p in enumerate(packets) if i)
    _check(leading, f"{f.name}: no leading pictures after a recovery point")
    return _require_b_frames(f)


def _edit_list(directory: Path) -> CorpusFile:
    f = _video_file(directory, "h264_edit_list.mp4", "libx264", "", "edit-list", n=36, options={"profile": "high", "x264-params": "bframes=3:b-pyramid=normal"})
    media_time = _edit_media_time(f.path)
    _check(media_time > 0, f"{f.name}: edit list starts at {media_time}")
    return CorpusFile(f.name, f.path, f"H.264 High, B-pyramid, MP4 whose edit list skips the first {media_time} ticks of composition delay", f.frames, f.times, feature=f.feature)


def _ts_offset(directory: Path, name: str, start: int, description: str, feature: str) -> CorpusFile:
    ticks = [start + 3000 * i for i in range(30)]
    f = _video_file(directory, name, "libx264", description, feature, n=30, time_base=Fraction(1, 90000), ticks=ticks, fmt="mpegts", options={"profile": "main", "bf": "2"})
    first = min(p.pts for p in _packets(f.path))
    _check((first - start) % (1 << 33) < 90000, f"{name}: first demuxed pts {first} does not match the assigned start {start}")
    return f


def _rotation(directory: Path) -> CorpusFile:
    f = _video_file(directory, "h264_rotated90.mp4", "libx264", "H.264 Main, MP4, tkhd matrix patched to a 90-degree rotation", "rotation", n=24, options={"profile": "main"})
    _rotate_tkhd(f.path)
    rotation = _decoded(f.path)[0].rotation
    _check(rotation in (90, -90, 270), f"{f.name}: PyAV reports rotation {rotation}")
    return CorpusFile(f.name, f.path, f"{f.description} (PyAV frame.rotation={rotation})", f.frames, f.times, feature=f.feature)


def _tff_graph(rate: int) -> av.filter.Graph:
    graph = av.filter.Graph()
    source = graph.add_buffer(width=SIZE[0], height=SIZE[1], format="yuv420p", time_base=Fraction(1, rate))
    setfield, sink = graph.add("setfield", "tff"), graph.add("buffersink")
    source.link_to(setfield)
    setfield.link_to(sink)
    graph.configure()
    return graph


def _require_interlaced(f: CorpusFile) -> CorpusFile:
    _check(all(fr.interlaced_frame for fr in _decoded(f.path)), f"{f.name}: decoded frames are not flagged interlaced")
    return f


def _mpeg2_interlaced(directory: Path) -> CorpusFile:
    flags = av.codec.context.Flags.interlaced_dct | av.codec.context.Flags.interlaced_me
    f = _video_file(
        directory,
        "mpeg2_interlaced_tff.ts",
        "mpeg2video",
        "MPEG-2 Main, interlaced frame pictures (field DCT/ME), top field first, MPEG-TS",
        "interlaced",
        n=30,
        rate=25,
        fmt="mpegts",
        graph=_tff_graph(25),
        flags=flags,
        max_b_frames=2,
        gop_size=12,
    )
    data = bytes(_packets(f.path)[0])
    ext = next((i for i in range(len(data) - 8) if data[i : i + 4] == b"\x00\x00\x01\xb5" and data[i + 4] >> 4 == 8), None)
    _check(ext is not None and data[ext + 7] >> 7 == 1 and data[ext + 8] >> 7 == 0, f"{f.name}: picture coding extension is not tff/interlaced")
    return _require_interlaced(f)


def _vfr(directory: Path, name: str, time_base: Fraction, scale: int, resolution: Fraction | None, description: str) -> CorpusFile:
    ticks = [scale * t for t in _steps([1, 1, 3, 1, 7, 2, 1, 1, 4, 1], 32)]
    return _video_file(directory, name, "libx264", description, "vfr", n=32, rate=30, time_base=time_base, ticks=ticks, resolution=resolution, options={"profile": "main"})


def _audio_longer(directory: Path) -> CorpusFile:
    def add_audio(out: av.container.OutputContainer) -> Callable[[], None]:
        audio = out.add_stream("aac", rate=16000, layout="mono")
        return lambda: _mux_tone(out, audio, seconds=2.5, chunk=1024, fmt="fltp")

    f = _video_file(directory, "h264_aac_audio_longer.mp4", "libx264", "H.264 Main 2.0 s + AAC 2.5 s (audio outlasts video), MP4", "audio", n=40, rate=20, options={"profile": "main"}, extra=add_audio)
    with av.open(str(f.path)) as container:
        audio, video = container.streams.audio[0], container.streams.video[0]
        _check(audio.duration * audio.time_base > video.duration * video.time_base, f"{f.name}: audio is not longer than video")
    return f


def _mpeg2_mp2(directory: Path) -> CorpusFile:
    def add_audio(out: av.container.OutputContainer) -> Callable[[], None]:
        audio = out.add_stream("mp2", rate=48000, layout="stereo")
        return lambda: _mux_tone(out, audio, seconds=1.6, chunk=1152, fmt="s16")

    return _require_b_frames(
        _video_file(
            directory,
            "mpeg2_mp2_audio.mpg",
            "mpeg2video",
            "MPEG-2 video with B-frames + MP2 audio, MPEG-1 system stream (.mpg)",
            "audio",
            n=40,
            rate=25,
            fmt="mpeg",
            extra=add_audio,
            max_b_frames=2,
            gop_size=15,
        )
    )


def _mux_tone(out: av.container.OutputContainer, stream: av.AudioStream, *, seconds: float, chunk: int, fmt: str) -> None:
    rate = stream.codec_context.sample_rate
    channels = stream.codec_context.layout.nb_channels
    total = round(seconds * rate)
    t = np.arange(total) / rate
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) * (1 + 0.2 * np.sin(2 * np.pi * 3 * t))
    for start in range(0, total, chunk):
        part = np.repeat(tone[None, start : start + chunk], channels, axis=0)
        if fmt == "s16":
            array = (part.T.reshape(1, -1) * 32767).astype(np.int16)
        else:
            array = part.astype(np.float32)
        frame = av.AudioFrame.from_ndarray(array, format=fmt, layout=stream.codec_context.layout.name)
        frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def _subtitle_stream(out: av.container.OutputContainer, codec: str) -> av.stream.Stream:
    stream = out.add_stream(codec)
    stream.codec_context.time_base = MS
    stream.codec_context.subtitle_header = ASS_HEADER
    return stream


def _mux_cues(out: av.container.OutputContainer, stream: av.stream.Stream, payload: Callable[[bytes], bytes], count: int = 3, every_ms: int = 400) -> None:
    for k in range(count):
        packet = av.Packet(payload(f"caption {k}".encode()))
        packet.stream = stream
        packet.time_base = MS
        packet.pts = packet.dts = k * every_ms
        packet.duration = every_ms - 50
        out.mux(packet)


def _mov_text(directory: Path) -> CorpusFile:
    def add(out: av.container.OutputContainer) -> Callable[[], None]:
        stream = _subtitle_stream(out, "mov_text")
        return lambda: _mux_cues(out, stream, lambda text: len(text).to_bytes(2, "big") + text)

    return _video_file(directory, "h264_mov_text.mp4", "libx264", "H.264 Main + mov_text (tx3g) subtitle track, MP4", "subtitle", n=30, rate=25, options={"profile": "main"}, extra=add)


def _srt_first(directory: Path) -> CorpusFile:
    def add(out: av.container.OutputContainer) -> Callable[[], None]:
        stream = _subtitle_stream(out, "subrip")
        return lambda: _mux_cues(out, stream, lambda text: text)

    return _video_file(directory, "h264_srt_first.mkv", "libx264", "H.264 High + SubRip subtitles as stream 0 (video is stream 1), Matroska", "subtitle-first", n=30, rate=25, resolution=MS, extra=add)


def _klv(directory: Path) -> CorpusFile:
    def add(out: av.container.OutputContainer) -> Callable[[], None]:
        stream = out.add_data_stream("klv")
        key = b"\x06\x0e\x2b\x34\x02\x0b\x01\x01\x0e\x01\x03\x01\x01\x00\x00\x00"
        return lambda: _mux_cues(out, stream, lambda text: key + bytes([len(text)]) + text, count=5, every_ms=200)

    return _video_file(directory, "h264_klv_data.ts", "libx264", "H.264 Main + KLV metadata data stream, MPEG-TS", "data-stream", n=30, rate=25, fmt="mpegts", options={"profile": "main"}, extra=add)


def _av1(directory: Path) -> CorpusFile:
    f = _video_file(directory, "av1_svt.mp4", "libsvtav1", "AV1 (SVT-AV1 preset 12), MP4", "av1", n=30, rate=25, size=(128, 96), options={"preset": "12", "svtav1-params": "lp=1"})
    with av.open(str(f.path)) as container:
        decoder = container.streams.video[0].codec_context.name
    _check(decoder in ("libdav1d", "av1", "libaom-av1"), f"{f.name}: decoded by {decoder}")
    return CorpusFile(f.name, f.path, f"{f.description}, decoded by {decoder}", f.frames, f.times, feature=f.feature)


def _hevc10(directory: Path) -> CorpusFile:
    f = _video_file(directory, "hevc_main10.mkv", "libx265", "H.265 Main 10 (yuv420p10le), B-frames, Matroska", "10-bit", rate=25, resolution=MS, pix_fmt="yuv420p10le", options=X265)
    frame = _decoded(f.path)[0]
    _check(frame.format.name.startswith("yuv420p10"), f"{f.name}: decodes as {frame.format.name}")
    return f


def build_corpus(directory: Path) -> list[CorpusFile]:
    """Write every good file into ``directory`` (created if needed) and return their descriptions."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    d = directory
    return [
        _video_file(d, "h264_baseline.mp4", "libx264", "H.264 Constrained Baseline (no B-frames), MP4", "no-bframes", options={"profile": "baseline"}),
        _require_b_frames(_video_file(d, "h264_main_bframes.mp4", "libx264", "H.264 Main, 2 B-frames, MP4", "bframes", options={"profile": "main", "bf": "2"})),
        _open_gop(d),
        _edit_list(d),
        _ts_offset(d, "h264_pts_10h.ts", 10 * 3600 * 90000, "H.264 Main, B-frames, MPEG-TS whose first pts is 10 h (3.24e9 at 90 kHz, > 2**31)", "pts-offset"),
        _ts_offset(d, "h264_pts_wrap.ts", (1 << 33) - 45000, "H.264 Main, B-frames, MPEG-TS whose 33-bit pts wraps 0.5 s in", "pts-wrap"),
        _video_file(d, "h264_annexb.h264", "libx264", "H.264 High, raw Annex-B elementary stream at 25 fps (no container timestamps)", "raw-es", rate=25, fmt="h264"),
        _vfr(d, "h264_vfr.mp4", Fraction(1, 90000), 3000, None, "H.264 Main, variable frame rate (gaps of 1-7 x 1/30 s), 90 kHz timescale, MP4"),
        _vfr(d, "h264_vfr.mkv", Fraction(1, 30), 1, MS, "H.264 Main, variable frame rate (gaps of 1-7 x 1/30 s), Matroska (1 ms resolution)"),
        _rotation(d),
        _require_interlaced(
            _video_file(
                d, "h264_mbaff_tff.mkv", "libx264", "H.264 High, MBAFF interlaced, top field first, Matroska", "interlaced", rate=25, resolution=MS, options={"x264-params": "interlaced=1:tff=1"}
            )
        ),
        _require_b_frames(_video_file(d, "hevc_main.mp4", "libx265", "H.265 Main 8-bit, B-frames, MP4", "hevc", options=X265)),
        _hevc10(d),
        _video_file(d, "hevc_main.ts", "libx265", "H.265 Main 8-bit, MPEG-TS", "mpegts", time_base=Fraction(1, 90000), ticks=[3000 * i for i in range(30)], fmt="mpegts", options=X265),
        _require_b_frames(_video_file(d, "mpeg4_asp_bframes.avi", "mpeg4", "MPEG-4 ASP, 2 B-frames stored one per chunk, AVI", "bframes", rate=25, max_b_frames=2, gop_size=12)),
        _packed_avi(d),
        _video_file(d, "msmpeg4v3.avi", "msmpeg4", "MS-MPEG4 v3 (DivX ;-) 3.11), AVI", "msmpeg4", rate=25),
        _video_file(d, "mjpeg.avi", "mjpeg", "Motion JPEG, AVI", "intra-only", n=20, rate=25, pix_fmt="yuvj420p"),
        _video_file(d, "mjpeg.mov", "mjpeg", "Motion JPEG, QuickTime MOV", "intra-only", n=20, rate=25, pix_fmt="yuvj420p"),
        _cinepak_dropped(d),
        _mpeg2_interlaced(d),
        _require_b_frames(_video_file(d, "mpeg2_bframes.mpg", "mpeg2video", "MPEG-2 Main, 2 B-frames, MPEG-2 program stream (.mpg)", "bframes", n=36, rate=25, fmt="vob", max_b_frames=2, gop_size=12)),
        _video_file(d, "vp9.webm", "libvpx-vp9", "VP9 profile 0, WebM", "vp9", rate=25, resolution=MS, options={"deadline": "good", "cpu-used": "8"}),
        _av1(d),
        _audio_longer(d),
        _mpeg2_mp2(d),
        _mov_text(d),
        _srt_first(d),
        _klv(d),
    ]


def _mdat_payload(data: bytes) -> tuple[int, int] | None:
    """Byte range of the first top-level ``mdat`` payload of an ISO-BMFF file, if it is one."""
    at = 0
    while at + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, at)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", data, at + 8)[0], 16
        elif size == 0:
            size = len(data) - at
        if size < header or kind not in (b"ftyp", b"mdat", b"moov", b"free", b"wide", b"skip", b"uuid", b"moof", b"mfra", b"styp", b"sidx", b"meta", b"pnot"):
            return None
        if kind == b"mdat":
            return at + header, min(at + size, len(data))
        at += size
    return None


def damage(src: CorpusFile, directory: Path) -> list[Path]:
    """Write ``<stem>.cut<ext>`` and ``<stem>.corrupt<ext>``.

    The cut copy keeps the first 60 % of the bytes plus 7, so the cut falls inside a packet as a dropped
    upload does; the corrupt copy has ~2 % overwritten with seeded noise around the middle of the media data.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = src.path.read_bytes()
    stem, ext = src.path.stem, src.path.suffix
    cut = directory / f"{stem}.cut{ext}"
    cut.write_bytes(data[: int(len(data) * 0.6) + 7])
    length = max(16, len(data) // 50)
    lo, hi = _mdat_payload(data) or (0, len(data))
    start = max(lo, min(hi - length, len(data) // 2 - length // 2))
    noise = np.random.default_rng(_seed(src.name)).integers(0, 256, length, dtype=np.uint8).tobytes()
    corrupt = directory / f"{stem}.corrupt{ext}"
    corrupt.write_bytes(data[:start] + noise + data[start + length :])
    return [cut, corrupt]


def reference_decode(path: Path) -> tuple[int, list[float]]:
    """An independent plain-PyAV decode: the number of pictures ``decode(video=0)`` yields, and their times.

    Times are seconds relative to the earliest picture, sorted. Where the container carries presentation
    timestamps they are ``frame.pts * time_base``. AVI has none (its demuxer numbers chunks), so for AVI the
    times are the distinct ``dts`` of the non-empty video packets, which keeps the slots of dropped-frame
    chunks; raw elementary streams have no timing at all and get ``k / average_rate``.
    """
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fmt = container.format.name
        time_base, rate = stream.time_base, stream.average_rate or stream.guessed_rate or 25
        pts = [frame.pts for frame in container.decode(stream)]
    count = len(pts)
    if "avi" in fmt.split(","):
        with av.open(str(path)) as container:
            dts = sorted({p.dts for p in container.demux(video=0) if p.size and p.dts is not None})
        return count, [float((d - dts[0]) * time_base) for d in dts]
    if RAW_FORMATS.intersection(fmt.split(",")) or any(p is None for p in pts):
        return count, [float(k / Fraction(rate)) for k in range(count)]
    ordered = sorted(pts)
    return count, [float((p - ordered[0]) * time_base) for p in ordered]


def _times_match(expected: Sequence[float], got: Sequence[float], tolerance: float = 1e-6) -> bool:
    return len(expected) == len(got) and all(abs(a - b) <= tolerance for a, b in zip(expected, got, strict=True))


def main(argv: list[str]) -> int:
    """Build the corpus into ``argv[1]`` (default ``./corpus``) and print expected vs reference-decoded frames and times."""
    directory = Path(argv[1] if len(argv) > 1 else "corpus")
    started = time.perf_counter()
    files = build_corpus(directory)
    built = time.perf_counter() - started
    print(f"{'file':<28} {'feature':<16} {'frames':>6} {'decoded':>7} {'times':>5} {'dropped':>7} {'bytes':>7}  description")
    mismatches = 0
    for f in files:
        count, times = reference_decode(f.path)
        same = _times_match(f.times, times)
        mismatches += count != f.frames or not same
        print(f"{f.name:<28} {f.feature:<16} {f.frames:>6} {count:>7} {'yes' if same else 'NO':>5} {f.dropped:>7} {f.path.stat().st_size:>7}  {f.description}")
        if not same:
            print(f"{'':<28} expected {[round(t, 4) for t in f.times]}\n{'':<28} decoded  {[round(t, 4) for t in times]}")
    print(f"{len(files)} files in {built:.1f} s, {mismatches} disagreeing with the reference decode")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
