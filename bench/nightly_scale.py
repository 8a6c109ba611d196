"""Nightly cost against archive size: one night that adds 1 000 objects, over stores of 10k, 100k and 1M objects.

For each store size N the benchmark builds an archive folder of N objects (``{camera_id}/{date}/{ts}.jpg``,
20 cameras, 500 objects per camera and day, so N/10 000 days; the stored objects are empty files, never
read) and a feature store that already holds all of them (synthetic rows: 8-float feature vectors, the
identity the listing gives them, the run's featurizer id). Then one night adds 1 000 real JPEGs on the
next day and runs ``vidspark featurize --since <that day>`` in a fresh driver process. It reports, per N:
listing time, diff time, the driver's peak memory (Python driver, and the JVM that in ``local`` mode
also holds the executors), objects listed and fetched, and the night's total, with ratios to the
smallest store. Targets (issue 12): night(1M)/night(10k) <= 1.5 and driver peak memory ratio <= 1.2.

``--baseline-ref REF`` runs the same nights with the vidspark of a git commit (a worktree) as well,
for a before/after table in the same run. ``--train-rows`` adds the training-memory measurement
(:mod:`bench.train_memory`).

    make bench-nightly                        # 10k, 100k, 1M
    .venv/bin/python bench/nightly_scale.py --sizes 10000 100000 --baseline-ref HEAD~5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.results_io import RESULTS, write_results  # noqa: E402
from bench.train_memory import status_mb  # noqa: E402

CAMERAS = 20
PER_CAMERA_DAY = 500
NIGHT_OBJECTS = 1000
DAY0 = date(2026, 1, 1)
# The baseline predates {date}: it reads the day folder as {_} (the same identity: the time is the file name's).
LAYOUTS = {"current": "{camera_id}/{date}/{ts}.jpg", "baseline": "{camera_id}/{_}/{ts}.jpg"}
CONF = [
    "--set", "featurizer.weights=random", "--set", "featurizer.image_size=32", "--set", "featurizer.batch_size=32",
    "--set", "spark.spark.sql.shuffle.partitions=8", "--set", "spark.spark.ui.enabled=false", "--set", "spark.spark.driver.memory=2g", "--set", "spark.spark.ui.showConsoleProgress=false",
]  # fmt: skip


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def key_of(cam: int, day: date, i: int) -> str:
    ts = datetime.combine(day, datetime.min.time(), tzinfo=timezone.utc) + timedelta(seconds=60 * i + cam)
    return f"cam{cam:02d}/{day.isoformat()}/{ts:%Y%m%dT%H%M%S}.jpg"


def build_archive(root: Path, n: int) -> list[date]:
    """N empty objects, 500 per camera and day; returns the days."""
    days = [DAY0 + timedelta(days=d) for d in range(max(1, n // (CAMERAS * PER_CAMERA_DAY)))]
    for day in days:
        for cam in range(CAMERAS):
            folder = root / f"cam{cam:02d}" / day.isoformat()
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(PER_CAMERA_DAY):
                (root / key_of(cam, day, i)).touch()
    return days


def build_store(spark: Any, root: Path, store: Path, featurizer: str) -> int:
    """The feature store that already holds every object of the archive, as the listing identifies them (built on Spark)."""
    from pyspark.sql import functions as F

    from vidspark.schemas import FEATURES_SCHEMA

    paths = spark.sparkContext.parallelize([str(p) for p in sorted(root.glob("cam*/*"))], 64)

    def rows(folder: str) -> Any:
        for entry in os.scandir(folder):
            st = entry.stat()
            cam = Path(folder).parent.name
            ts = datetime.strptime(entry.name[:-4], "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
            yield (entry.path, f"{st.st_size:x}-{st.st_mtime_ns:x}", cam, ts)

    df = spark.createDataFrame(paths.flatMap(rows), "uri string, etag string, camera_id string, frame_ts timestamp")
    df = df.select(
        "uri", "etag", "camera_id", F.lit(None).cast("string").alias("video_id"), F.lit(0).cast("long").alias("frame_idx"), "frame_ts",
        F.to_date("frame_ts").alias("date"), F.lit(None).cast("string").alias("label"), F.array(*[F.lit(0.5).cast("float")] * 8).alias("features"),
        F.lit(featurizer).alias("featurizer"), F.col("frame_ts").alias("object_ts"), F.lit(None).cast("long").alias("dropped_frames"),
        F.lit(None).cast("string").alias("framework"), F.lit(None).cast("long").alias("features_from_idx"),
    )  # fmt: skip
    df = spark.createDataFrame(df.rdd, FEATURES_SCHEMA)
    df.repartition("camera_id", "date").write.mode("overwrite").partitionBy("camera_id", "date").parquet(str(store))
    return spark.read.parquet(str(store)).count()


def add_night(root: Path, day: date) -> None:
    """1 000 real JPEGs on the night's day (50 per camera)."""
    import numpy as np

    from vidspark.synthetic import jpeg_bytes, scene

    rng = np.random.default_rng(7)
    images = [jpeg_bytes(scene("car", rng, size=(64, 48))) for _ in range(16)]
    for cam in range(CAMERAS):
        (root / f"cam{cam:02d}" / day.isoformat()).mkdir(parents=True, exist_ok=True)
        for i in range(NIGHT_OBJECTS // CAMERAS):
            (root / key_of(cam, day, i)).write_bytes(images[(cam + i) % len(images)])


_DRIVER = r"""
import json, sys, time
t0 = time.perf_counter()
from vidspark.cli import main
code = main(sys.argv[2:])
wall = time.perf_counter() - t0
sys.path.insert(0, sys.argv[1])
from bench.train_memory import status_mb  # VmHWM: ru_maxrss would carry the forking benchmark's own peak over exec
print("BENCH " + json.dumps({"code": code, "wall_s": wall, "py_peak_mb": status_mb("VmHWM")}))
"""


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def poll_jvm_peak_mb(proc: subprocess.Popen[str]) -> float:
    """Wait for the driver process; meanwhile sample its JVM child's resident memory (the JVM holds the driver and, in local mode, the executors)."""
    peak = 0.0
    while proc.poll() is None:
        for child in _children(proc.pid):
            try:
                if "java" in Path(f"/proc/{child}/comm").read_text():
                    peak = max(peak, status_mb("VmRSS", child) or 0)
            except OSError:
                pass
        time.sleep(0.2)
    return peak


def run_night(src: Path, layout: str, root: Path, out: Path, day: date, run_id: str) -> dict[str, Any]:
    """``vidspark featurize --since day`` in a fresh driver (the vidspark under ``src``); its figures and summary."""
    window = ["--since", day.isoformat(), "--until", (day + timedelta(days=1)).isoformat()]
    argv = ["featurize", "--input", str(root), "--output", str(out / "features"), "--layout", layout, *window, "--run-id", run_id, *CONF]
    env = {**os.environ, "PYTHONPATH": str(src), "PYSPARK_PYTHON": sys.executable}
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        proc = subprocess.Popen([sys.executable, "-c", _DRIVER, str(REPO), *argv], stdout=out_f, stderr=err_f, text=True, env=env, cwd=src)
        jvm_peak = poll_jvm_peak_mb(proc)
        total = time.perf_counter() - t0
        out_f.seek(0)
        err_f.seek(0)
        stdout, stderr = out_f.read(), err_f.read()
    line = next((ln for ln in stdout.splitlines() if ln.startswith("BENCH ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"night failed ({proc.returncode}):\n{stdout[-3000:]}\n{stderr[-5000:]}")
    figures = json.loads(line[6:]) | {"jvm_peak_mb": jvm_peak}
    summary = json.loads((out / "runs" / f"{run_id}.json").read_text())["summary"]
    t = summary["timings"]
    return {
        "process_s": round(total, 2),
        "night_s": round(sum(t.values()), 2),
        "list_s": t.get("list_s"),
        "diff_s": t.get("incremental_s"),
        "featurize_s": t.get("featurize_s"),
        "write_s": t.get("write_s"),
        "listed": summary["listed"],
        "fetched": summary["featurized_objects"] + summary["error_count"],
        "skipped": summary["skipped_unchanged"],
        "py_driver_peak_mb": round(figures["py_peak_mb"], 1),
        "jvm_peak_mb": round(figures["jvm_peak_mb"], 1),
    }


def featurizer_of(src: Path) -> str:
    """The featurizer id that vidspark under ``src`` gives the bench conf (stored rows carry it, so they count as unchanged)."""
    sets = [CONF[i + 1] for i, a in enumerate(CONF) if a == "--set" and CONF[i + 1].startswith("featurizer.")]
    script = "import sys; from vidspark.config import load_conf; from vidspark.backbone import featurizer_id; c = load_conf(None, sys.argv[1:]); print(featurizer_id(c.featurizer, c.storage))"
    proc = subprocess.run([sys.executable, "-c", script, *sets], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(src)}, cwd=src, check=True)
    return proc.stdout.strip().splitlines()[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--baseline-ref", help="also run the nights with the vidspark of this git commit (a worktree)")
    p.add_argument("--train-rows", type=int, default=0, help="also measure training's driver memory on this many rows x 2048 (bench/train_memory.py)")
    p.add_argument("--workdir", help="where archives and stores go (default: a temporary folder, removed after)")
    p.add_argument("--out", default=str(RESULTS / "nightly_scale.json"))
    args = p.parse_args()
    from pyspark.sql import SparkSession

    work = Path(args.workdir or tempfile.mkdtemp(prefix="vidspark-nightly-"))
    sources = {"current": REPO}
    if args.baseline_ref:
        base = work / "baseline-src"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base), args.baseline_ref], check=True, capture_output=True)
        sources["baseline"] = base
    results: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(), "sizes": {}, "baseline_ref": args.baseline_ref}
    builder = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").config("spark.sql.session.timeZone", "UTC").config("spark.driver.memory", "4g")
    spark = builder.config("spark.ui.showConsoleProgress", "false").getOrCreate()
    try:
        for n in sorted(args.sizes):
            root = work / f"archive-{n}"
            t0 = time.perf_counter()
            days = build_archive(root, n)
            night_day = days[-1] + timedelta(days=1)
            built = {"archive_s": round(time.perf_counter() - t0, 1)}
            per_source: dict[str, Any] = {}
            for name, src in sources.items():
                for extra in root.glob(f"cam*/{night_day.isoformat()}"):
                    shutil.rmtree(extra)
                store = work / f"out-{n}-{name}"
                shutil.rmtree(store, ignore_errors=True)
                t1 = time.perf_counter()
                stored = build_store(spark, root, store / "features", featurizer_of(src))
                built[f"store_{name}_s"] = round(time.perf_counter() - t1, 1)
                add_night(root, night_day)
                per_source[name] = run_night(src, LAYOUTS[name], root, store, night_day, f"night-{n}-{name}") | {"stored": stored}
                print(f"{name:9s} N={n:>9,d}: {json.dumps(per_source[name])}", flush=True)
            results["sizes"][str(n)] = {"build": built, **per_source}
            shutil.rmtree(root, ignore_errors=True)
    finally:
        spark.stop()
        if args.baseline_ref:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(sources["baseline"])], check=False, capture_output=True)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    if args.train_rows:
        from bench.train_memory import measure

        results["train"] = measure(args.train_rows)
    results["ratios"] = ratios(results["sizes"], list(sources))
    print_table(results, list(sources))
    write_results(results, args.out)


def ratios(sizes: dict[str, Any], names: list[str]) -> dict[str, Any]:
    keys = sorted(sizes, key=int)
    out: dict[str, Any] = {}
    for name in names:
        first = sizes[keys[0]][name]
        out[name] = {
            k: {
                "night": round(sizes[k][name]["night_s"] / first["night_s"], 2),
                "process": round(sizes[k][name]["process_s"] / first["process_s"], 2),
                "py_driver_peak": round(sizes[k][name]["py_driver_peak_mb"] / first["py_driver_peak_mb"], 2),
                "jvm_peak": round(sizes[k][name]["jvm_peak_mb"] / first["jvm_peak_mb"], 2),
            }
            for k in keys
        }
    return out


def print_table(results: dict[str, Any], names: list[str]) -> None:
    print(f"\nnightly_scale on {results['cpu']} ({results['cores']} cores); one night adding {NIGHT_OBJECTS} objects")
    head = f"{'code':9s} {'stored':>9s} {'listed':>7s} {'fetched':>7s} {'list_s':>7s} {'diff_s':>7s} {'night_s':>8s} {'process_s':>9s} {'py_MB':>7s} {'jvm_MB':>7s} {'x night':>7s} {'x py':>5s}"
    print(head)
    for n, per in sorted(results["sizes"].items(), key=lambda kv: int(kv[0])):
        for name in names:
            r, q = per[name], results["ratios"][name][n]
            print(
                f"{name:9s} {r['stored']:>9,d} {r['listed']:>7,d} {r['fetched']:>7,d} {r['list_s']:>7.2f} {r['diff_s']:>7.2f} {r['night_s']:>8.2f} {r['process_s']:>9.1f} "
                f"{r['py_driver_peak_mb']:>7.0f} {r['jvm_peak_mb']:>7.0f} {q['night']:>7.2f} {q['py_driver_peak']:>5.2f}"
            )
    if "train" in results:
        print(f"train: {json.dumps(results['train'])}")


if __name__ == "__main__":
    main()
