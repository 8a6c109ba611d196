"""Video decode throughput on one core: frames per second for 640x480 and 1920x1080 H.264.

Run: ``python bench/video_decode.py [--frames 240] [--repeat 3]`` (``make bench-video``).

For each size it encodes one synthetic CCTV-like clip with PyAV (libx264, CRF 23, GOP 50, 25 fps,
moving objects over a textured, noisy background), then measures in this one process, with one
decoder thread (the per-core figure):

- ``pyav_decode``  baseline: PyAV demux + decode only, frames left in YUV (what FFmpeg itself costs);
- ``vidspark_all``  :func:`vidspark.video.decode_frames`: decode + colour conversion + resize to
  224x224 RGB, every frame (the model-ready pixels);
- ``vidspark_n5``   the same with ``every_n_frames: 5`` (every frame still decodes, only one in
  five is converted);
- ``vidspark_split`` the clip cut into keyframe-aligned segments of 2 s, decoded one after another
  (the overhead of seeking and of decoding a segment's lead-in).

Prints a table and writes ``bench/results/video_decode.json``. Best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from results_io import RESULTS, write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vidspark.config import VideoConf
from vidspark.video import decode_frames, probe_segments

SIZES = {"640x480": (640, 480), "1920x1080": (1920, 1080)}


def make_clip(path: Path, size: tuple[int, int], frames: int, fps: int = 25) -> None:
    """A clip with a static textured scene, sensor noise and two moving blocks (CCTV-like motion)."""
    import av

    w, h = size
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) * 127 // (w + h)) + 64], axis=-1).astype(np.int16)
    base += (np.sin(xx / 7.0) * np.cos(yy / 5.0) * 30).astype(np.int16)[..., None]
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.gop_size = 50
        stream.options = {"preset": "veryfast", "crf": "23"}
        for i in range(frames):
            img = base + rng.integers(-6, 7, size=(h, w, 1), dtype=np.int16)
            bw, bh = w // 8, h // 6
            x0 = int((i * 7) % (w - bw))
            y0 = int(h // 2 + np.sin(i / 10) * h // 5)
            img[y0 : y0 + bh, x0 : x0 + bw] = (200, 40, 40)
            x1 = int(w - bw - (i * 4) % (w - bw))
            img[h // 5 : h // 5 + bh, x1 : x1 + bw // 2] = (30, 30, 220)
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def pyav_decode(path: Path) -> int:
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.codec_context.thread_count = 1
        return sum(1 for _ in c.decode(s))


def vidspark_decode(path: Path, vconf: VideoConf) -> int:
    return sum(1 for _ in decode_frames(str(path), vconf, size=224))


def vidspark_split(path: Path, vconf: VideoConf) -> int:
    segments, _ = probe_segments(str(path), vconf)
    return sum(1 for seg in segments for _ in decode_frames(str(path), vconf, size=224, segment=seg))


def best_of(fn: Any, repeat: int) -> tuple[float, int]:
    best, n = float("inf"), 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = fn()
        best = min(best, time.perf_counter() - t0)
    return best, n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=240, help="frames per clip (default 240 = 9.6 s at 25 fps)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS / "video_decode.json"))
    args = parser.parse_args(argv)

    results: dict[str, Any] = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "frames": args.frames,
        "sizes": {},
    }
    one = VideoConf(decode_threads=1)
    cases = {
        "pyav_decode": lambda p: pyav_decode(p),
        "vidspark_all": lambda p: vidspark_decode(p, one),
        "vidspark_n5": lambda p: vidspark_decode(p, VideoConf(decode_threads=1, every_n_frames=5)),
        "vidspark_split": lambda p: vidspark_split(p, VideoConf(decode_threads=1, segment_seconds=2.0)),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, size in SIZES.items():
            path = Path(tmp) / f"{name}.mp4"
            t0 = time.perf_counter()
            make_clip(path, size, args.frames)
            row: dict[str, Any] = {"bytes": path.stat().st_size, "encode_s": round(time.perf_counter() - t0, 2)}
            for case, fn in cases.items():
                seconds, n_out = best_of(lambda fn=fn, path=path: fn(path), args.repeat)
                row[case] = {"seconds": round(seconds, 4), "frames_out": n_out, "decoded_fps": round(args.frames / seconds, 1)}
            row["vidspark_all_vs_pyav"] = round(row["vidspark_all"]["decoded_fps"] / row["pyav_decode"]["decoded_fps"], 3)
            row["split_vs_whole"] = round(row["vidspark_split"]["decoded_fps"] / row["vidspark_all"]["decoded_fps"], 3)
            results["sizes"][name] = row

    print(f"video decode, one core, H.264 CRF 23, {args.frames} frames per clip (frames decoded per second; best of {args.repeat})")
    print(f"{'size':>10} {'MB':>6} {'pyav_decode':>12} {'vidspark_all':>13} {'vidspark_n5':>12} {'vidspark_split':>15} {'all/pyav':>9} {'split/all':>10}")
    for name, r in results["sizes"].items():
        print(
            f"{name:>10} {r['bytes'] / 1e6:6.1f} {r['pyav_decode']['decoded_fps']:12.1f} {r['vidspark_all']['decoded_fps']:13.1f} "
            f"{r['vidspark_n5']['decoded_fps']:12.1f} {r['vidspark_split']['decoded_fps']:15.1f} {r['vidspark_all_vs_pyav']:9.3f} {r['split_vs_whole']:10.3f}"
        )
    write_results(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
