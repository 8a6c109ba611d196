"""Small jobs against a bare Spark start: what vidspark adds to a job that has little to do, and where it goes.

Run: ``python bench/small_jobs.py [--repeat 3] [--baseline-src DIR]`` (``make bench-small``).

Each figure is one fresh process, timed from its launch to its exit, best of ``--repeat``:

- **baseline**: ``SparkSession.builder.master("local[*]")`` with the settings vidspark gives a
  local session by default (its ``session_settings``: driver memory, log4j2 file, shuffle
  partitions, ...), ``getOrCreate()``, one trivial action (``spark.range(1).count()``), ``stop()``;
- **predict**: ``vidspark predict`` of 64 frames (4 videos of 16 JPEG frames, featurized and a
  LightGBM model trained beforehand, outside the timing, ``featurizer.weights=random``), into a
  fresh output folder; with the built-in defaults (no ``--conf``) and with ``--conf conf/local.yaml``;
- **empty night**: ``vidspark run`` over the same archive into an output where the night before
  already processed all of it: nothing new to featurize or predict.

Each row says its seconds and its seconds over the baseline, and beside them the CPU seconds of the
whole process tree (driver, JVM, Python workers: the benchmark adopts and reaps them), which a busy
shared machine disturbs less than wall time; the machine's load average is recorded. Scenarios run
in rounds whose order rotates. Then one more run of each, with
instruments on (not timed with the others): Spark's event log (every job: where in vidspark it was
called, how long it took), the Python workers' imports (``PYTHONPROFILEIMPORTTIME`` in their
environment, their stderr apart from the driver's), the driver's imports (``-X importtime``), the
session start, and which heavy modules (TensorFlow, LightGBM, pandas, ...) the driver and the
workers imported at all. ``--baseline-src DIR`` runs the same scenarios with the vidspark under
``DIR`` too (for example ``git archive HEAD | tar -x -C DIR``), for a before/after table in one run.
Writes ``bench/results/small_jobs.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.results_io import RESULTS, write_results  # noqa: E402

LAYOUT = "{camera_id}/{video_id}/**"
CAMERAS = ("cam1", "cam2")
VIDEOS_PER_CAMERA = 2
FRAMES_PER_VIDEO = 16  # 2 cameras x 2 videos x 16 frames = 64 frames
RANDOM = ["--set", "featurizer.weights=random"]
LOADS: list[float] = []  # the machine's 1-minute load average as each timed run started (a shared machine: how busy it was)
HEAVY = ("tensorflow", "keras", "lightgbm", "sklearn", "pandas", "pyarrow", "boto3", "botocore", "matplotlib", "mlflow", "PIL", "av", "yaml", "numpy", "pyspark")

_BASELINE = r"""
import json, sys
from pyspark.sql import SparkSession
builder = SparkSession.builder.master("local[*]").appName("baseline")
for key, value in json.loads(sys.argv[1]).items():
    builder = builder.config(key, value)
spark = builder.getOrCreate()
spark.sparkContext.setLogLevel("WARN")
assert spark.range(1).count() == 1
spark.stop()
"""

_SETTINGS = r"""
import json, os, sys
from vidspark.app import session_settings
from vidspark.config import load_conf
print(json.dumps(session_settings("local[*]", load_conf(None, []).spark)))
"""

# The instrumented driver: vidspark's main with timestamps around the session start, its JVM's stderr apart
# (there the Python workers' import lines arrive), and the modules it imported.
_PROBE = r"""
import json, sys, time
marks = {"python_up": time.time()}
out_path, jvm_err = sys.argv[1], sys.argv[2]
import subprocess, pyspark.java_gateway as gw
_popen = gw.Popen
gw.Popen = lambda *a, **k: _popen(*a, **{**k, "stderr": open(jvm_err, "w")})
marks["pyspark_imported"] = time.time()
import vidspark.cli as cli
marks["cli_imported"] = time.time()
_build = cli.build_session
def build_session(*a, **k):
    marks["session_start"] = time.time()
    s = _build(*a, **k)
    marks["session_up"] = time.time()
    return s
cli.build_session = build_session
code = cli.main(sys.argv[3:])
marks["main_done"] = time.time()
mods = sorted({m.split(".")[0] for m in sys.modules})
json.dump({"code": code, "marks": marks, "modules": mods}, open(out_path, "w"))
"""


def _env(src: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(src), "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("SPARK_CONF_DIR", None)
    env.update(extra)
    return env


def vidspark(src: Path, argv: list[str], *, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "vidspark", *argv], capture_output=True, text=True, env=_env(src, **env), cwd=src)
    if check and proc.returncode:
        raise RuntimeError(f"vidspark {' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc


def setup(work: Path) -> dict[str, Path]:
    """The archive, the night before's output (featurized and predicted), a trained model: outside every timing."""
    from vidspark.synthetic import LocalSink, write_camera_archive, write_labeled_set

    labeled, archive, model, night = work / "labeled", work / "archive", work / "model", work / "night"
    paths = {"archive": archive, "model": model, "night": night, "features": night / "features"}
    if (night / "runs" / "night-before.json").is_file():  # --workdir of an earlier run: reused as it is
        return paths
    write_labeled_set(LocalSink(labeled), classes=("car", "person"), per_class=24, seed=3, size=(160, 120))
    write_camera_archive(LocalSink(archive), cameras=CAMERAS, videos_per_camera=VIDEOS_PER_CAMERA, frames_per_video=FRAMES_PER_VIDEO, seed=5, size=(160, 120))
    t0 = time.perf_counter()
    vidspark(REPO, ["featurize", "--input", str(labeled), "--output", str(work / "labeled-features"), *RANDOM])
    vidspark(REPO, ["train", "--features", str(work / "labeled-features"), "--model", str(model), "--folds", "3", "--set", "train.num_boost_round=40", *RANDOM])
    vidspark(REPO, ["run", "--input", str(archive), "--layout", LAYOUT, "--model", str(model), "--output", str(night), "--run-id", "night-before", *RANDOM])
    rec = json.loads((night / "runs" / "night-before.json").read_text())["summary"]
    assert rec["featurize"]["featurized"] == len(CAMERAS) * VIDEOS_PER_CAMERA * FRAMES_PER_VIDEO, rec["featurize"]
    print(f"setup: {rec['featurize']['featurized']} frames featurized and predicted, model trained ({time.perf_counter() - t0:.0f} s)", flush=True)
    return paths


def scenarios(paths: dict[str, Path], work: Path, src: Path) -> dict[str, Any]:
    """name -> a function of a tag giving the argv of that run (fresh output folders where a run writes); ``src``'s own conf/local.yaml."""
    features, model, archive, night = (str(paths[k]) for k in ("features", "model", "archive", "night"))
    return {
        "predict": lambda tag: ["predict", "--features", features, "--model", model, "--output", str(work / f"pred-{tag}")],
        "predict_local_yaml": lambda tag: ["predict", "--features", features, "--model", model, "--output", str(work / f"pred-{tag}"), "--conf", str(src / "conf" / "local.yaml")],
        "empty_night": lambda tag: ["run", "--input", archive, "--layout", LAYOUT, "--model", model, "--output", night, "--run-id", f"empty-{tag}", *RANDOM],
    }


def become_subreaper() -> None:
    """Adopt the orphaned descendants of the runs (Linux): their CPU time then counts in ``RUSAGE_CHILDREN`` once reaped."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def reap(timeout: float = 60.0) -> None:
    """Wait for every adopted descendant (become_subreaper) to exit (at most ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, _, _ = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Seconds from launch to exit of ``cmd`` (its output pipes closed: the JVM it started has exited too), and the CPU seconds of its whole process tree."""
    reap()  # what an earlier command left (setup, the probes): not this one's
    LOADS.append(os.getloadavg()[0])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    wall = time.perf_counter() - t0
    reap()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def measure(sources: dict[str, Path], paths: dict[str, Path], work: Path, repeat: int) -> dict[str, Any]:
    """Best of ``repeat`` fresh processes of every scenario for each vidspark under ``sources``, in rounds.

    A round runs the baseline and each scenario once for every source, in an order that rotates from
    round to round (sources and scenarios alike), so that a slow minute of a shared machine does not
    always hit the same one. Wall seconds are the figures; CPU seconds of the process tree beside them.
    """
    settings = {
        name: subprocess.run([sys.executable, "-c", _SETTINGS], capture_output=True, text=True, env=_env(src), cwd=src, check=True).stdout.strip().splitlines()[-1] for name, src in sources.items()
    }
    walls: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in sources}
    cpus: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in sources}
    names = list(sources)
    for i in range(repeat):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            src = sources[name]
            runs = {"baseline": [sys.executable, "-c", _BASELINE, settings[name]], **{k: [sys.executable, "-m", "vidspark", *argv(f"{name}-{i}")] for k, argv in scenarios(paths, work, src).items()}}
            keys = list(runs)
            for key in keys[i % len(keys) :] + keys[: i % len(keys)]:
                wall, cpu = timed(runs[key], _env(src), src)
                walls[name][key].append(wall)
                cpus[name][key].append(cpu)
            print(f"{name} round {i + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s (CPU {cpus[name][k][-1]:.1f} s)" for k, v in walls[name].items()), flush=True)
    out = {}
    for name, w in walls.items():
        best = {k: min(v) for k, v in w.items()}
        cpu_best = {k: min(v) for k, v in cpus[name].items()}
        out[name] = {
            "session_settings": json.loads(settings[name]),
            "runs_s": {k: [round(x, 2) for x in v] for k, v in w.items()},
            "best_s": {k: round(v, 2) for k, v in best.items()},
            "over_baseline_s": {k: round(v - best["baseline"], 2) for k, v in best.items() if k != "baseline"},
            # each run against the baseline of its own round, the median of those: less sensitive to one slow round
            "paired_over_baseline_median_s": {k: round(statistics.median(x - b for x, b in zip(v, w["baseline"], strict=True)), 2) for k, v in w.items() if k != "baseline"},
            "cpu_runs_s": {k: [round(x, 2) for x in v] for k, v in cpus[name].items()},
            "cpu_best_s": {k: round(v, 2) for k, v in cpu_best.items()},
            "cpu_over_baseline_s": {k: round(v - cpu_best["baseline"], 2) for k, v in cpu_best.items() if k != "baseline"},
        }
    return out


# ------------------------------------------------------------------------------------------------
# The instrumented run: event log, import times, session start.
# ------------------------------------------------------------------------------------------------


def parse_importtime(text: str) -> list[tuple[int, str, float]]:
    """``-X importtime`` lines as (depth, module, cumulative seconds)."""
    out = []
    for line in text.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if m:
            out.append((len(m.group(3)) // 2, m.group(4), int(m.group(2)) / 1e6))
    return out


def import_summary(lines: list[tuple[int, str, float]]) -> dict[str, Any]:
    """Total import time (top-level imports) and per top package, and the heavy packages imported at all."""
    top = [(mod, s) for depth, mod, s in lines if depth == 0]
    by_pkg: dict[str, float] = defaultdict(float)
    for mod, s in top:
        by_pkg[mod.split(".")[0]] += s
    # a package is imported when one of its modules is, or its own line took time (a blocked import, sys.modules[name] = None, leaves a line of a few µs)
    seen = {mod.split(".")[0] for _, mod, s in lines if "." in mod or s > 1e-4}
    return {
        "total_s": round(sum(s for _, s in top), 3),
        "by_package_s": {k: round(v, 3) for k, v in sorted(by_pkg.items(), key=lambda kv: -kv[1])[:12]},
        "heavy_imported": sorted(m for m in HEAVY if m in seen),
    }


def parse_event_log(folder: Path) -> dict[str, Any]:
    """Spark's event log of one application: each job's call site and time, tasks, from application start."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".") and not p.name.startswith("appstatus"))
    if not files:
        return {}
    events = [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]
    start = next((e["Timestamp"] for e in events if e["Event"] == "SparkListenerApplicationStart"), None)
    end = next((e["Timestamp"] for e in events if e["Event"] == "SparkListenerApplicationEnd"), None)
    jobs: dict[int, dict[str, Any]] = {}
    stage_tasks: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if e["Event"] == "SparkListenerJobStart":
            props = e.get("Properties") or {}
            site = props.get("callSite.short") or (e["Stage Infos"][-1]["Stage Name"] if e.get("Stage Infos") else "?")
            jobs[e["Job ID"]] = {"job": e["Job ID"], "call_site": _short_site(site), "start": e["Submission Time"], "stages": e["Stage IDs"], "group": props.get("spark.jobGroup.id")}
        elif e["Event"] == "SparkListenerJobEnd" and e["Job ID"] in jobs:
            jobs[e["Job ID"]]["end"] = e["Completion Time"]
        elif e["Event"] == "SparkListenerTaskEnd":
            info = e["Task Info"]
            stage_tasks[e["Stage ID"]].append({"launch": info["Launch Time"], "finish": info["Finish Time"]})
    out = []
    for j in sorted(jobs.values(), key=lambda j: j["start"]):
        tasks = [t for s in j["stages"] for t in stage_tasks.get(s, [])]
        out.append(
            {
                "job": j["job"],
                "call_site": j["call_site"],
                "at_s": round((j["start"] - start) / 1000, 2) if start else None,
                "took_s": round((j.get("end", j["start"]) - j["start"]) / 1000, 2),
                "tasks": len(tasks),
                "longest_task_s": round(max((t["finish"] - t["launch"] for t in tasks), default=0) / 1000, 2),
                "group": j["group"],
            }
        )
    return {"app_start": start, "app_end": end, "jobs": out, "jobs_s": round(sum(j["took_s"] for j in out), 2)}


def _short_site(site: str) -> str:
    """``collect at /x/vidspark/feature_store.py:123`` -> ``collect at feature_store.py:123``."""
    return re.sub(r"(?:/[^\s/]+)*/([^\s/]+\.py:\d+)", r"\1", site)


def instrumented(src: Path, argv: list[str], work: Path, tag: str) -> dict[str, Any]:
    """One run of ``vidspark argv`` with its event log, worker and driver import times and session start."""
    d = work / f"probe-{tag}"
    shutil.rmtree(d, ignore_errors=True)
    (d / "conf").mkdir(parents=True)
    (d / "events").mkdir()
    probes = {
        "spark.eventLog.enabled": "true",
        "spark.eventLog.dir": (d / "events").as_uri(),
        "spark.eventLog.compress": "false",
        "spark.eventLog.rolling.enabled": "false",
        "spark.executorEnv.PYTHONPROFILEIMPORTTIME": "1",  # the Python workers' imports, on the JVM's stderr
    }
    (d / "conf" / "spark-defaults.conf").write_text("".join(f"{k} {v}\n" for k, v in probes.items()))
    env = _env(src, SPARK_CONF_DIR=str(d / "conf"))
    launched = time.time()
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", _PROBE, str(d / "driver.json"), str(d / "jvm.err"), *argv], capture_output=True, text=True, env=env, cwd=src)
    exited = time.time()
    if proc.returncode:
        raise RuntimeError(f"probe {tag} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    driver = json.loads((d / "driver.json").read_text())
    m = {k: v - launched for k, v in driver["marks"].items()}
    log = parse_event_log(d / "events")
    driver_imports = import_summary(parse_importtime(proc.stderr))
    worker_lines = parse_importtime((d / "jvm.err").read_text())
    workers = import_summary(worker_lines)
    record = _run_record(argv)
    t = {
        "wall_s": round(exited - launched, 2),
        "python_start_s": round(m["python_up"], 2),
        "driver_imports_before_session_s": round(m["cli_imported"] - m["python_up"], 2),
        "before_session_s": round(m["session_start"], 2),
        "session_start_s": round(m["session_up"] - m["session_start"], 2),
        "after_session_to_main_done_s": round(m["main_done"] - m["session_up"], 2),
        "main_done_to_exit_s": round(exited - launched - m["main_done"], 2),
    }
    jobs = log.get("jobs", [])
    if jobs and log.get("app_start"):
        first, last = jobs[0], jobs[-1]
        t["session_up_to_first_job_s"] = round(first["at_s"] - (m["session_up"] - (log["app_start"] / 1000 - launched)), 2)
        t["spark_jobs"] = len(jobs)
        t["spark_jobs_s"] = log["jobs_s"]
        t["first_job_to_last_job_end_s"] = round(last["at_s"] + last["took_s"] - first["at_s"], 2)
    return {
        "timeline": t,
        "jobs": jobs,
        "driver_imports": driver_imports,
        "driver_modules_heavy": [h for h in HEAVY if h in driver["modules"]],
        "worker_imports": workers,
        "tensorflow_in_driver": "tensorflow" in driver["modules"],
        "tensorflow_in_workers": "tensorflow" in workers["heavy_imported"],
        "run_record_timings": record,
    }


def _run_record(argv: list[str]) -> dict[str, Any] | None:
    """The summary timings of the run record the probe wrote (run: ``OUT/runs``; predict: ``OUT/runs``)."""
    out = Path(argv[argv.index("--output") + 1])
    runs = sorted((out / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime) if (out / "runs").is_dir() else []
    if not runs:
        return None
    rec = json.loads(runs[-1].read_text())
    s = rec.get("summary") or {}
    return {"duration_s": rec.get("duration_s"), "featurize": (s.get("featurize") or {}).get("timings"), "predict": (s.get("predict") or s).get("timings")}


def breakdown(src: Path, name: str, paths: dict[str, Path], work: Path) -> dict[str, Any]:
    runs = scenarios(paths, work, src)
    return {key: instrumented(src, argv(f"{name}-probe"), work, f"{name}-{key}") for key, argv in runs.items()}


def print_table(results: dict[str, Any]) -> None:
    print(f"\nsmall_jobs on {results['cpu']} ({results['cores']} cores), best of {results['repeat']}: wall seconds (over the baseline) | CPU seconds of the process tree (over)")
    if "load_average_1min" in results:
        print(f"load average (1 min) as the timed runs started: {results['load_average_1min']}")
    names = list(results["code"])
    print(f"{'scenario':22s}" + "".join(f"{n:>36s}" for n in names))
    for key in ("baseline", "predict", "predict_local_yaml", "empty_night") if all("best_s" in results["code"][n] for n in names) else ():
        cells = []
        for n in names:
            r = results["code"][n]
            over = r["over_baseline_s"].get(key)
            cpu_over = r["cpu_over_baseline_s"].get(key)
            cells.append(f"{r['best_s'][key]:.1f}" + (f" ({over:+.1f})" if over is not None else "") + f" | CPU {r['cpu_best_s'][key]:.1f}" + (f" ({cpu_over:+.1f})" if cpu_over is not None else ""))
        print(f"{key:22s}" + "".join(f"{c:>36s}" for c in cells))
    for n in names:
        for key, b in (results["code"][n].get("breakdown") or {}).items():
            print(f"\n[{n}] {key}: {json.dumps(b['timeline'])}")
            print(f"  driver imports {b['driver_imports']['total_s']} s {b['driver_imports']['by_package_s']}; heavy in driver: {b['driver_modules_heavy']}")
            print(f"  worker imports {b['worker_imports']['total_s']} s {b['worker_imports']['by_package_s']}; TF in driver {b['tensorflow_in_driver']}, in workers {b['tensorflow_in_workers']}")
            for j in b["jobs"]:
                print(f"  job {j['job']:>2} at {j['at_s']:>6.2f} s took {j['took_s']:>5.2f} s, {j['tasks']:>3} tasks: {j['call_site']}")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3, help="timed runs of each scenario; the best counts (default 3)")
    p.add_argument("--baseline-src", help="also measure the vidspark under this folder (a copy of an earlier commit), same run")
    p.add_argument("--no-breakdown", action="store_true", help="skip the instrumented runs")
    p.add_argument("--workdir", help="where the archive and outputs go (default: a temporary folder, removed after)")
    p.add_argument("--out", default=str(RESULTS / "small_jobs.json"))
    args = p.parse_args()
    become_subreaper()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vidspark-small-"))
    sources = {"current": REPO}
    if args.baseline_src:
        sources = {"before": Path(args.baseline_src).resolve(), **sources}
    results: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count(), "repeat": args.repeat, "frames": len(CAMERAS) * VIDEOS_PER_CAMERA * FRAMES_PER_VIDEO, "code": {}}
    try:
        paths = setup(work)
        results["code"] = measure(sources, paths, work, args.repeat) if args.repeat else {name: {} for name in sources}
        if not args.no_breakdown:
            for name, src in sources.items():
                results["code"][name]["breakdown"] = breakdown(src, name, paths, work)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    if LOADS:
        results["load_average_1min"] = {"min": round(min(LOADS), 2), "median": round(statistics.median(LOADS), 2), "max": round(max(LOADS), 2)}
    print_table(results)
    write_results(results, args.out)


if __name__ == "__main__":
    main()
