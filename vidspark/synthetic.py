"""Synthetic CCTV-like archives for the demo, the tests and the benchmarks.

Each class has its own scene: background tint, object shape and texture, with random position,
size, brightness and sensor noise, so a classifier has something real to learn even on features
of a randomly initialised ResNet50. Camera archives hold videos as frame folders in which a
fraction of frames show another class than the video's own (the flicker that smoothing removes).
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("car", "person", "bicycle")
_BACKGROUND = {"car": (95, 100, 120), "person": (80, 120, 70), "bicycle": (150, 135, 80)}


class Sink(Protocol):
    def put(self, key: str, data: bytes, mtime: datetime | None = None) -> None: ...


@dataclass
class LocalSink:
    """Writes objects as files below ``root``; ``mtime`` becomes the file's modification time."""

    root: Path

    def put(self, key: str, data: bytes, mtime: datetime | None = None) -> None:
        path = Path(self.root) / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if mtime is not None:
            ts = mtime.timestamp()
            os.utime(path, (ts, ts))


@dataclass
class S3Sink:
    """Writes objects to ``s3://bucket/prefix/key`` with a boto3 client."""

    client: Any
    bucket: str
    prefix: str = ""

    def put(self, key: str, data: bytes, mtime: datetime | None = None) -> None:
        full = f"{self.prefix.strip('/')}/{key}" if self.prefix.strip("/") else key
        self.client.put_object(Bucket=self.bucket, Key=full, Body=data)


def scene(label: str, rng: np.random.Generator, *, size: tuple[int, int] = (320, 240), phase: float = 0.0) -> Image.Image:
    """One frame showing ``label`` (one of :data:`CLASSES`, or any name: hashed to a tint)."""
    w, h = size
    base = np.array(_BACKGROUND.get(label, tuple(int(v) for v in rng.integers(60, 180, 3))), dtype=np.float64)
    base = base * rng.uniform(0.8, 1.2)
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.empty((h, w, 3))
    arr[:] = base
    if label == "car":  # road markings: horizontal stripes
        arr += (np.sin(yy / 6.0 + phase) > 0.6)[..., None] * 60
    elif label == "person":  # foliage-like blotches
        arr += (np.sin(xx / 9.0) * np.cos(yy / 7.0 + phase) > 0.5)[..., None] * np.array([10, 45, 5])
    elif label == "bicycle":  # a cycle path: diagonal lines
        arr += (np.sin((xx + yy) / 4.0 + phase) > 0.7)[..., None] * 50
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    cx = int((rng.uniform(0.25, 0.75) + 0.1 * np.sin(phase)) * w)
    cy = int(rng.uniform(0.35, 0.7) * h)
    s = rng.uniform(0.7, 1.3)
    color = tuple(int(v) for v in rng.integers(30, 230, 3))
    if label == "car":
        bw, bh = int(90 * s), int(35 * s)
        draw.rectangle([cx - bw // 2, cy - bh // 2, cx + bw // 2, cy + bh // 2], fill=color)
        for dx in (-bw // 3, bw // 3):
            r = int(11 * s)
            draw.ellipse([cx + dx - r, cy + bh // 2 - r, cx + dx + r, cy + bh // 2 + r], fill=(20, 20, 20))
    elif label == "person":
        bw, bh = int(24 * s), int(80 * s)
        draw.ellipse([cx - bw // 2, cy - bh // 2, cx + bw // 2, cy + bh // 2], fill=color)
        r = int(11 * s)
        draw.ellipse([cx - r, cy - bh // 2 - 2 * r, cx + r, cy - bh // 2], fill=(220, 180, 150))
    else:
        r = int(22 * s)
        for dx in (-int(30 * s), int(30 * s)):
            draw.ellipse([cx + dx - r, cy - r, cx + dx + r, cy + r], outline=color, width=4)
        draw.line([cx - int(30 * s), cy, cx, cy - r, cx + int(30 * s), cy], fill=color, width=4)
    noisy = np.asarray(img, dtype=np.float64) + rng.normal(0, 8, (h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def jpeg_bytes(img: Image.Image, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_labeled_set(sink: Sink, *, classes: tuple[str, ...] = CLASSES[:2], per_class: int = 30, seed: int = 0, prefix: str = "", size: tuple[int, int] = (320, 240)) -> list[str]:
    """Labeled stills under ``{label}/{label}_NNNN.jpg``; returns the keys written."""
    rng = np.random.default_rng(seed)
    keys = []
    for label in classes:
        for i in range(per_class):
            key = f"{prefix}{label}/{label}_{i:04d}.jpg"
            sink.put(key, jpeg_bytes(scene(label, rng, size=size, phase=rng.uniform(0, 6.28))))
            keys.append(key)
    return keys


def _shown_label(label: str, classes: tuple[str, ...], flicker: float, rng: np.random.Generator) -> str:
    """The video's own class, or with probability ``flicker`` another one (the flicker smoothing removes)."""
    if rng.uniform() < flicker:
        return classes[(classes.index(label) + 1 + int(rng.integers(0, max(1, len(classes) - 1)))) % len(classes)]
    return label


@dataclass(frozen=True)
class VideoTruth:
    camera_id: str
    video_id: str
    label: str
    frame_labels: tuple[str, ...]


def write_camera_archive(
    sink: Sink,
    *,
    cameras: tuple[str, ...] = ("cam1", "cam2"),
    videos_per_camera: int = 2,
    frames_per_video: int = 16,
    classes: tuple[str, ...] = CLASSES[:2],
    flicker: float = 0.25,
    fps: float = 2.0,
    start: datetime | None = None,
    seed: int = 1,
    prefix: str = "",
    size: tuple[int, int] = (320, 240),
) -> list[VideoTruth]:
    """Frame folders ``{camera_id}/{video_id}/frame_NNNNN.jpg``.

    Each video has a main class; a ``flicker`` fraction of its frames show another class. File
    modification times (local sinks) follow the frame rate from ``start``.
    """
    rng = np.random.default_rng(seed)
    start = start or datetime(2026, 11, 20, 14, 30, tzinfo=timezone.utc)
    truths = []
    for ci, cam in enumerate(cameras):
        for v in range(videos_per_camera):
            label = classes[(ci + v) % len(classes)]
            video_id = f"{cam}-{v:03d}"
            t0 = start + timedelta(minutes=10 * v + ci)
            frame_labels = []
            for i in range(frames_per_video):
                shown = _shown_label(label, classes, flicker, rng)
                frame_labels.append(shown)
                img = scene(shown, rng, size=size, phase=i / 3.0)
                sink.put(f"{prefix}{cam}/{video_id}/frame_{i:05d}.jpg", jpeg_bytes(img), t0 + timedelta(seconds=i / fps))
            truths.append(VideoTruth(cam, video_id, label, tuple(frame_labels)))
    return truths


def encode_video(frames: list[Image.Image] | list[np.ndarray], *, fps: int = 8, codec: str = "libx264", container_format: str = "mp4", gop: int = 8, faststart: bool = True) -> bytes:
    """Encode frames (PIL images or uint8 RGB arrays) with PyAV: H.264 in MP4 by default, MJPEG in AVI with ``codec='mjpeg', container_format='avi'``."""
    import av

    options = {"movflags": "+faststart"} if faststart and container_format in ("mp4", "mov") else {}
    with tempfile.TemporaryDirectory() as tmp:  # faststart rewrites the file in a second pass: needs a real file
        path = os.path.join(tmp, f"video.{container_format}")
        _encode_to(av, path, frames, fps=fps, codec=codec, container_format=container_format, gop=gop, options=options)
        with open(path, "rb") as fh:
            return fh.read()


def _encode_to(av: Any, path: str, frames: list[Any], *, fps: int, codec: str, container_format: str, gop: int, options: dict[str, str]) -> None:
    with av.open(path, mode="w", format=container_format, options=options) as out:
        first = np.asarray(frames[0])
        stream = out.add_stream(codec, rate=fps)
        stream.height, stream.width = first.shape[0], first.shape[1]
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.options = {"preset": "veryfast", "crf": "23"}
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.asarray(img, dtype=np.uint8)), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def write_video_camera(
    sink: Sink,
    *,
    camera: str = "cam3",
    videos: int = 2,
    frames_per_video: int = 48,
    fps: int = 8,
    classes: tuple[str, ...] = CLASSES[:2],
    flicker: float = 0.3,
    start: datetime | None = None,
    seed: int = 2,
    prefix: str = "",
    size: tuple[int, int] = (320, 240),
    codec: str = "libx264",
    container_format: str = "mp4",
    extension: str = "mp4",
) -> list[VideoTruth]:
    """A camera recorded as video files ``{camera}/{start:%Y%m%dT%H%M%S}.{extension}``.

    Each video shows its main class, with a ``flicker`` fraction of frames (chosen at random)
    showing another class. ``video_id`` in the returned truths is the key without extension, which
    is what vidspark gives a video file when the layout names no ``{video_id}``.
    """
    rng = np.random.default_rng(seed)
    start = start or datetime(2026, 11, 20, 15, 0, tzinfo=timezone.utc)
    truths = []
    for v in range(videos):
        label = classes[v % len(classes)]
        t0 = start + timedelta(minutes=20 * v)
        stem = f"{prefix}{camera}/{t0:%Y%m%dT%H%M%S}"
        frame_labels = []
        images = []
        for i in range(frames_per_video):
            shown = _shown_label(label, classes, flicker, rng)
            frame_labels.append(shown)
            images.append(scene(shown, rng, size=size, phase=i / 3.0))
        sink.put(f"{stem}.{extension}", encode_video(images, fps=fps, codec=codec, container_format=container_format), t0 + timedelta(seconds=frames_per_video / fps))
        truths.append(VideoTruth(camera, stem[len(prefix) :], label, tuple(frame_labels)))
    return truths
