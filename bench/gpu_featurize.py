"""Featurization on one GPU: model ceiling (A) and ``vidspark featurize`` (C) at batch sizes 64-512.

Run on a machine with an NVIDIA GPU and a CUDA build of TensorFlow:
``python bench/gpu_featurize.py [--per-size 2000] [--batch-sizes 64,128,256,512]``.
Not part of ``make bench`` (which runs on the CPU); exits with status 2 and says so when
TensorFlow sees no GPU.

- **A** (measured after C, so that this process's model does not hold GPU memory while C's
  workers run): vidspark's compiled ResNet50 call on decoded 224x224 frames, per batch size, in float32 and
  in mixed precision (float16 and bfloat16), optionally XLA (``--xla``);
- **C**: ``vidspark featurize --conf conf/gpu.yaml`` (the shipped GPU conf; the discovery script
  is this checkout's ``scripts/get_gpus_resources.sh``) on a standalone cluster whose workers offer
  GPUs (``--master spark://...``: Spark's GPU scheduling, one GPU per executor, the featurize stage
  asking for ``--task-gpus``, as in production). Without ``--master`` it runs on ``local[N]``, N =
  1 / ``--task-gpus`` tasks sharing the GPU (local mode schedules no GPUs: placement and stage-level
  scheduling are not exercised there, and the results say so). From a local S3 server (JPEGs, 640x480 and 1920x1080), per
  batch size and precision, tasks of at least 8 batches (``job.rows_per_task`` = 8 x batch), GPU
  utilisation sampled from nvidia-smi, with where the time goes from the run record's task timings:
  time in model calls, time the model thread waited for frames (decode could not keep up), and
  fetch+decode time summed over the fetch threads.

Writes ``bench/results/gpu_featurize.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from results_io import RESULTS, write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
DISCOVERY = ROOT / "scripts" / "get_gpus_resources.sh"


def gpu_name() -> str | None:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    details = tf.config.experimental.get_device_details(gpus[0])
    return str(details.get("device_name", "GPU"))


def ceiling(batch: int, precision: str, xla: bool, n_frames: int) -> float:
    from vidspark.backbone import Featurizer
    from vidspark.config import FeaturizerConf

    model = Featurizer(FeaturizerConf(weights="random", batch_size=batch, precision=precision, xla=xla))
    frames = np.random.default_rng(0).integers(0, 256, size=(batch, 224, 224, 3), dtype=np.uint8)
    model(frames)
    t0 = time.perf_counter()
    done = 0
    while done < n_frames:
        model(frames)  # returns numpy: includes the device-to-host copy, as featurize does
        done += batch
    return round(done / (time.perf_counter() - t0), 1)


class GpuUtilisation:
    """``nvidia-smi``'s GPU utilisation sampled every half second while the block runs (mean, p50, max in %)."""

    def __enter__(self) -> GpuUtilisation:
        import threading

        self.samples: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        import subprocess

        while not self.stop.wait(0.5):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5).stdout
                self.samples.append(max(float(v) for v in out.split()))
            except (OSError, ValueError, subprocess.SubprocessError):
                return

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)

    def summary(self) -> dict[str, float] | None:
        if not self.samples:
            return None
        return {"mean": round(float(np.mean(self.samples)), 1), "p50": round(float(np.median(self.samples)), 1), "max": round(max(self.samples), 1), "samples": len(self.samples)}


def main(argv: list[str] | None = None) -> int:
    import featurize as fb  # bench/featurize.py: the archive, server and C runner are shared

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-size", type=int, default=2000)
    parser.add_argument("--sizes", default="640x480,1920x1080")
    parser.add_argument("--batch-sizes", default="64,128,256,512")
    parser.add_argument("--precisions", default="float32,float16,bfloat16")
    parser.add_argument("--xla", action="store_true", help="also measure A with XLA")
    parser.add_argument("--fetch-threads", type=int, default=16)
    parser.add_argument(
        "--master", help="run C on this cluster (spark://host:7077, a standalone master whose workers offer GPUs: GPU scheduling, placement and sharing as in production) instead of local[*]"
    )
    parser.add_argument("--task-gpus", type=float, default=0.25, help="featurizer.task_gpus of C on --master")
    parser.add_argument("--out", default=str(RESULTS / "gpu_featurize.json"))
    args = parser.parse_args(argv)
    name = gpu_name()
    if name is None:
        print("gpu_featurize: TensorFlow sees no GPU here (CPU-only build or no device); nothing measured", file=sys.stderr)
        return 2
    batches = [int(b) for b in args.batch_sizes.split(",")]
    precisions = args.precisions.split(",")
    import tensorflow as tf

    build = tf.sysconfig.get_build_info()
    per_gpu = max(1, round(1 / args.task_gpus))  # featurize tasks sharing one GPU at a time
    master = args.master or f"local[{per_gpu}]"
    if not args.master:
        print(f"gpu_featurize: no --master: C runs on {master} (no GPU scheduling: placement and the stage's GPU profile are not exercised)", file=sys.stderr)
    results: dict[str, Any] = {
        "gpu": name,
        "cuda": build.get("cuda_version"),
        "cudnn": build.get("cudnn_version"),
        "master": master,
        "spark_gpu_scheduling": bool(args.master),
        "task_gpus": args.task_gpus,
        "tasks_per_gpu": per_gpu,
        "A": {},
        "C": {},
    }
    server, endpoint, names = fb.serve_archive([tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")], args.per_size)
    try:
        for size in names:
            for p in precisions:
                for bs in batches:
                    extra = ["--layout", "{label}/**", "--set", f"featurizer.batch_size={bs}", "--set", f"featurizer.precision={p}", "--set", f"featurizer.fetch_threads={args.fetch_threads}"]
                    extra += ["--set", f"job.rows_per_task={8 * bs}"]  # tasks of at least 8 batches: batch 256 and 512 differ
                    extra += ["--master", master, "--set", f"featurizer.task_gpus={args.task_gpus}", "--set", f"spark.executor.resource.gpu.discoveryScript={DISCOVERY}"]
                    with tempfile.TemporaryDirectory() as tmp, GpuUtilisation() as util:
                        c = fb.vidspark_run(f"s3://bench/{size}", Path(tmp), endpoint, extra, gpu=True, conf=ROOT / "conf" / "gpu.yaml", concurrency=per_gpu)
                    c["gpu_utilisation_pct"] = util.summary()
                    t = c["tasks"]
                    results["C"][f"{size}/{p}/{bs}"] = c
                    print(
                        f"C {size:>9} {p:>9} batch {bs:>4}: {c['fps']} frames/s end to end, {c['in_tasks_fps']} in tasks; "
                        f"model {t['model_s']:.1f} s, waiting for frames {t['wait_s']:.1f} s, fetch+decode {t.get('decode_s', 0):.1f} thread-s",
                        flush=True,
                    )
    finally:
        server.stop()
    for p in precisions:
        for bs in batches:
            results["A"][f"{p}/{bs}"] = ceiling(bs, p, False, n_frames=max(20 * bs, 2000))
            if args.xla:
                results["A"][f"{p}/{bs}/xla"] = ceiling(bs, p, True, n_frames=max(20 * bs, 2000))
            print(f"A {p:>9} batch {bs:>4}: {results['A'][f'{p}/{bs}']} frames/s", flush=True)

    write_results(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
