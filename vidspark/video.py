"""Video decoding with PyAV: presentation order and time, sampling, keyframe-aligned splitting, truncation.

Nothing here touches Spark; :mod:`vidspark.frames` calls these functions on executors, over the
sources of :mod:`vidspark.video_source` (local paths, or S3 objects streamed by range reads).
- Frame identity: ``frame_idx`` is the frame's index in presentation order. Where the container
  stores presentation timestamps (MP4/MOV, Matroska/WebM, MPEG-TS/PS, ...), a frame's time is
  ``(pts - stream.start_time) * time_base`` seconds after the object's start time and its index
  is its rank among the stream's packets by pts. AVI and raw elementary streams store no
  presentation times (a B-frame AVI's decoder hands out pts such as 1, 2, 3, 5, 4, ...): there
  frames are numbered in the decoder's output order and the k-th frame takes the k-th smallest
  packet time (a frame-rate clock), so empty "dropped-frame" chunks leave gaps in time, not in
  the index, and are counted per frame (``dropped_before``), never as loss.
- Declared frame counts are hints: truncation is reported only where the data ends before the
  container says it should, by bytes (AVI ``RIFF`` size, MPEG-TS packet size) or by duration.
- Sampling is a pure function of a frame's index and time (and the previous frame's time), so a
  segment decoded in its own task keeps exactly the frames that a whole-file decode keeps.
- Splitting (:func:`probe_segments`) demuxes the packets without decoding them, then cuts at
  keyframes (containers without presentation timestamps are never split); each segment owns the frames whose ``pts`` lies in ``[start_pts, end_pts)``.
  A decode seeks to the keyframe, checks that it landed on or before it (MPEG-TS seeks are
  estimates) and otherwise retries further back, finally from the start.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from array import array
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from vidspark.config import VideoConf
from vidspark.errors import raised_in_vidspark
from vidspark.video_source import RangeReader, ebml_segment_end, file_size, is_storage_error, read_head

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Segment:
    """The frames of one video owned by one task: ``start_pts <= pts < end_pts`` (None: open end).

    ``first_idx`` is the stream index of the segment's first frame, ``prev_pts`` the pts of the frame
    just before it (for fps sampling), ``last_idx`` the index after which ``max_frames`` is reached.
    """

    start_pts: int | None = None
    end_pts: int | None = None
    first_idx: int = 0
    prev_pts: int | None = None
    last_idx: int | None = None
    seg_no: int = 0


WHOLE = Segment()


@dataclass
class VideoFrame:
    """One sampled frame: presentation index, seconds after the stream start, model-ready pixels.

    ``dropped_before``: empty "dropped-frame" slots (AVI) between the previous sampled frame and this one.
    """

    idx: int
    seconds: float
    pixels: np.ndarray
    dropped_before: int = 0


@dataclass
class DecodeReport:
    """How a decode ended: frames decoded and kept, and the error to report (type, message) if any."""

    decoded: int = 0
    kept: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    more: int = 0  # problems beyond the first few, counted only

    def add(self, error_type: str, message: str) -> None:
        if len(self.errors) < 5:
            self.errors.append((error_type, message))
        else:
            self.more += 1

    def error(self) -> tuple[str, str] | None:
        """One (error_type, message) summing up every problem of this decode, or None."""
        if not self.errors:
            return None
        etype, message = self.errors[0]
        if len(self.errors) + self.more > 1:
            message += f" (and {len(self.errors) + self.more - 1} more decode problem(s))"
        return etype, message


class Sampler:
    """Which frames to keep: every N-th stream index, or the first frame of every 1/fps seconds."""

    def __init__(self, vconf: VideoConf) -> None:
        self.every = vconf.every_n_frames
        self.fps = Fraction(str(vconf.fps)) if vconf.fps else None

    def keep(self, idx: int, t: Fraction, prev_t: Fraction | None) -> bool:
        if self.fps is None:
            return idx % self.every == 0
        return prev_t is None or math.floor(t * self.fps) > math.floor(prev_t * self.fps)


def _stream_clock(stream: Any) -> tuple[int, Fraction, Fraction]:
    start = stream.start_time if stream.start_time is not None else 0
    tb = Fraction(stream.time_base) if stream.time_base else Fraction(1, 90000)
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate or 25
    return int(start), tb, Fraction(rate)


def _open(av: Any, source: Any, vconf: VideoConf) -> Any:
    if isinstance(source, RangeReader):
        source.seek(0)
        source.error = None
        return av.open(source, mode="r", buffer_size=min(vconf.read_block_bytes, 1 << 20))
    return av.open(source, mode="r")


def _where(reader: Any, packet: Any, tb: Fraction, start: int, idx: int) -> str:
    parts = [f"frame {idx}"]
    if packet is not None and packet.pts is not None:
        parts.append(f"t={float((packet.pts - start) * tb):.3f} s")
    pos = getattr(packet, "pos", None) if packet is not None else None
    if pos is not None and pos >= 0:
        parts.append(f"byte {pos}")
    elif isinstance(reader, RangeReader):
        parts.append(f"near byte {reader.tell()}")
    return ", ".join(parts)


_AVFMT_NOTIMESTAMPS = 0x0080


def has_timestamps(container: Any) -> bool:
    """Whether the container stores presentation timestamps (AVI and raw elementary streams do not)."""
    fmt = container.format
    return fmt.name != "avi" and not (fmt.flags & _AVFMT_NOTIMESTAMPS)


def _pts_in_decode_order(av: Any, source: Any, vconf: VideoConf, probe_packets: int = 48) -> bool:
    """Whether a reordering (B-frame) stream's container gives every packet pts == dts.

    Some muxers write decode times as presentation times (a real MP4 from a Debian package does);
    such pts cannot order frames, so the file is timed like an AVI. Reads the first packets
    through a container and a reader of its own, so the caller's demuxing is untouched; a file
    this look-ahead cannot read is left to the caller's decode to report.
    """
    own = source.fresh() if isinstance(source, RangeReader) else source
    try:
        with _open(av, own, vconf) as container:
            stream = container.streams.video[0]
            if not stream.codec_context.has_b_frames:
                return False
            n, same = 0, True
            demux = container.demux(stream)
            try:
                for packet in demux:
                    if packet.size == 0 or packet.pts is None:
                        continue
                    if packet.pts != packet.dts:
                        same = False
                        break
                    n += 1
                    if n >= probe_packets:
                        break
            finally:
                demux.close()  # end the demuxer before its container closes
            return same and n > 0
    except Exception as exc:  # FFmpeg or storage errors: not this check's to report
        if raised_in_vidspark(exc):
            raise
        return False


def _packet_end(packet: Any, start: int, tb: Fraction, rate: Fraction) -> Fraction | None:
    """Seconds after the stream start at which a packet's data ends (its time plus its duration), or None."""
    ts = packet.pts if packet.pts is not None else packet.dts
    if ts is None:
        return None
    return (int(ts) - start) * tb + (packet.duration * tb if packet.duration else 1 / rate)


def probe_segments(source: Any, vconf: VideoConf) -> tuple[list[Segment], DecodeReport]:
    """Demux (without decoding) one video and cut it at keyframes into segments of ``segment_seconds``.

    Returns one :data:`WHOLE` segment when the container stores no presentation timestamps (AVI,
    raw streams) or has packets without them. Problems found while demuxing (unreadable
    container, truncation) are in the report's errors.
    """
    import av

    report = DecodeReport()
    try:
        container = _open(av, source, vconf)
    except Exception as exc:  # FFmpeg and storage errors alike become the object's errors row
        report.add(type(exc).__name__, f"cannot open video: {exc}")
        return [], report
    pts_list = array("q")  # 8 bytes a frame: a day of 30 fps video is 20 MB
    keyframes = array("q")
    try:
        problem = _stream_problem(container, vconf)
        if problem:
            report.add(*problem)
            return [], report
        stream = container.streams.video[0]
        if not has_timestamps(container) or _pts_in_decode_order(av, source, vconf):
            return [WHOLE], report  # frames are numbered in the decoder's output order: one task decodes the whole file
        start, tb, rate = _stream_clock(stream)
        packet = None
        data_end: Fraction | None = None
        try:
            for packet in container.demux(stream):
                end = _packet_end(packet, start, tb, rate)
                data_end = end if data_end is None or (end is not None and end > data_end) else data_end
                if packet.size == 0 or packet.is_discard:
                    continue
                if packet.pts is None:
                    return [WHOLE], report
                pts_list.append(int(packet.pts))
                if packet.is_keyframe:
                    keyframes.append(int(packet.pts))
        except Exception as exc:  # a read error mid-file: segments cover what was readable
            report.add(type(exc).__name__, f"demuxing stopped at {_where(source, packet, tb, start, len(pts_list))}: {exc}")
        if not report.errors and pts_list:
            problem_text = _check_complete(container, stream, source, frame_no=len(pts_list), last_t=(max(pts_list) - start) * tb, data_end=data_end, rate=rate)
            if problem_text:
                report.add("TruncatedVideo", problem_text)
    finally:
        container.close()
    if not pts_list:
        if not report.errors:
            report.add("EmptyVideo", "the video stream has no frames")
        return [], report
    pts_sorted = np.sort(np.frombuffer(pts_list, dtype=np.int64))
    seg_ticks = Fraction(str(vconf.segment_seconds)) / tb
    bounds = [int(pts_sorted[0])]
    for k in np.unique(np.frombuffer(keyframes, dtype=np.int64)).tolist():
        if k - bounds[-1] >= seg_ticks:
            bounds.append(int(k))
    last_idx = None
    if vconf.max_frames:
        sampler, kept, prev = Sampler(vconf), 0, None
        for i, p in enumerate(pts_sorted.tolist()):
            t = (p - start) * tb
            if sampler.keep(i, t, prev):
                kept += 1
                if kept == vconf.max_frames:
                    last_idx = i
                    break
            prev = t
    segments = []
    for n, b in enumerate(bounds):
        first = int(np.searchsorted(pts_sorted, b, side="left"))
        if last_idx is not None and first > last_idx:
            break
        segments.append(
            Segment(
                start_pts=None if n == 0 else b,
                end_pts=bounds[n + 1] if n + 1 < len(bounds) else None,
                first_idx=first,
                prev_pts=int(pts_sorted[first - 1]) if first else None,
                last_idx=last_idx,
                seg_no=n,
            )
        )
    return segments, report


_SEEK_BACK_SECONDS = (0.0, 1.0, 5.0, 30.0)


def decode_frames(source: Any, vconf: VideoConf, *, size: int, segment: Segment = WHOLE, report: DecodeReport | None = None, stall_timeout_s: float | None = None) -> Iterator[VideoFrame]:
    """Decode one video (or one segment of it) and yield the sampled frames as ``size``×``size`` RGB.

    Decode problems do not raise: they go to ``report.errors`` with the position where decoding
    stopped, and the frames decoded before (and after, when the decoder recovers) are still yielded.
    A whole-file decode also reports a stream that ends before its declared frame count or duration.
    With ``stall_timeout_s``, a decode that goes that long without a frame stops with an error
    (checked between packets: one FFmpeg call cannot be interrupted).
    """
    import av

    report = report if report is not None else DecodeReport()
    attempts: list[float | None] = [None] if segment.start_pts is None else [*_SEEK_BACK_SECONDS, None]
    for back in attempts:
        try:
            outcome = yield from _decode_attempt(av, source, vconf, size=size, segment=segment, seek_back=back, report=report, last_try=back is None, stall_timeout_s=stall_timeout_s)
        except Exception as exc:  # whatever odd data makes PyAV raise: the object's errors row; a bug of ours fails the task
            if raised_in_vidspark(exc):
                raise
            report.add(type(exc).__name__, f"decoding stopped: {exc}")
            return
        if outcome != "missed":
            return
        logger.info("seek landed after pts %s in %s; retrying from further back", segment.start_pts, source)


def _decode_attempt(
    av: Any, source: Any, vconf: VideoConf, *, size: int, segment: Segment, seek_back: float | None, report: DecodeReport, last_try: bool, stall_timeout_s: float | None = None
) -> Generator[VideoFrame, None, str]:
    errors_before = len(report.errors)

    def missed() -> str:
        del report.errors[errors_before:]  # problems met before the segment start belong to the previous segment
        return "missed"

    try:
        container = _open(av, source, vconf)
    except Exception as exc:  # FFmpeg and storage errors alike become the object's errors row
        report.add(type(exc).__name__, f"cannot open video: {exc}")
        return "failed"
    try:
        problem = _stream_problem(container, vconf)
        if problem:
            report.add(*problem)
            return "failed"
        stream = container.streams.video[0]
        timed = has_timestamps(container) and not _pts_in_decode_order(av, source, vconf)
        stream.codec_context.thread_count = vconf.decode_threads
        stream.codec_context.thread_type = "AUTO"
        start, tb, rate = _stream_clock(stream)
        # One scaler for the whole stream: frame.to_ndarray(width=, height=) builds a new swscale context for every
        # frame, which cost more than decoding (640x480 H.264: 700 frames/s a core with it, 1 200 with one shared).
        scaler = av.video.reformatter.VideoReformatter()
        if not timed:
            segment = WHOLE  # never split (see probe_segments): output order is the only order there is
        from_start = segment.start_pts is None
        whole = from_start and segment.end_pts is None
        if segment.start_pts is not None and seek_back is not None:
            target = max(start, segment.start_pts - int(Fraction(str(seek_back)) / tb))
            try:
                container.seek(target, stream=stream, backward=True, any_frame=False)
            except Exception as exc:  # a failed seek: a storage error ends here, an FFmpeg one tries further back
                if is_storage_error(source) or last_try:
                    report.add(type(exc).__name__, f"seeking to t={float((target - start) * tb):.3f} s failed: {exc}")
                    return "failed"
                return missed()
        sampler = Sampler(vconf)
        idx = segment.first_idx
        prev_t = (segment.prev_pts - start) * tb if segment.prev_pts is not None else None
        seen_start = from_start
        # Timed containers: every packet's pts until its frame comes out; a packet whose frame never does
        # (a decode error, or data the decoder dropped silently) still takes its index, as in the probe's count.
        # Containers without timestamps: every packet's time (a frame-rate clock); the k-th frame out takes the k-th smallest.
        pending: list[int] = []
        lost, first_lost, lead_in = 0, None, 0
        clock_prev: int | None = None
        dropped = 0  # empty slots since the last sampled frame
        data_end: Fraction | None = None
        packet = None
        demux = container.demux(stream)
        last_progress = time.monotonic()
        while True:
            if stall_timeout_s is not None and time.monotonic() - last_progress > stall_timeout_s:
                report.add("DecodeTimeout", f"no frame for {stall_timeout_s:g} s (featurizer.decode_timeout_s) at {_where(source, packet, tb, start, idx)}")
                return "done"
            try:
                packet = next(demux)
            except StopIteration:
                break
            except Exception as exc:  # truncated or unreadable container: keep what decoded so far
                if not seen_start and not last_try and not is_storage_error(source):
                    return missed()
                stage_note = "reading" if is_storage_error(source) else "demuxing"
                report.add(type(exc).__name__, f"{stage_note} stopped at {_where(source, packet, tb, start, idx)}: {exc}")
                packet = None
                break
            end = _packet_end(packet, start, tb, rate)
            data_end = end if data_end is None or (end is not None and end > data_end) else data_end
            if packet.size and not packet.is_discard:
                ts = packet.pts if timed else (packet.dts if packet.dts is not None else packet.pts)  # AVI: dts is the chunk clock
                if ts is not None and (from_start or ts >= segment.start_pts):
                    heapq.heappush(pending, int(ts))
            try:
                frames = packet.decode()
            except av.error.FFmpegError as exc:  # a corrupt packet: the decoder resumes at the next keyframe
                if seen_start:
                    report.add(type(exc).__name__, f"decoding failed at {_where(source, packet, tb, start, idx)}: {exc}")
                continue
            for frame in frames:
                report.decoded += 1
                last_progress = time.monotonic()
                if timed:
                    pts = frame.pts
                    if not from_start:
                        if pts is None or pts < segment.start_pts:
                            continue
                        if not seen_start:
                            if pts != segment.start_pts and not last_try:
                                return missed()
                            seen_start = True
                    if segment.end_pts is not None and pts is not None and pts >= segment.end_pts:
                        return "done"
                    while pending and pts is not None and pending[0] < pts:
                        lost_pts = heapq.heappop(pending)
                        if report.decoded == 1 and from_start:
                            lead_in += 1  # a recording cut mid-GOP starts with frames nothing can decode
                        else:
                            first_lost = lost_pts if first_lost is None else first_lost
                            lost += 1
                        idx += 1
                    if pending and pts is not None and pending[0] == pts:
                        heapq.heappop(pending)
                    t = (pts - start) * tb if pts is not None else Fraction(idx) / rate
                else:
                    slot = heapq.heappop(pending) if pending else None
                    t = (slot - start) * tb if slot is not None else Fraction(idx) / rate
                    if slot is not None:
                        ticks = slot - (clock_prev if clock_prev is not None else start)
                        dropped += max(0, round(float(ticks * tb * rate)) - (1 if clock_prev is not None else 0))
                        clock_prev = slot
                if segment.last_idx is not None and idx > segment.last_idx:
                    return "done"
                if sampler.keep(idx, t, prev_t):
                    try:
                        pixels = scaler.reformat(frame, width=size, height=size, format="rgb24", interpolation="BILINEAR").to_ndarray()
                    except Exception as exc:  # a frame that cannot be converted is skipped and reported
                        report.add(type(exc).__name__, f"converting frame {idx} (t={float(t):.3f} s) failed: {exc}")
                    else:
                        report.kept += 1
                        yield VideoFrame(idx, float(t), pixels, dropped)
                        dropped = 0
                        if from_start and segment.last_idx is None and vconf.max_frames and report.kept >= vconf.max_frames:
                            return "done"
                prev_t = t
                idx += 1
        if not seen_start and not last_try:
            return missed()
        if whole:  # frames of the last packets that never came out
            lost += len(pending)
            first_lost = first_lost if first_lost is not None or not pending else min(pending)
        if lead_in:
            logger.info("%s: %d frame(s) before the first decodable one (a recording cut mid-GOP)", source if isinstance(source, str) else "video", lead_in)
        if lost and len(report.errors) == errors_before:
            where = f", the first at t={float((first_lost - start) * tb):.3f} s" if first_lost is not None else ""
            report.add("LostFrames", f"{lost} frame(s) did not decode{where} (corrupt data?)")
        if whole and idx == 0 and len(report.errors) == errors_before:
            report.add("EmptyVideo", "the video stream has no frames")
        if whole and len(report.errors) == errors_before:
            problem_text = _check_complete(container, stream, source, frame_no=idx, last_t=prev_t, data_end=data_end, rate=rate)
            if problem_text:
                report.add("TruncatedVideo", problem_text)
        elif segment.end_pts is not None and len(report.errors) == errors_before:
            report.add("TruncatedVideo", f"the stream ends at frame {idx} (t={float(prev_t or 0):.3f} s), before this segment's end at t={float((segment.end_pts - start) * tb):.3f} s")
        return "done"
    finally:
        container.close()


def _stream_problem(container: Any, vconf: VideoConf) -> tuple[str, str] | None:
    """Why a container cannot be decoded at all (no video stream, frames over the pixel limit), or None."""
    if not container.streams.video:
        return "NoVideoStream", "the container has no video stream"
    cc = container.streams.video[0].codec_context
    if cc is None:
        return "UnsupportedCodec", "no decoder for the video stream's codec"
    pixels = int(cc.width or 0) * int(cc.height or 0)
    if pixels > vconf.max_frame_pixels:
        return "FrameTooLarge", f"frames of {cc.width}x{cc.height} exceed video.max_frame_pixels ({vconf.max_frame_pixels})"
    return None


def _check_complete(container: Any, stream: Any, source: Any, *, frame_no: int, last_t: Fraction | None, data_end: Fraction | None, rate: Fraction) -> str | None:
    """Why a whole-file decode looks cut short, or None: the data ends before the container says it should.

    A header's frame count is never the measure (AVI counts dropped-frame chunks in it; files
    that hold fewer pictures than declared are normal). The measure is bytes where the container
    states them (an AVI's ``RIFF`` size; MPEG-TS/M2TS packets of 188, 192 or 204 bytes) and
    otherwise the video stream's own declared duration against the end of its last packet (the
    audio may run longer). Raw elementary streams declare nothing.
    """
    where = f"frame {frame_no}, t={float(last_t or 0):.3f} s"
    name = container.format.name
    size = source.size if isinstance(source, RangeReader) else file_size(source)
    if name == "mpegts":
        if all(size % p for p in (188, 192, 204)):
            return f"MPEG-TS file of {size} bytes ends inside a transport packet ({where}): file truncated?"
        return None
    if name == "avi" or name.startswith("matroska"):
        head = read_head(source, 64)
        declared = int.from_bytes(head[4:8], "little") + 8 if head[:4] == b"RIFF" else ebml_segment_end(head)
        if declared is not None and size < declared:
            what = "RIFF header" if name == "avi" else "Matroska segment"
            return f"file of {size} bytes is shorter than the {declared} bytes its {what} declares (it stops at {where}): file truncated?"
        if name == "avi":
            return None
    if not has_timestamps(container) or data_end is None:
        return None
    if stream.duration and stream.time_base:
        declared_s = float(stream.duration * Fraction(stream.time_base))
    elif container.duration and len(container.streams) == 1:
        declared_s = container.duration / 1_000_000
    else:
        return None
    if declared_s - float(data_end) > max(3 / float(rate), 0.5):
        return f"the stream stops at t={float(data_end):.3f} s of {declared_s:.3f} s declared ({where}): file truncated?"
    return None
