"""Featurization throughput against its baselines, measured in one run (CPU, ``weights: random``).

Run: ``python bench/featurize.py [--per-size 200] [--sizes 640x480,1920x1080]`` (``make bench-featurize``).

On one synthetic archive of JPEGs (quality 85, CCTV-like scenes) served by a local S3 server:

- **matmul**: TensorFlow's float32 2048x2048 matrix product, GFLOP/s, and the frames/s it bounds
  ResNet50 to (7.8 GFLOP a 224x224 frame);
- **A, model ceiling**: bare Keras ResNet50 on decoded 224x224 arrays, one process,
  ``predict_on_batch``, best of several batch sizes; float32, and mixed bfloat16 beside it;
- **B, the notebook way**: one process, boto3 get -> Pillow open/resize -> batches of 32 ->
  ``predict_on_batch``;
- **C, vidspark**: ``vidspark featurize`` on ``local[*]`` in its own process (listing, fetch, decode,
  model, Parquet write), timed from job start to features on disk (JVM start reported apart), with
  the peak resident memory of its Python workers.

Prints frames/s for A, B, C, the ratios C/A and C/B, and writes ``bench/results/featurize.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

GFLOP_PER_FRAME = 7.8


def matmul_gflops(n: int = 2048, repeat: int = 20) -> float:
    import tensorflow as tf

    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    f = tf.function(lambda x, y: tf.matmul(x, y))
    f(a, b).numpy()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(repeat):
            out = f(a, b)
        out.numpy()
        best = min(best, (time.perf_counter() - t0) / repeat)
    return 2 * n**3 / best / 1e9


def model_ceiling(batch_sizes: list[int], n_frames: int, precision: str = "float32") -> dict[str, Any]:
    import tensorflow as tf

    from vidspark.config import FeaturizerConf
    from vidspark.featurizer import build_model, preprocess

    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    try:
        model = build_model(FeaturizerConf(weights="random"))
        rng = np.random.default_rng(0)
        frames = rng.integers(0, 256, size=(max(batch_sizes), 224, 224, 3), dtype=np.uint8)
        by_batch = {}
        for bs in batch_sizes:
            x = preprocess(frames[:bs])
            model.predict_on_batch(x)  # warm-up: graph build
            t0 = time.perf_counter()
            done = 0
            while done < n_frames:
                model.predict_on_batch(x)
                done += bs
            by_batch[bs] = round(done / (time.perf_counter() - t0), 2)
        best = max(by_batch, key=lambda k: by_batch[k])
        return {"precision": precision, "fps_by_batch": by_batch, "best_batch": best, "fps": by_batch[best]}
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")


def notebook_loop(client: Any, bucket: str, keys: list[str], batch: int = 32) -> float:
    """B: what a user writes without Spark."""
    from PIL import Image

    from vidspark.config import FeaturizerConf
    from vidspark.featurizer import build_model, preprocess

    model = build_model(FeaturizerConf(weights="random"))
    model.predict_on_batch(np.zeros((batch, 224, 224, 3), np.float32))
    t0 = time.perf_counter()
    buf: list[np.ndarray] = []
    for key in keys:
        data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        img = Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224))
        buf.append(np.asarray(img))
        if len(buf) == batch:
            model.predict_on_batch(preprocess(np.stack(buf)))
            buf = []
    if buf:
        model.predict_on_batch(preprocess(np.stack(buf)))
    return len(keys) / (time.perf_counter() - t0)


def _worker_rss_mb() -> float:
    """Largest resident memory among PySpark Python workers right now (forked children of pyspark.daemon)."""
    cmd, parent = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd[int(pid)] = Path(f"/proc/{pid}/cmdline").read_bytes()
            parent[int(pid)] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    best = 0.0
    for pid, c in cmd.items():
        if b"pyspark.daemon" in c and b"pyspark.daemon" in cmd.get(parent.get(pid, -1), b""):
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        best = max(best, int(line.split()[1]) / 1024)
            except OSError:
                pass
    return best


def vidspark_run(uri: str, out: Path, endpoint: str, extra: list[str]) -> dict[str, Any]:
    """C: `vidspark featurize` in its own process; job time from its run record, peak worker RSS sampled."""
    argv = [sys.executable, "-m", "vidspark", "featurize", "--input", uri, "--output", str(out / "features"), "--run-id", "bench", "--conf", str(ROOT / "conf" / "local.yaml")]
    argv += ["--set", "featurizer.weights=random", "--set", f"storage.endpoint_url={endpoint}", *extra]
    peak = 0.0
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(proc.stderr or []), daemon=True)
    reader.start()
    while proc.poll() is None:
        peak = max(peak, _worker_rss_mb())
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    reader.join(timeout=5)
    if proc.returncode != 0:
        raise RuntimeError("vidspark featurize failed:\n" + "".join(stderr)[-3000:])
    record = json.loads((out / "runs" / "bench.json").read_text())
    t = record["summary"]["timings"]
    job = sum(v for k, v in t.items())
    return {
        "frames": record["summary"]["featurized"],
        "job_s": round(job, 2),
        "process_wall_s": round(wall, 2),
        "jvm_and_startup_s": round(wall - job, 2),
        "timings": t,
        "worker_peak_rss_mb": round(peak),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-size", type=int, default=200)
    parser.add_argument("--sizes", default="640x480,1920x1080")
    parser.add_argument("--batch-sizes", default="16,32,64")
    parser.add_argument("--c-set", action="append", default=[], metavar="KEY=VALUE", help="extra --set for the vidspark run (C)")
    parser.add_argument("--skip-ab", action="store_true", help="measure C only (A and B from an earlier run are not repeated)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "featurize.json"))
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    from moto.server import ThreadedMotoServer

    from vidspark.config import StorageConf
    from vidspark.storage import make_s3_client
    from vidspark.synthetic import CLASSES, jpeg_bytes, scene

    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1", "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"})
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    previous: dict[str, Any] = {}
    results: dict[str, Any] = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()}, "per_size": args.per_size, "sizes": {}}
    try:
        client = make_s3_client(StorageConf(endpoint_url=endpoint))
        client.create_bucket(Bucket="bench")
        rng = np.random.default_rng(0)
        keys: dict[str, list[str]] = {}
        for w, h in sizes:
            name = f"{w}x{h}"
            keys[name] = []
            for i in range(args.per_size):
                label = CLASSES[i % len(CLASSES)]
                key = f"{name}/{label}/{i:05d}.jpg"
                client.put_object(Bucket="bench", Key=key, Body=jpeg_bytes(scene(label, rng, size=(w, h), phase=i / 5), quality=85))
                keys[name].append(key)

        if args.skip_ab:
            previous = json.loads(Path(args.out).read_text())
            results.update({k: previous[k] for k in ("matmul_gflops", "flop_bound_fps", "A", "A_bfloat16")})
        else:
            gflops = matmul_gflops()
            results["matmul_gflops"] = round(gflops, 1)
            results["flop_bound_fps"] = round(gflops / GFLOP_PER_FRAME, 1)
            results["A"] = model_ceiling(batch_sizes, n_frames=192)
            results["A_bfloat16"] = model_ceiling(batch_sizes, n_frames=192, precision="bfloat16")
        c_extra = ["--layout", "{label}/**"] + [a for kv in args.c_set for a in ("--set", kv)]
        results["C_settings"] = args.c_set
        for name in keys:
            b_fps = previous["sizes"][name]["B_fps"] if args.skip_ab else round(notebook_loop(client, "bench", keys[name]), 2)
            row: dict[str, Any] = {"B_fps": b_fps}
            with tempfile.TemporaryDirectory() as tmp:
                c = vidspark_run(f"s3://bench/{name}", Path(tmp), endpoint, c_extra)
            row["C"] = c
            row["C_fps"] = round(c["frames"] / c["job_s"], 2)
            row["C_over_A"] = round(row["C_fps"] / results["A"]["fps"], 3)
            row["C_over_B"] = round(row["C_fps"] / row["B_fps"], 3)
            results["sizes"][name] = row
    finally:
        server.stop()

    a = results["A"]
    print(f"matmul {results['matmul_gflops']} GFLOP/s -> FLOP bound {results['flop_bound_fps']} frames/s (7.8 GFLOP a frame)")
    print(f"A  model ceiling float32: {a['fps']} frames/s at batch {a['best_batch']} ({a['fps'] / results['flop_bound_fps']:.2f} of the bound); by batch {a['fps_by_batch']}")
    print(f"A  model ceiling bfloat16: {results['A_bfloat16']['fps']} frames/s at batch {results['A_bfloat16']['best_batch']}")
    print(f"{'size':>10} {'B fps':>8} {'C fps':>8} {'C/A':>6} {'C/B':>6} {'C job s':>8} {'JVM+start s':>12} {'worker RSS MB':>14}")
    for name, r in results["sizes"].items():
        print(f"{name:>10} {r['B_fps']:8.1f} {r['C_fps']:8.1f} {r['C_over_A']:6.2f} {r['C_over_B']:6.2f} {r['C']['job_s']:8.1f} {r['C']['jvm_and_startup_s']:12.1f} {r['C']['worker_peak_rss_mb']:14d}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
