"""Driver memory of ``vidspark train``'s gather, and of a short LightGBM fit after it, against the float64 matrix.

Run: ``python bench/train_memory.py [--rows 200000] [--dim 2048] [--fit-rounds 5] [--old] [--max-rows N]``
(about 4 minutes at 200 000 rows on 2 cores, 8 with ``--old``).

Writes a synthetic feature store like the real one (``FEATURES_SCHEMA``, Parquet partitioned by
``camera_id``/``date``, 3 classes, videos of 2 to 300 frames and stills as groups, ~19% zero
values like pooled CNN features), then, in a fresh driver process per measurement (``local[*]``,
``conf/local.yaml``'s Spark settings):

- **streamed**: ``vidspark.train.gather_labeled`` (Arrow batches a partition at a time into one float32 matrix);
- **old** (``--old``): the gather before it, copied here as ``old_gather`` (``toPandas`` of the rows, ``np.stack``);
- then (``--fit-rounds N``, default 5; 0: gather only) what ``vidspark train`` does, with N rounds:
  ``cross_validate`` (one binned LightGBM Dataset, 5 grouped folds) and the final fit.

Reports the driver's peak resident memory (``VmHWM`` of the Python driver process; the JVM's apart:
in ``local`` mode it also runs the executors) against the float64 (rows x dim x 8) and float32 sizes
of the matrix, and the times. Writes ``bench/results/train_memory.json``.
``measure(rows, dim, ...)`` runs one measurement for other benchmarks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results_io import RESULTS, write_results  # noqa: E402  (run as a script or imported as bench.train_memory)

CLASSES = ["empty", "person", "vehicle"]
CAMERAS = 4
DATES = 3
FILE_ROWS = 16384  # rows per Parquet file (128 MB of float32 at 2048): Spark's default split size
T0 = datetime(2026, 11, 20, 6, tzinfo=timezone.utc)


def write_store(path: str | Path, rows: int, dim: int = 2048, seed: int = 0) -> dict[str, Any]:
    """Write ``rows`` synthetic labeled feature rows as Parquet partitioned like ``features/``; returns what was written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.0, (len(CLASSES), 32))
    lift = rng.normal(0, 1 / np.sqrt(32), (32, dim)).astype(np.float32)
    item = pa.list_(pa.field("element", pa.float32(), nullable=False))
    written = zeros = videos = files = 0
    while written < rows:
        camera, day = f"cam{files % CAMERAS}", (T0 + timedelta(days=(files // CAMERAS) % DATES))
        cols: dict[str, list[Any]] = {k: [] for k in ("uri", "video_id", "frame_idx", "frame_ts", "object_ts", "label")}
        blocks = []
        n = 0
        while n < FILE_ROWS and written + n < rows:  # whole videos per file: a video stays in one partition
            length = min(int(rng.choice([1, rng.integers(2, 301)])), rows - written - n)
            label = int(rng.integers(len(CLASSES)))
            latent = centres[label] + rng.normal(0, 1.2, 32) + rng.normal(0, 0.8, (length, 32))
            blocks.append(np.maximum(latent.astype(np.float32) @ lift + 1.5, 0.0))
            video_id = f"v{videos:06d}" if length > 1 else None
            start = day + timedelta(minutes=videos % 1000)
            cols["uri"] += [f"s3://cams/{camera}/{video_id}.mp4" if video_id else f"s3://cams/{camera}/still{videos:06d}.jpg"] * length
            cols["video_id"] += [video_id] * length
            cols["frame_idx"] += list(range(length))
            cols["frame_ts"] += [start + timedelta(seconds=i / 5) for i in range(length)]
            cols["object_ts"] += [start] * length
            cols["label"] += [CLASSES[label]] * length
            n += length
            videos += 1
        X = np.concatenate(blocks)
        zeros += int((X == 0).sum())
        ts = pa.timestamp("us", tz="UTC")
        table = pa.table(
            {
                "uri": pa.array(cols["uri"]),
                "etag": pa.array(["etag"] * n),
                "video_id": pa.array(cols["video_id"], pa.string()),
                "frame_idx": pa.array(cols["frame_idx"], pa.int64()),
                "frame_ts": pa.array(cols["frame_ts"], ts),
                "label": pa.array(cols["label"]),
                "features": pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32)), pa.array(X.reshape(-1)), type=item),
                "featurizer": pa.array(["resnet50/imagenet@224"] * n),
                "object_ts": pa.array(cols["object_ts"], ts),
                "dropped_frames": pa.array([None] * n, pa.int64()),
            }
        )
        folder = Path(path) / f"camera_id={camera}" / f"date={day.date().isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / f"part-{files:05d}.snappy.parquet", compression="snappy")
        written += n
        files += 1
    return {"rows": written, "dim": dim, "videos": videos, "files": files, "zero_fraction": round(zeros / (written * dim), 3)}


def old_gather(features_df: Any, *, max_rows: int, seed: int) -> Any:
    """The gather before streaming, as it was (``git show ae3ce35:vidspark/train.py``): toPandas of the rows, then np.stack."""
    from pyspark.sql import functions as F

    from vidspark.errors import TrainingDataError
    from vidspark.train import LabeledSet

    labeled = features_df.where(F.col("label").isNotNull())
    counts = {r["label"]: int(r["count"]) for r in labeled.groupBy("label").count().collect()}
    total = sum(counts.values())
    if total == 0:
        raise TrainingDataError("no labeled rows in the features: featurize a labeled set (layout with {label}) first")
    if len(counts) < 2:
        raise TrainingDataError(f"training needs at least 2 classes, found only {sorted(counts)} ({total} rows)")
    if total > max_rows:
        fraction = max_rows / total
        print(f"sampling {max_rows} of {total} labeled rows (train.max_rows), same fraction per class", file=sys.stderr)
        labeled = labeled.sampleBy("label", {k: fraction for k in counts}, seed=seed)
    pdf: Any = labeled.select(
        "label",
        F.when(F.col("video_id").isNotNull(), F.concat_ws("/", "camera_id", "video_id")).otherwise(F.col("uri")).alias("group"),
        "featurizer",
        "features",
        "uri",
    ).toPandas()
    pdf = pdf.sort_values("uri", kind="stable").reset_index(drop=True)  # collection order is not deterministic
    featurizers = sorted(pdf["featurizer"].unique())
    if len(featurizers) > 1:
        raise TrainingDataError(f"labeled features come from several featurizers {featurizers}: featurize them with one setting")
    X = np.stack(pdf["features"].to_numpy()).astype(np.float32, copy=False)
    if not np.isfinite(X).all():
        bad = int((~np.isfinite(X).all(axis=1)).sum())
        raise TrainingDataError(f"{bad} labeled rows have NaN or inf features; re-featurize them")
    classes = sorted(pdf["label"].unique())
    if len(classes) < 2:
        raise TrainingDataError(f"after sampling to train.max_rows only {classes} remain; raise train.max_rows")
    index = {c: i for i, c in enumerate(classes)}
    y = pdf["label"].map(index).to_numpy(dtype=np.int64)
    return LabeledSet(X=X, y=y, groups=pdf["group"].to_numpy(dtype=object), classes=classes, featurizer=featurizers[0], sampled_from=total)


def _mb(n_bytes: float) -> int:
    return round(n_bytes / 2**20)


def status_mb(field: str, pid: int | str = "self") -> int | None:
    """``VmHWM`` (peak resident memory) or ``VmRSS`` of a process, MB.

    Not ``ru_maxrss``: a child started by fork and exec inherits its parent's peak in it (Linux keeps
    the larger of the old and new address spaces' peaks), so it would report the benchmark's own.
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024)
    except OSError:
        pass
    if pid == "self" and field == "VmHWM":  # no /proc: the portable figure
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return None


def _peak_mb() -> int:
    return status_mb("VmHWM") or 0


def _reset_peak() -> None:
    """Start a new peak (``VmHWM`` := current RSS, Linux 4.0+), so each stage's peak is its own; cumulative where that fails."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _jvm_peak_mb() -> int | None:
    """Peak resident memory of this process's Java child: the driver JVM, with the local executors inside it."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            if int(text.rsplit(")", 1)[1].split()[1]) == os.getpid() and "(java)" in text:
                return status_mb("VmHWM", stat.parent.name)
        except (OSError, IndexError, ValueError):
            continue
    return None


def child(mode: str, store: str, *, max_rows: int, fit_rounds: int, spark_conf: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this (fresh) process: session, gather, optional fit."""
    from vidspark.app import build_session
    from vidspark.config import TrainConf, load_conf
    from vidspark.outputs import read_table
    from vidspark.schemas import FEATURES_SCHEMA
    from vidspark.train import cross_validate, fit_booster, gather_labeled

    conf = {**dict(load_conf(ROOT / "conf" / "local.yaml").spark), "spark.ui.enabled": "false", **spark_conf}
    spark = build_session("bench-train-memory", master="local[*]", spark_conf=conf)
    spark.sparkContext.setLogLevel("ERROR")
    try:
        features_df = read_table(spark, store, FEATURES_SCHEMA)
        out: dict[str, Any] = {"mode": mode, "python_start_mb": status_mb("VmRSS")}
        _reset_peak()
        t0 = time.perf_counter()
        gather = old_gather if mode == "old" else gather_labeled
        data = gather(features_df, max_rows=max_rows, seed=42)
        out.update(
            rows=len(data.y),
            dim=int(data.X.shape[1]),
            gather_s=round(time.perf_counter() - t0, 2),
            gather_peak_mb=_peak_mb(),
            holding_X_mb=status_mb("VmRSS"),
            X_dtype=str(data.X.dtype),
            spark_conf={k: conf[k] for k in sorted(conf) if k.startswith("spark.driver") or "arrow" in k or "Partition" in k},
        )
        if fit_rounds:  # what vidspark train does next, with few rounds: bin once, 5 grouped folds, final fit
            tconf = TrainConf(num_boost_round=fit_rounds, early_stopping_rounds=0)
            _reset_peak()
            t1 = time.perf_counter()
            cv = cross_validate(data, tconf)
            out.update(cv_s=round(time.perf_counter() - t1, 2), cv_peak_mb=_peak_mb())
            _reset_peak()
            t2 = time.perf_counter()
            fit_booster(cv["params"], None, None, num_boost_round=fit_rounds, train_set=cv.pop("dataset"))
            out.update(final_fit_s=round(time.perf_counter() - t2, 2), final_fit_peak_mb=_peak_mb())
            out["fit_rounds"] = fit_rounds
            out["bin_construct_sample_cnt"] = cv["params"].get("bin_construct_sample_cnt", 200_000)
            out["cv_accuracy"] = round(cv["overall_out_of_fold"]["accuracy"], 4)
        out["python_peak_mb"] = max(out[k] for k in ("gather_peak_mb", "cv_peak_mb", "final_fit_peak_mb") if k in out)
        out["jvm_peak_mb"] = _jvm_peak_mb()
        return out
    finally:
        spark.stop()


def measure(
    rows: int,
    dim: int = 2048,
    *,
    mode: str = "streamed",
    fit_rounds: int = 5,
    max_rows: int | None = None,
    store: str | Path | None = None,
    spark_conf: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Peak driver memory and times of one gather (``mode`` "streamed" or "old") and training after it, in a fresh process.

    ``store``: a store ``write_store`` made (a temporary one of ``rows`` x ``dim`` otherwise);
    ``max_rows``: ``train.max_rows`` (default ``rows``: no sampling); ``fit_rounds``: boosting rounds
    of the cross-validation and final fit (0: the gather alone). Returns the child's figures
    plus the float64 and float32 sizes of the matrix and the peak's ratio to each.
    """
    tmp = None
    if store is None:
        tmp = tempfile.mkdtemp(prefix="vidspark-train-memory-")
        store = Path(tmp) / "features"
        write_store(store, rows, dim)
    try:
        cmd = [sys.executable, __file__, "--child", mode, "--store", str(store), "--max-rows", str(max_rows or rows), "--fit-rounds", str(fit_rounds)]
        cmd += ["--spark-conf", json.dumps(spark_conf or {})]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{mode} at {rows} rows failed:\n{proc.stderr[-3000:]}")
        r: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        r["process_s"] = round(time.perf_counter() - t, 2)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    float64, float32 = r["rows"] * r["dim"] * 8, r["rows"] * r["dim"] * 4
    r.update(
        float64_mb=_mb(float64),
        float32_mb=_mb(float32),
        peak_over_float64=round(r["python_peak_mb"] * 2**20 / float64, 2),
        peak_over_float32=round(r["python_peak_mb"] * 2**20 / float32, 2),
        gather_over_float32=round((r["gather_peak_mb"] - r["python_start_mb"]) * 2**20 / float32, 2),
    )
    return r


def machine() -> dict[str, Any]:
    """What ran the benchmark: CPU model and count, memory, versions."""
    import lightgbm
    import pyspark

    cpu = platform.processor()
    mem_gb = None
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
        mem_gb = round(int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    return {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gb": mem_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "pyspark": pyspark.__version__,
        "lightgbm": lightgbm.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--max-rows", type=int, default=None, help="train.max_rows (default --rows: no sampling)")
    parser.add_argument("--fit-rounds", type=int, default=5, help="then cross-validate and fit with this many rounds, as train does (0: gather only)")
    parser.add_argument("--old", action="store_true", help="also measure the gather before streaming")
    parser.add_argument("--store", help="an existing store from an earlier run (kept); default: a temporary one")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--spark-conf", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS / "train_memory.json"))
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.store, max_rows=args.max_rows, fit_rounds=args.fit_rounds, spark_conf=json.loads(args.spark_conf))))
        return 0
    tmp = None if args.store else tempfile.mkdtemp(prefix="vidspark-train-memory-")
    store = args.store or str(Path(str(tmp)) / "features")
    results: dict[str, Any] = {"machine": machine(), "runs": []}
    try:
        if tmp:
            t = time.perf_counter()
            results["store"] = write_store(store, args.rows, args.dim)
            print(f"store: {results['store']} written in {time.perf_counter() - t:.0f} s", flush=True)
        runs = [("streamed", {})]
        if args.old:  # the old gather collects every row at once: it needs more than the matrix in spark.driver.maxResultSize
            runs.append(("old", {"spark.driver.maxResultSize": "0"}))
        for mode, spark_conf in runs:
            r = measure(args.rows, args.dim, mode=mode, fit_rounds=args.fit_rounds, max_rows=args.max_rows, store=store, spark_conf=spark_conf)
            results["runs"].append(r)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{results['machine']['cpu_model']}, {results['machine']['cpu_count']} CPUs, {results['machine']['memory_gb']} GB")
    print("| gather | rows × dim | float64 MB | float32 MB | Python at start | gather peak | holding X | CV peak | final fit peak | peak / float64 | JVM peak | gather s | CV s | final fit s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results["runs"]:
        print(
            f"| {r['mode']} | {r['rows']} × {r['dim']} | {r['float64_mb']} | {r['float32_mb']} | {r['python_start_mb']} | {r['gather_peak_mb']} | {r['holding_X_mb']} | "
            f"{r.get('cv_peak_mb', '-')} | {r.get('final_fit_peak_mb', '-')} | {r['peak_over_float64']} | {r['jvm_peak_mb']} | {r['gather_s']} | {r.get('cv_s', '-')} | {r.get('final_fit_s', '-')} |"
        )
    write_results(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
