"""Featurization throughput against its baselines, measured in one run (CPU, ``weights: random``).

Run: ``python bench/featurize.py [--per-size 400] [--sizes 640x480,1920x1080]`` (``make bench-featurize``).

On one synthetic archive of JPEGs (quality 85, CCTV-like scenes) served by a local S3 server:

- **matmul**: TensorFlow's float32 2048x2048 matrix product, GFLOP/s, and the frames/s it bounds
  ResNet50 to (7.8 GFLOP a 224x224 frame);
- **A, model ceiling**: vidspark's compiled ResNet50 call on decoded 224x224 arrays, one process,
  best of several batch sizes, at the precision ``auto`` picks on this CPU (what C runs: bfloat16
  with native BF16, else float32), and float32 beside it;
- **B, the notebook way**: a fresh Python process: boto3 get -> Pillow open/resize -> batches of 32
  -> Keras ``predict_on_batch``; timed from process start (imports and model build included, as
  C's are) and, apart, its loop alone;
- **C, vidspark**: ``vidspark featurize`` on ``local[*]`` in its own process (listing, fetch, decode,
  model, Parquet write), timed from job start (session up) to features on disk, the JVM start
  reported apart; also its throughput inside the featurize tasks (model built), from the run
  record's task timings; peak resident memory of its Python workers, and again on an input 4x larger
  (1600 frames: the end-to-end C/A target); once more with ``featurizer.decode_mode=overlap`` (decode
  beside the model, the behaviour before issue 15) against the default ``alternate``.

Prints frames/s for A, B, C, the ratios C/A and C/B, and writes ``bench/results/featurize.json``
(with the machine: CPU model and flags, cores, TensorFlow/Keras versions).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from results_io import RESULTS, write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
    from vidspark.backbone import Featurizer, auto_precision, cpu_info
    from vidspark.config import FeaturizerConf

    if precision == "auto":
        precision = auto_precision(None, cpu_info()["flags"])
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(max(batch_sizes), 224, 224, 3), dtype=np.uint8)
    by_batch = {}
    for bs in batch_sizes:
        model = Featurizer(FeaturizerConf(weights="random", batch_size=bs, precision=precision))  # traced and warmed on build
        t0 = time.perf_counter()
        done = 0
        while done < n_frames:
            model(frames[:bs])
            done += bs
        by_batch[bs] = round(done / (time.perf_counter() - t0), 2)
    best = max(by_batch, key=lambda k: by_batch[k])
    return {"precision": precision, "fps_by_batch": by_batch, "best_batch": best, "fps": by_batch[best]}


def notebook_loop(endpoint: str, bucket: str, prefix: str, launched: float, batch: int = 32) -> dict[str, Any]:
    """B, in a fresh process: what a user writes without Spark, from the first import to the last batch."""
    import boto3
    import tensorflow as tf  # noqa: F401
    from PIL import Image

    from vidspark.backbone import build_model, preprocess
    from vidspark.config import FeaturizerConf

    client = boto3.client("s3", endpoint_url=endpoint)
    keys = sorted(o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix) for o in page.get("Contents", []))
    model = build_model(FeaturizerConf(weights="random"))
    t0 = time.perf_counter()
    out, buf = [], []
    for key in keys:
        data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        img = Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224))
        buf.append(np.asarray(img))
        if len(buf) == batch:
            out.append(model.predict_on_batch(preprocess(np.stack(buf))))
            buf = []
    if buf:
        out.append(model.predict_on_batch(preprocess(np.stack(buf))))
    loop_s = time.perf_counter() - t0
    return {"frames": len(keys), "e2e_s": round(time.time() - launched, 2), "loop_s": round(loop_s, 2)}


def notebook_run(endpoint: str, bucket: str, prefix: str) -> dict[str, Any]:
    launched = time.time()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    cpu0 = time.process_time()
    out = subprocess.run([sys.executable, __file__, "--notebook", endpoint, bucket, prefix, str(launched)], check=True, capture_output=True, text=True, env=env)
    server_cpu = time.process_time() - cpu0
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["fps"] = round(r["frames"] / r["e2e_s"], 2)
    r["loop_fps"] = round(r["frames"] / r["loop_s"], 2)
    r["s3_server_cpu_s"] = round(server_cpu, 2)
    return r


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


def vidspark_run(uri: str, out: Path, endpoint: str, extra: list[str], *, gpu: bool = False, conf: Path = ROOT / "conf" / "local.yaml", concurrency: int | None = None) -> dict[str, Any]:
    """C: `vidspark featurize` in its own process; job time from its run record, peak worker RSS sampled.

    Also the CPU time this process spent meanwhile: the S3 server runs in it, so that is what serving
    the objects cost (on this machine it comes out of the same cores as the model). ``concurrency``:
    how many featurize tasks run at once (default: the run's CPU task slots; on GPUs, fewer: a
    task's GPU share decides), for the in-task rate.
    """
    argv = [sys.executable, "-m", "vidspark", "featurize", "--input", uri, "--output", str(out / "features"), "--run-id", "bench", "--conf", str(conf)]
    argv += ["--set", "featurizer.weights=random", "--set", f"storage.endpoint_url={endpoint}", *extra]
    env = dict(os.environ) if gpu else {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    peak = 0.0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(proc.stderr or []), daemon=True)
    reader.start()
    while proc.poll() is None:
        peak = max(peak, _worker_rss_mb())
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    server_cpu = time.process_time() - cpu0
    reader.join(timeout=5)
    if proc.returncode != 0:
        raise RuntimeError("vidspark featurize failed:\n" + "".join(stderr)[-3000:])
    record = json.loads((out / "runs" / "bench.json").read_text())
    t = record["summary"]["timings"]
    tasks = record["summary"]["tasks"]
    job = sum(v for k, v in t.items())
    slots = concurrency or record["summary"]["task_slots"]
    frames = record["summary"]["featurized"]
    return {
        "frames": frames,
        "job_s": round(job, 2),
        "fps": round(frames / job, 2),
        "in_tasks_fps": round(frames * slots / tasks["task_s"], 2),  # tasks run `slots` at a time
        "process_wall_s": round(wall, 2),
        "jvm_and_startup_s": round(wall - job, 2),
        "timings": t,
        "tasks": tasks,
        "task_slots": slots,
        "worker_peak_rss_mb": round(peak),
        "executor_models": record["summary"].get("executor_models"),
        "s3_server_cpu_s": round(server_cpu, 2),
    }


def serve_archive(sizes: list[tuple[int, ...]], per_size: int, *, memory_factor: int = 0) -> tuple[Any, str, list[str]]:
    """Start a local S3 server holding ``per_size`` JPEGs per size under ``s3://bench/WxH/`` (and ``WxH-xF/``: the first size, F times)."""
    import logging
    import socket

    from moto.server import ThreadedMotoServer

    from vidspark.config import StorageConf
    from vidspark.storage import make_s3_client
    from vidspark.synthetic import CLASSES, jpeg_bytes, scene

    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1", "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = make_s3_client(StorageConf(endpoint_url=endpoint))
    client.create_bucket(Bucket="bench")
    rng = np.random.default_rng(0)
    names = []
    for w, h in sizes:
        name = f"{w}x{h}"
        names.append(name)
        for i in range(per_size):
            label = CLASSES[i % len(CLASSES)]
            client.put_object(Bucket="bench", Key=f"{name}/{label}/{i:05d}.jpg", Body=jpeg_bytes(scene(label, rng, size=(w, h), phase=i / 5), quality=85))
    if memory_factor > 1:  # the same pictures under more keys: only the count grows
        for i in range(per_size):
            label = CLASSES[i % len(CLASSES)]
            for copy in range(memory_factor):
                client.copy_object(Bucket="bench", Key=f"{names[0]}-x{memory_factor}/{label}/{copy}-{i:05d}.jpg", CopySource={"Bucket": "bench", "Key": f"{names[0]}/{label}/{i:05d}.jpg"})
    return server, endpoint, names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-size", type=int, default=400)
    parser.add_argument("--sizes", default="640x480,1920x1080")
    parser.add_argument("--batch-sizes", default="16,32,64")
    parser.add_argument("--memory-factor", type=int, default=4, help="C again on the first size with this many times the objects (0: skip)")
    parser.add_argument("--no-overlap", dest="overlap", action="store_false", help="skip the C run with featurizer.decode_mode=overlap")
    parser.add_argument("--c-set", action="append", default=[], metavar="KEY=VALUE", help="extra --set for the vidspark run (C)")
    parser.add_argument("--notebook", nargs=4, metavar=("ENDPOINT", "BUCKET", "PREFIX", "LAUNCHED"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS / "featurize.json"))
    args = parser.parse_args(argv)
    if args.notebook:
        endpoint, bucket, prefix, launched = args.notebook
        print(json.dumps(notebook_loop(endpoint, bucket, prefix, float(launched))))
        return 0
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # the CPU benchmark (bench/gpu_featurize.py is the GPU one)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    t_start = time.perf_counter()
    server, endpoint, names = serve_archive(sizes, args.per_size, memory_factor=args.memory_factor)
    results: dict[str, Any] = {"per_size": args.per_size, "C_settings": args.c_set, "sizes": {}}
    try:
        gflops = matmul_gflops()
        results["matmul_gflops"] = round(gflops, 1)
        results["flop_bound_fps"] = round(gflops / GFLOP_PER_FRAME, 1)
        results["A"] = model_ceiling(batch_sizes, n_frames=192, precision="auto")  # what C runs
        results["A"]["over_flop_bound"] = round(results["A"]["fps"] / results["flop_bound_fps"], 3)
        results["A_float32"] = model_ceiling(batch_sizes, n_frames=192) if results["A"]["precision"] != "float32" else results["A"]
        c_extra = ["--layout", "{label}/**"] + [a for kv in args.c_set for a in ("--set", kv)]
        a_fps = results["A"]["fps"]
        for name in names:
            b = notebook_run(endpoint, "bench", f"{name}/")
            with tempfile.TemporaryDirectory() as tmp:
                c = vidspark_run(f"s3://bench/{name}", Path(tmp), endpoint, c_extra)
            results["sizes"][name] = {
                "B": b,
                "C": c,
                "C_over_A": round(c["fps"] / a_fps, 3),
                "C_in_tasks_over_A": round(c["in_tasks_fps"] / a_fps, 3),
                "C_over_B": round(c["fps"] / b["fps"], 3),
                "C_in_tasks_over_B_loop": round(c["in_tasks_fps"] / b["loop_fps"], 3),
            }
        if args.memory_factor > 1:
            with tempfile.TemporaryDirectory() as tmp:
                big = vidspark_run(f"s3://bench/{names[0]}-x{args.memory_factor}", Path(tmp), endpoint, c_extra)
            small = results["sizes"][names[0]]["C"]
            results["memory"] = {
                "input": names[0],
                "frames": [small["frames"], big["frames"]],
                "worker_peak_rss_mb": [small["worker_peak_rss_mb"], big["worker_peak_rss_mb"]],
                "growth": round(big["worker_peak_rss_mb"] / small["worker_peak_rss_mb"], 3),
                "C_fps_large": big["fps"],
                "C_in_tasks_fps_large": big["in_tasks_fps"],
                "C_over_A_large": round(big["fps"] / a_fps, 3),
                "C_in_tasks_over_A_large": round(big["in_tasks_fps"] / a_fps, 3),
                "C_large": big,
            }
        if args.overlap:  # decode beside the model (before issue 15) against the default, same input
            with tempfile.TemporaryDirectory() as tmp:
                over = vidspark_run(f"s3://bench/{names[0]}", Path(tmp), endpoint, [*c_extra, "--set", "featurizer.decode_mode=overlap"])
            results["decode_overlap"] = {"input": names[0], "C": over, "C_over_A": round(over["fps"] / a_fps, 3), "C_in_tasks_over_A": round(over["in_tasks_fps"] / a_fps, 3)}
    finally:
        server.stop()
    results["bench_s"] = round(time.perf_counter() - t_start, 1)

    a = results["A"]
    print(f"matmul {results['matmul_gflops']} GFLOP/s -> FLOP bound {results['flop_bound_fps']} frames/s (7.8 GFLOP a frame)")
    print(f"A  model ceiling {a['precision']} (what auto picks here): {a['fps']} frames/s at batch {a['best_batch']} ({a['over_flop_bound']:.2f} of the float32 bound); by batch {a['fps_by_batch']}")
    print(f"A  model ceiling float32: {results['A_float32']['fps']} frames/s at batch {results['A_float32']['best_batch']}; by batch {results['A_float32']['fps_by_batch']}")
    print(
        f"{'size':>10} {'B fps':>6} {'B loop':>7} {'C fps':>6} {'C tasks':>8} {'C/A':>5} {'C/A tasks':>9} {'C/B':>5} {'C/B loop':>8} {'C job s':>7} {'JVM s':>6} {'worker MB':>9} {'S3 CPU s B/C':>12}"
    )
    for name, r in results["sizes"].items():
        b, c = r["B"], r["C"]
        print(
            f"{name:>10} {b['fps']:6.1f} {b['loop_fps']:7.1f} {c['fps']:6.1f} {c['in_tasks_fps']:8.1f} {r['C_over_A']:5.2f} {r['C_in_tasks_over_A']:9.2f} "
            f"{r['C_over_B']:5.2f} {r['C_in_tasks_over_B_loop']:8.2f} {c['job_s']:7.1f} {c['jvm_and_startup_s']:6.1f} {c['worker_peak_rss_mb']:9d} "
            f"{b['s3_server_cpu_s']:5.1f}/{c['s3_server_cpu_s']:<5.1f}"
        )
        t = c["tasks"]
        print(
            f"{'':>10} C where the time goes: worker start {t.get('tf_import_s_max', 0):.1f} s TF import + {t.get('model_build_s_max', 0):.1f} s build + "
            f"{t.get('first_call_s_max', 0):.1f} s first call; "
            f"tasks {t['task_s']:.1f} s: model {t['model_s']:.1f} s, waiting for frames {t['wait_s']:.1f} s; fetch+decode {t.get('decode_s', 0):.1f} thread-s; "
            f"list {c['timings'].get('list_s', 0):.1f} s, write {c['timings'].get('write_s', 0):.1f} s"
        )
    if "memory" in results:
        m = results["memory"]
        print(f"worker peak memory: {m['worker_peak_rss_mb'][0]} MB for {m['frames'][0]} frames, {m['worker_peak_rss_mb'][1]} MB for {m['frames'][1]} ({m['growth']:.3f}x)")
        print(
            f"C on {m['frames'][1]} frames: {m['C_fps_large']} frames/s end to end (C/A {m['C_over_A_large']:.2f}, target >= 0.70), "
            f"{m['C_in_tasks_fps_large']} in tasks (C/A {m['C_in_tasks_over_A_large']:.2f}, target >= 0.85); model {m['C_large']['tasks'].get('model_s', 0):.1f} s, "
            f"waiting for frames {m['C_large']['tasks'].get('wait_s', 0):.1f} s, run as {m['C_large'].get('executor_models')}"
        )
    if "decode_overlap" in results:
        o = results["decode_overlap"]
        base = results["sizes"][o["input"]]
        print(
            f"decode_mode overlap on {o['input']}: C {o['C']['fps']} frames/s end to end, {o['C']['in_tasks_fps']} in tasks (C/A {o['C_in_tasks_over_A']:.2f}) "
            f"against alternate {base['C']['fps']} / {base['C']['in_tasks_fps']} (C/A {base['C_in_tasks_over_A']:.2f})"
        )
    print(f"bench took {results['bench_s']} s")
    write_results(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
