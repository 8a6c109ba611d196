"""Training and prediction throughput, against a plain LightGBM baseline measured in the same run.

Run: ``python bench/train.py [--rows 5000,20000,100000] [--baseline-rows 5000]`` (``make bench-train``).

Synthetic labeled features with structure (3 classes, videos of 20 frames, 2048 non-negative
values from a 32-dimensional latent, like pooled CNN features), grouped 5-fold CV and final fit:

- **baseline**: what a notebook does: LightGBM defaults (``max_bin`` 255, float64 input, row/col
  chosen by LightGBM), one ``lgb.Dataset`` built per fold, same folds, rounds and early stopping;
- **vidspark**: ``vidspark.train.cross_validate`` and the final fit, as ``vidspark train`` runs them.

Each size runs in its own process, so peak memory (``ru_maxrss``) belongs to that size alone.
Prediction: the pandas-UDF step of ``vidspark predict`` (``with_probabilities``) on ``local[*]`` over
features read from Parquet, rows/s, against ``booster.predict`` on the same numpy rows in one process.
Writes ``bench/results/train.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from results_io import RESULTS, write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLASSES = ["empty", "person", "vehicle"]


def synthetic(rows: int, seed: int = 0, dim: int = 2048, video_len: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features with structure: class centre + video offset + frame noise in a 32-d latent, lifted by a fixed ReLU map."""
    rng = np.random.default_rng(seed)
    n_videos = -(-rows // video_len)
    video_class = rng.integers(0, len(CLASSES), n_videos)
    centres = rng.normal(0, 1.0, (len(CLASSES), 32))
    video_off = rng.normal(0, 1.2, (n_videos, 32))
    vid = np.repeat(np.arange(n_videos), video_len)[:rows]
    latent = centres[video_class[vid]] + video_off[vid] + rng.normal(0, 0.8, (rows, 32))
    lift = rng.normal(0, 1 / np.sqrt(32), (32, dim)).astype(np.float32)
    X = np.maximum(latent.astype(np.float32) @ lift, 0.0)
    return X, video_class[vid].astype(np.int64), np.array([f"v{v}" for v in vid], dtype=object)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(mode: str, rows: int, rounds: int) -> dict[str, Any]:
    """One measurement in this process (called in a child process by main)."""
    import lightgbm as lgb

    from vidspark.config import TrainConf
    from vidspark.train import LabeledSet, classification_metrics, cross_validate, fit_booster, grouped_stratified_folds

    X, y, groups = synthetic(rows)
    tconf = TrainConf(folds=5, seed=42, num_boost_round=rounds, early_stopping_rounds=30)
    base_mb = peak_mb()
    t0 = time.perf_counter()
    if mode == "vidspark":
        data = LabeledSet(X=X, y=y, groups=groups, classes=CLASSES, featurizer="bench", sampled_from=rows)
        cv = cross_validate(data, tconf)
        t_cv = time.perf_counter() - t0
        final_rounds = max(1, int(np.median(cv["best_iterations"])))
        t1 = time.perf_counter()
        fit_booster(cv["params"], None, None, num_boost_round=final_rounds, train_set=cv.pop("dataset"))  # as vidspark train does
        t_fit = time.perf_counter() - t1
        accuracy, best = cv["overall_out_of_fold"]["accuracy"], cv["best_iterations"]
    else:  # the notebook way: defaults, float64, a Dataset per fold
        Xd = X.astype(np.float64)
        params = {"objective": "multiclass", "num_class": len(CLASSES), "verbosity": -1, "seed": 42}
        oof = np.zeros((rows, len(CLASSES)))
        best = []
        for k, (tr, te) in enumerate(grouped_stratified_folds(y, groups, n_splits=5, seed=42)):
            inner = grouped_stratified_folds(y[tr], groups[tr], n_splits=5, seed=42 + k + 1)
            fit_i, stop_i = inner[0]
            train_set = lgb.Dataset(Xd[tr[fit_i]], label=y[tr[fit_i]])
            valid = lgb.Dataset(Xd[tr[stop_i]], label=y[tr[stop_i]], reference=train_set)
            booster = lgb.train(params, train_set, num_boost_round=rounds, valid_sets=[valid], callbacks=[lgb.early_stopping(30, verbose=False)])
            best.append(int(booster.best_iteration or booster.current_iteration()))
            oof[te] = booster.predict(Xd[te])
        t_cv = time.perf_counter() - t0
        t1 = time.perf_counter()
        lgb.train(params, lgb.Dataset(Xd, label=y), num_boost_round=max(1, int(np.median(best))))
        t_fit = time.perf_counter() - t1
        accuracy = classification_metrics(y, oof, len(CLASSES))["accuracy"]
    return {
        "mode": mode,
        "rows": rows,
        "cv_s": round(t_cv, 2),
        "final_fit_s": round(t_fit, 2),
        "total_s": round(t_cv + t_fit, 2),
        "peak_mb": round(peak_mb()),
        "data_mb": round(base_mb),
        "cv_accuracy": round(float(accuracy), 4),
        "best_iterations": best,
    }


def predict_throughput(rows: int) -> dict[str, Any]:
    """rows/s of the predict pandas UDF on local[*] vs booster.predict in one process."""
    import pandas as pd
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from vidspark.app import build_session
    from vidspark.config import TrainConf
    from vidspark.model import predict_proba
    from vidspark.predict import with_probabilities
    from vidspark.train import fit_booster, lgb_params

    X, y, _ = synthetic(rows, seed=1)
    booster = fit_booster(lgb_params(TrainConf(), len(CLASSES)), X[:5000], y[:5000], num_boost_round=100)
    t0 = time.perf_counter()
    predict_proba(booster, X, len(CLASSES))
    in_process = rows / (time.perf_counter() - t0)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark: SparkSession = build_session("bench-predict", master="local[*]", spark_conf={"spark.sql.execution.arrow.maxRecordsPerBatch": 1024, "spark.ui.showConsoleProgress": "false"})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            pdf = pd.DataFrame({"uri": [f"u{i}" for i in range(rows)], "features": list(X)})
            spark.createDataFrame(pdf, "uri string, features array<float>").repartition(spark.sparkContext.defaultParallelism).write.parquet(tmp + "/f")
            model_bc = spark.sparkContext.broadcast(booster.model_to_string())
            df = spark.read.parquet(tmp + "/f")
            df.select(F.sum(F.size("features"))).collect()  # read once: page cache and JVM warm for both runs
            timings = []
            for with_udf in (False, True, True):  # the UDF twice: first with Python workers to start, then warm
                q = with_probabilities(df, model_bc, n_classes=len(CLASSES), feature_dim=X.shape[1]) if with_udf else df
                col = "probabilities" if with_udf else "features"
                t = time.perf_counter()
                q.select(F.sum(F.size(col))).collect()
                timings.append(time.perf_counter() - t)
    finally:
        spark.stop()
    read_s, cold_s, udf_s = timings
    udf_rows_s = rows / udf_s
    return {
        "rows": rows,
        "booster_in_process_rows_s": round(in_process),
        "read_only_s": round(read_s, 2),
        "udf_first_s": round(cold_s, 2),
        "udf_s": round(udf_s, 2),
        "udf_rows_s": round(udf_rows_s),
        "udf_over_in_process": round(udf_rows_s / in_process, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="5000,20000,100000")
    parser.add_argument("--baseline-rows", default="5000", help="sizes also run the plain-LightGBM way (slow)")
    parser.add_argument("--rounds", type=int, default=400, help="num_boost_round (early stopping after 30 without gain)")
    parser.add_argument("--predict-rows", type=int, default=50000)
    parser.add_argument("--one", nargs=2, metavar=("MODE", "ROWS"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS / "train.json"))
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.rounds)))
        return 0
    results: dict[str, Any] = {"machine": {"cpu_count": os.cpu_count()}, "train": [], "predict": None}
    baseline_rows = {int(r) for r in args.baseline_rows.split(",") if r}
    for rows in [int(r) for r in args.rows.split(",")]:
        for mode in ("baseline", "vidspark") if rows in baseline_rows else ("vidspark",):
            out = subprocess.run([sys.executable, __file__, "--one", mode, str(rows), "--rounds", str(args.rounds)], check=True, capture_output=True, text=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results["train"].append(r)
            print(f"train {mode:>8} {rows:>7} rows x 2048: CV {r['cv_s']:7.1f} s, final fit {r['final_fit_s']:6.1f} s, peak {r['peak_mb']:6d} MB, OOF accuracy {r['cv_accuracy']}", flush=True)
    by = {(r["mode"], r["rows"]): r for r in results["train"]}
    for rows in sorted(baseline_rows):
        if ("baseline", rows) in by and ("vidspark", rows) in by:
            b, v = by[("baseline", rows)], by[("vidspark", rows)]
            results[f"speedup_{rows}"] = round(b["total_s"] / v["total_s"], 2)
            print(f"vidspark vs baseline at {rows} rows: {b['total_s'] / v['total_s']:.2f}x faster, peak memory {v['peak_mb'] / b['peak_mb']:.2f}x")
    p = predict_throughput(args.predict_rows)
    results["predict"] = p
    print(
        f"predict pandas UDF: {p['udf_rows_s']} rows/s on local[*] with warm workers ({p['udf_over_in_process']} of booster.predict in one process, "
        f"{p['booster_in_process_rows_s']} rows/s); first run {p['udf_first_s']} s (Python workers start), reading alone {p['read_only_s']} s"
    )
    write_results(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
