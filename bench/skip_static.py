"""``featurizer.skip_static`` on CCTV-like footage: frames skipped, speed-up, and what it changes in the predictions.

Run: ``python bench/skip_static.py [--thresholds 0.02,0.03,0.05] [--criteria] [--heldout-seconds 90,120 ...]``.

Footage: ``bench/static_footage.py`` (real recordings from Debian/PyPI packages, held for long
static stretches with sensor noise and slow drift, broken by bursts of real motion; built once and
reused from ``--footage``). By default a night of CCTV in miniature: 6 held-out videos (2 per
scene) of 90-100 s at 10 fps, about 5,700 frames, ~15% of them in motion bursts; training on
every 5th frame of 9 videos of 20 s (2-fold CV: the model only has to exist). Then, each a
``vidspark`` command in a fresh process (``--conf conf/local.yaml``, ``weights: random``, CPU):

1. ``featurize`` the training videos (every ``--train-every``-th frame, skip_static off), ``train``;
2. ``featurize`` the held-out videos into a fresh features table, once with skip_static off and
   once per threshold, back to back (the headline: these processes, launch to exit);
3. then ``predict`` each of those tables with the model (timed apart), for the comparison.

For each threshold against off: the fraction of frames whose features were reused (the features
table's ``features_from_idx``, and the run record's ``frames_skipped``), how many of those lay in a
motion burst, and effective frames/s (every held-out frame, skipped or not, per second) of the
``featurize`` process from launch to exit (headline), of its job (run record ``duration_s``: the
process less Python and JVM start), of its featurize stage (``timings.featurize_s``) and inside its
tasks (``tasks.task_s``), and per CPU second of its process tree (JVM and Python workers: other
work on the machine stretches wall time, not that); the speed-up of each; the ``predict`` process
time; the max and 99th percentile of |Δ| of per-frame smoothed class probabilities (joined on
camera, video, frame; every frame must be in both) and whether every per-video label is unchanged.
Checks: both runs predicted the same frames; every reused row names an earlier frame of its video
that went through the model, and carries exactly its features. The machine's load and the CPU
seconds other processes took during each command are recorded (this machine is shared).
``--criteria`` also replays, offline, skip_static's rule and others on the held-out thumbnails
(:func:`simulate_criteria`). Prints a table and writes ``bench/results/skip_static.json``.
Target (issue 15): >= 3x effective frames/s, every per-video label unchanged, smoothed
probabilities within 0.02.
"""

from __future__ import annotations

import argparse
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
import pandas as pd
import static_footage
from results_io import RESULTS, write_results

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["camera_id", "video_id", "frame_idx"]


def vidspark(verb: str, args: list[str], *, run_id: str, sets: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run one ``vidspark`` verb in a fresh process: its wall time from launch to exit, the CPU time of its process tree (JVM and Python workers), and the machine's load meanwhile.

    CPU time is what the job cost whatever else shares the machine; wall time is not (other work
    on the same cores stretches it). ``others_cpu_s`` is the CPU time the rest of the machine took
    during the command (all CPUs' busy time from ``/proc/stat`` less the tree's), ``load_mean`` the
    mean of the 1-minute load average sampled meanwhile.
    """
    cmd = [sys.executable, "-m", "vidspark", verb, *args, "--conf", str(ROOT / "conf" / "local.yaml"), "--run-id", run_id, "--log-level", "WARNING"]
    for kv in ["featurizer.weights=random", *sets]:
        cmd += ["--set", kv]
    load0 = os.getloadavg()[0]
    busy0 = machine_busy_s()
    loads = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    cpu = TreeCpu(proc.pid)
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(proc.stderr or []), daemon=True)
    reader.start()
    while proc.poll() is None:
        cpu.sample()
        loads.append(os.getloadavg()[0])
        time.sleep(0.25)
    wall = time.perf_counter() - t0
    busy = machine_busy_s() - busy0
    reader.join(timeout=5)
    if proc.returncode != 0:
        raise RuntimeError(f"vidspark {verb} exited {proc.returncode}:\n{''.join(stderr)[-4000:]}")
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu.total(), 2),
        "others_cpu_s": round(max(0.0, busy - cpu.total()), 1),
        "load_before": round(load0, 2),
        "load_mean": round(float(np.mean(loads)), 2) if loads else round(load0, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def machine_busy_s() -> float:
    """CPU seconds all CPUs of the machine have been busy since boot (``/proc/stat``: everything but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal (guest is inside user)
    return busy / os.sysconf("SC_CLK_TCK")


class TreeCpu:
    """CPU seconds (user + system) of a process and all its descendants (the JVM, Spark's Python workers), sampled from ``/proc``.

    A process's last fraction of a sampling interval before it exits is missed; the JVM and the
    Python workers live until the job ends, so that is little.
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self.seen: dict[tuple[int, int], float] = {}  # (pid, start time) -> CPU seconds last read
        self.tick = os.sysconf("SC_CLK_TCK")

    def sample(self) -> None:
        stats: dict[int, tuple[int, int, float]] = {}  # pid -> (ppid, start time, cpu s)
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:  # exited meanwhile
                continue
            stats[int(entry)] = (int(fields[1]), int(fields[19]), (int(fields[11]) + int(fields[12])) / self.tick)
        tree = {self.root}
        grew = True
        while grew:
            grew = False
            for pid, (ppid, _, _) in stats.items():
                if ppid in tree and pid not in tree:
                    tree.add(pid)
                    grew = True
        for pid in tree & stats.keys():
            _, start, cpu_s = stats[pid]
            self.seen[(pid, start)] = max(self.seen.get((pid, start), 0.0), cpu_s)

    def total(self) -> float:
        return sum(self.seen.values())


def read_table(path: Path, columns: list[str]) -> pd.DataFrame:
    """A partitioned Parquet table (``camera_id=``/``date=`` folders) as pandas, with only ``columns``."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(str(path), format="parquet", partitioning="hive")
    available = set(dataset.schema.names)
    table = dataset.to_table(columns=[c for c in columns if c in available])
    df = table.to_pandas()
    for c in ("camera_id", "date"):
        if c in df and isinstance(df[c].dtype, pd.CategoricalDtype):
            df[c] = df[c].astype(str)
    return df


def prob_matrix(maps: pd.Series, classes: list[str]) -> np.ndarray:
    """A column of class -> probability maps (pyarrow gives lists of pairs) as an (n, classes) array."""
    return np.array([[dict(m)[c] for c in classes] for m in maps], dtype=np.float64)


def in_motion(manifest: dict[str, Any]) -> set[tuple[str, str, int]]:
    """(camera_id, video_id, frame_idx) of every frame inside a motion burst of the held-out videos."""
    out = set()
    for v in manifest["videos"]:
        if v["split"] == "heldout":
            for start, end in v["motion_runs"]:
                out |= {(v["camera_id"], v["video_id"], i) for i in range(start, end)}
    return out


def featurize_heldout(name: str, threshold: float, *, footage: dict[str, Any], work: Path, env: dict[str, str]) -> dict[str, Any]:
    """``vidspark featurize`` of the held-out videos with ``featurizer.skip_static=threshold`` into ``work/name/features``: its process, its run record's counts and timings."""
    out = work / name
    args = ["--input", footage["heldout"], "--output", str(out / "features"), "--layout", footage["layout"]]
    sets = [f"featurizer.skip_static={threshold}"] if threshold > 0 else []
    proc = vidspark("featurize", args, run_id=f"{name}-featurize", sets=sets, env=env)
    record = json.loads((out / "runs" / f"{name}-featurize.json").read_text())
    fs = record["summary"]
    tasks = fs["tasks"]
    n = int(fs["featurized"])
    stage_s = float(fs["timings"]["featurize_s"])
    job_s = float(record["duration_s"])
    return {
        "threshold": threshold,
        "frames": n,
        "model_frames": int(tasks.get("frames", 0)),
        "frames_skipped_record": int(tasks.get("frames_skipped", 0)),
        "errors": fs["error_count"],
        "process": proc,
        "process_s": proc["wall_s"],
        "job_s": round(job_s, 2),
        "stage_s": round(stage_s, 2),
        "task_s": round(float(tasks.get("task_s", 0.0)), 2),
        "model_s": round(float(tasks.get("model_s", 0.0)), 2),
        "cpu_s": proc["cpu_s"],
        "timings": fs["timings"],
        "tasks": tasks,
        "fps_process": round(n / proc["wall_s"], 2),
        "fps_job": round(n / job_s, 2),
        "fps_stage": round(n / stage_s, 2),
        "fps_tasks": round(n / tasks["task_s"], 2) if tasks.get("task_s") else None,
        "frames_per_cpu_s": round(n / proc["cpu_s"], 2) if proc["cpu_s"] else None,
    }


def predict_heldout(name: str, *, model: Path, work: Path, env: dict[str, str], window: int | None) -> dict[str, Any]:
    """``vidspark predict`` of ``work/name/features`` into ``work/name/predictions``: its process and run record timings, and the predictions tables."""
    out = work / name / "predictions"
    args = ["--features", str(work / name / "features"), "--model", str(model), "--output", str(out)]
    if window is not None:
        args += ["--window", str(window)]
    proc = vidspark("predict", args, run_id=f"{name}-predict", sets=[], env=env)
    record = json.loads((out / "runs" / f"{name}-predict.json").read_text())
    frames = read_table(out / "frames", [*KEYS, "probabilities", "smoothed_probabilities", "smoothed_label", "smoothed_prob"])
    videos = read_table(out / "videos", ["camera_id", "video_id", "label", "prob", "n_frames"])
    return {
        "process": proc,
        "process_s": proc["wall_s"],
        "job_s": record["duration_s"],
        "timings": record["summary"].get("timings", {}),
        "mean_smoothed_prob": round(float(frames["smoothed_prob"].mean()), 4),
        "_frames": frames,
        "_videos": videos,
    }


def read_features(name: str, work: Path) -> pd.DataFrame:
    """The features table of run ``name`` (keys, ``features_from_idx``, features)."""
    features = read_table(work / name / "features", [*KEYS, "features_from_idx", "features"])
    if "features_from_idx" not in features:
        features["features_from_idx"] = pd.NA
    return features


def same_video_spread(features: pd.DataFrame, pairs: int = 2000) -> float:
    """The scale of feature changes: median relative L2 distance between two random frames of one video (seeded)."""
    rng = np.random.default_rng(0)
    rel = []
    for _, group in features.groupby(["camera_id", "video_id"]):
        x = np.stack(group["features"].to_numpy())
        i, j = rng.integers(len(x), size=(2, pairs // max(1, features["video_id"].nunique())))
        rel.extend(np.linalg.norm(x[i] - x[j], axis=1) / np.maximum(np.linalg.norm(x[j], axis=1), 1e-12))
    return round(float(np.median(rel)), 5) if rel else float("nan")


def reference_problems(features: pd.DataFrame) -> dict[str, int]:
    """Checks of ``features_from_idx``: it names an earlier frame of the same video that went through the model, and the row carries exactly that frame's features."""
    model_rows = features[features["features_from_idx"].isna()].set_index(["camera_id", "video_id", "frame_idx"])["features"]
    reused = features[features["features_from_idx"].notna()]
    not_earlier = int((reused["features_from_idx"].astype(int) >= reused["frame_idx"].astype(int)).sum())
    missing = different = 0
    for camera, video, src, vec in zip(reused["camera_id"], reused["video_id"], reused["features_from_idx"].astype(int), reused["features"], strict=True):
        ref = model_rows.get((camera, video, src))
        if ref is None:
            missing += 1
        elif not np.array_equal(np.asarray(ref), np.asarray(vec)):
            different += 1
    return {"reference_not_earlier": not_earlier, "reference_not_a_model_frame": missing, "features_differ_from_reference": different}


def reused_feature_error(base: pd.DataFrame, run: pd.DataFrame, motion: set[tuple[str, str, int]]) -> dict[str, Any]:
    """For the frames that reused features: relative L2 distance to the features the model gives them (the run with skip off), static and in-motion frames apart."""
    on = run[run["features_from_idx"].notna()]
    joined = on.merge(base, on=KEYS, suffixes=("_on", "_off"))
    if joined.empty:
        return {}
    a, b = np.stack(joined["features_on"].to_numpy()), np.stack(joined["features_off"].to_numpy())
    rel = np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-12)
    moving = np.array([k in motion for k in zip(joined["camera_id"], joined["video_id"], joined["frame_idx"].astype(int), strict=True)], dtype=bool)
    out = {}
    for name, mask in (("all", np.ones_like(moving)), ("static", ~moving), ("motion", moving)):
        if mask.any():
            out[name] = {"frames": int(mask.sum()), "p50": round(float(np.median(rel[mask])), 5), "p99": round(float(np.percentile(rel[mask], 99)), 5), "max": round(float(rel[mask].max()), 5)}
    return out


def compare(base: dict[str, Any], run: dict[str, Any], classes: list[str], motion: set[tuple[str, str, int]]) -> dict[str, Any]:
    """What a skip_static run changed against the run with it off: same frames, |Δ| of probabilities, labels, speed-ups."""
    a, b = base["_frames"], run["_frames"]
    joined = a.merge(b, on=KEYS, how="outer", suffixes=("_off", "_on"), indicator=True)
    only = joined["_merge"].value_counts().to_dict()
    if only.get("left_only", 0) or only.get("right_only", 0):
        raise RuntimeError(f"threshold {run['threshold']}: the runs predicted different frames ({only}); the comparison needs the same frames")
    diff_smooth = np.abs(prob_matrix(joined["smoothed_probabilities_on"], classes) - prob_matrix(joined["smoothed_probabilities_off"], classes)).max(axis=1)
    diff_raw = np.abs(prob_matrix(joined["probabilities_on"], classes) - prob_matrix(joined["probabilities_off"], classes)).max(axis=1)
    va = base["_videos"].merge(run["_videos"], on=["camera_id", "video_id"], how="outer", suffixes=("_off", "_on"), indicator=True)
    if (va["_merge"] != "both").any():
        raise RuntimeError(f"threshold {run['threshold']}: the runs have different videos")
    changed = va[va["label_off"] != va["label_on"]]
    feats = run["_features"]
    skipped = feats[feats["features_from_idx"].notna()]
    skipped_keys = set(zip(skipped["camera_id"], skipped["video_id"], skipped["frame_idx"].astype(int), strict=True))
    feature_cost = reused_feature_error(base["_features"], feats, motion)
    per_camera = {}
    for camera, group in feats.groupby("camera_id"):
        keys = set(zip(group["camera_id"], group["video_id"], group["frame_idx"].astype(int), strict=True))
        in_burst = keys & motion
        skipped_here = keys & skipped_keys
        per_camera[camera] = {"frames": len(keys), "skipped": len(skipped_here), "motion_frames": len(in_burst), "motion_skipped": len(skipped_here & in_burst)}
    worst = joined.assign(d=diff_smooth).sort_values("d", ascending=False).head(1)
    if run["frames"] != base["frames"] or len(feats) != run["frames"]:
        raise RuntimeError(f"threshold {run['threshold']}: {run['frames']} frames featurized ({len(feats)} rows) against {base['frames']} with skip off")
    return {
        "skipped_fraction": round(len(skipped) / run["frames"], 4),
        "skipped_record_matches_table": run["frames_skipped_record"] == len(skipped),
        "motion_frames": len(motion),
        "motion_frames_skipped": len(skipped_keys & motion),
        "static_frames_featurized": (run["frames"] - len(motion)) - (len(skipped_keys) - len(skipped_keys & motion)),
        "speedup_process": round(run["fps_process"] / base["fps_process"], 3),
        "speedup_job": round(run["fps_job"] / base["fps_job"], 3),
        "speedup_stage": round(run["fps_stage"] / base["fps_stage"], 3),
        "speedup_in_tasks": round(base["task_s"] / run["task_s"], 3) if run["task_s"] else None,
        "speedup_cpu": round(base["cpu_s"] / run["cpu_s"], 3) if run["cpu_s"] else None,
        "predict_process_s": run["predict"]["process_s"],
        "smoothed_abs_diff_max": round(float(diff_smooth.max()), 5),
        "smoothed_abs_diff_p99": round(float(np.percentile(diff_smooth, 99)), 5),
        "smoothed_label_changed_frames": int((joined["smoothed_label_off"] != joined["smoothed_label_on"]).sum()),
        "raw_abs_diff_max": round(float(diff_raw.max()), 5),
        "raw_abs_diff_p99": round(float(np.percentile(diff_raw, 99)), 5),
        "per_camera": per_camera,
        "reused_features_rel_l2": feature_cost,
        "reference_problems": reference_problems(feats),
        "worst_frame": {k: (int(v) if k == "frame_idx" else v) for k, v in worst[KEYS].iloc[0].items()} if len(worst) else None,
        "videos": len(va),
        "video_labels_unchanged": bool(changed.empty),
        "video_labels_changed": changed[["camera_id", "video_id", "label_off", "label_on"]].to_dict("records"),
        "video_prob_abs_diff_max": round(float((va["prob_on"] - va["prob_off"]).abs().max()), 5),
    }


def simulate_criteria(footage: dict[str, Any], thresholds: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Offline, no model: frames skipped and motion frames skipped under skip_static's rule and under others.

    Decodes the held-out videos as vidspark does (224x224 RGB, bilinear), takes vidspark's
    thumbnails, and replays "skip while the difference to the last kept frame is under the
    threshold" with statistics of the 28x28x3 per-cell absolute difference: its maximum over cells
    and colours (``max_cell``, :func:`vidspark.frames.static_difference`, what skip_static does),
    the 99th percentile of the colour-averaged cells (``cell_p99``), and the whole-frame mean
    (``mean``, the rule skip_static had before).
    """
    import av

    from vidspark.frames import static_difference, thumbnail

    stats = {"max_cell": static_difference, "cell_p99": lambda a, b: float(np.percentile(np.abs(a - b).mean(axis=2), 99)), "mean": lambda a, b: float(np.abs(a - b).mean())}
    videos = []
    for v in footage["videos"]:
        if v["split"] != "heldout":
            continue
        with av.open(str(Path(footage["heldout"]).parent / v["key"])) as container:
            thumbs = [thumbnail(f.to_ndarray(width=224, height=224, format="rgb24", interpolation="BILINEAR")) for f in container.decode(video=0)]
        moving = np.zeros(len(thumbs), dtype=bool)
        for start, end in v["motion_runs"]:
            moving[start:end] = True
        videos.append((thumbs, moving))
    rows = []
    for name, values in thresholds.items():
        for t in values:
            frames = skipped = motion = motion_skipped = 0
            for thumbs, moving in videos:
                ref = None
                for x, m in zip(thumbs, moving, strict=True):
                    if ref is not None and stats[name](x, ref) < t:
                        skipped += 1
                        motion_skipped += int(m)
                    else:
                        ref = x
                frames += len(thumbs)
                motion += int(moving.sum())
            rows.append({"rule": name, "threshold": t, "skipped_fraction": round(skipped / frames, 4), "motion_frames_skipped": motion_skipped, "motion_frames": motion})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--thresholds", default="0.03", help="skip_static values to compare with off, comma-separated (e.g. 0.02,0.03,0.05)")
    parser.add_argument("--footage", default=os.path.join(tempfile.gettempdir(), "vidspark-bench", "static-footage"), help="where the footage is built (reused when its parameters match)")
    parser.add_argument("--workdir", help="keep the outputs here (default: a temporary folder, removed)")
    parser.add_argument("--train-every", type=int, default=5, help="featurize every N-th frame of the training videos")
    parser.add_argument("--folds", type=int, default=2, help="CV folds of the training (the bench needs a model, not its CV)")
    parser.add_argument("--window", type=int, help="predict window (default conf predict.window, 128)")
    parser.add_argument("--criteria", action="store_true", help="also replay skip rules offline (skip_static's max cell, cell 99th percentile, whole-frame mean) on the held-out footage")
    parser.add_argument("--out", default=str(RESULTS / "skip_static.json"))
    static_footage.add_arguments(parser)
    args = parser.parse_args(argv)
    thresholds = [float(t) for t in args.thresholds.split(",") if t.strip()]
    if not thresholds or any(not 0 < t < 1 for t in thresholds):
        parser.error("--thresholds: one or more values in (0, 1)")
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2", "SPARK_LOCAL_IP": "127.0.0.1"}

    t_start = time.perf_counter()
    load_start = os.getloadavg()
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in load_start)} ({os.cpu_count()} CPUs)")
    params = static_footage.params_from_args(args)
    footage = static_footage.build_footage(Path(args.footage), params)
    build_s = time.perf_counter() - t_start
    motion = in_motion(footage)
    held = footage["totals"]["heldout"]
    lengths = [v["frames"] / params.fps for v in footage["videos"] if v["split"] == "heldout"]
    print(
        f"footage ({'reused' if footage['reused'] else 'built'} in {build_s:.1f} s): held-out {held['videos']} videos of {min(lengths):.0f}-{max(lengths):.0f} s at {params.fps} fps, "
        f"{held['frames']} frames, {held['motion_frames']} in motion bursts ({held['motion_frames'] / held['frames']:.1%}); "
        f"training {footage['totals']['train']['frames']} frames, every {args.train_every}th featurized"
    )
    results: dict[str, Any] = {
        "footage": {"dir": args.footage, "reused": footage["reused"], "build_s": round(build_s, 1), "params": footage["params"], "sources": footage["sources"], "totals": footage["totals"]},
        "settings": {"train_every": args.train_every, "folds": args.folds, "window": args.window, "thresholds": thresholds, "conf": "conf/local.yaml", "sets": ["featurizer.weights=random"]},
        "load_start": [round(v, 2) for v in load_start],
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        train_proc = vidspark(
            "featurize",
            ["--input", footage["train"], "--output", str(work / "train" / "features"), "--layout", footage["layout"]],
            run_id="train-features",
            sets=[f"video.every_n_frames={args.train_every}"],
            env=env,
        )
        train_record = json.loads((work / "train" / "runs" / "train-features.json").read_text())["summary"]
        fit_proc = vidspark("train", ["--features", str(work / "train" / "features"), "--model", str(work / "model"), "--folds", str(args.folds)], run_id="train", sets=[], env=env)
        model_json = json.loads((work / "model" / "model.json").read_text())
        classes = list(model_json["classes"])
        results["train"] = {"frames": train_record["featurized"], "featurize_process": train_proc, "train_process": fit_proc, "classes": classes, "cv": model_json.get("cv", model_json.get("metrics"))}
        print(f"train: {train_record['featurized']} frames featurized in {train_proc['wall_s']:.1f} s, model in {fit_proc['wall_s']:.1f} s ({time.perf_counter() - t0:.1f} s)")

        # The headline: the featurize processes back to back (same machine state as far as one can), then the predicts
        names = {"off": 0.0, **{f"skip-{t:g}": t for t in thresholds}}
        runs: dict[str, dict[str, Any]] = {}
        for name, t in names.items():
            runs[name] = featurize_heldout(name, t, footage=footage, work=work, env=env)
            r = runs[name]
            print(
                f"featurize {name}: {r['frames_skipped_record']} of {r['frames']} frames skipped, process {r['process_s']} s ({r['fps_process']} frames/s), "
                f"job {r['job_s']} s, stage {r['stage_s']} s, CPU {r['cpu_s']} s, load {r['process']['load_mean']}, others' CPU {r['process']['others_cpu_s']} s"
            )
        if runs["off"]["frames"] != held["frames"]:
            raise RuntimeError(f"skip off featurized {runs['off']['frames']} frames, the footage has {held['frames']}")
        for name in names:
            pred = predict_heldout(name, model=work / "model", work=work, env=env, window=args.window)
            runs[name]["predict"] = {k: v for k, v in pred.items() if not k.startswith("_")}
            runs[name]["_frames"], runs[name]["_videos"] = pred["_frames"], pred["_videos"]
            runs[name]["_features"] = read_features(name, work)
            runs[name]["same_video_rel_l2_p50"] = same_video_spread(runs[name]["_features"])
            print(f"predict {name}: process {pred['process_s']} s, job {pred['job_s']} s")
        truth = {(v["camera_id"], v["video_id"]): v["label"] for v in footage["videos"] if v["split"] == "heldout"}
        off_videos = runs["off"]["_videos"]
        results["heldout_video_accuracy_off"] = round(float(np.mean([truth[(c, v)] == lab for c, v, lab in zip(off_videos["camera_id"], off_videos["video_id"], off_videos["label"], strict=True)])), 3)
        results["runs"] = {}
        for name, r in runs.items():
            entry = {k: v for k, v in r.items() if not k.startswith("_")}
            if name != "off":
                c = entry["vs_off"] = compare(runs["off"], r, classes, motion)
                entry["target_met"] = bool(c["speedup_process"] >= 3 and c["video_labels_unchanged"] and c["smoothed_abs_diff_max"] <= 0.02)
            results["runs"][name] = entry
    if args.criteria:
        results["criteria"] = simulate_criteria(footage, {"max_cell": sorted({0.01, 0.02, 0.03, 0.05, *thresholds}), "cell_p99": [0.01, 0.02, 0.04], "mean": [0.005, 0.01]})
    results["load_end"] = [round(v, 2) for v in os.getloadavg()]
    results["bench_s"] = round(time.perf_counter() - t_start, 1)
    procs = [results["train"]["featurize_process"], results["train"]["train_process"], *(p for r in results["runs"].values() for p in (r["process"], r["predict"]["process"]))]
    results["commands_cpu_s"] = round(sum(p["cpu_s"] for p in procs), 1)
    results["others_cpu_s"] = round(sum(p["others_cpu_s"] for p in procs), 1)
    report(results)
    write_results(results, args.out)
    return 0


def report(results: dict[str, Any]) -> None:
    """Print the results table and the details under it."""
    off = results["runs"]["off"]
    f = results["footage"]["totals"]["heldout"]
    print(
        f"held-out footage: {f['videos']} videos, {f['frames']} frames, {f['motion_frames']} in motion bursts ({f['motion_frames'] / f['frames']:.1%}); "
        f"per-video accuracy with skip off {results['heldout_video_accuracy_off']:.0%} (weights: random)"
    )
    print("feat = the vidspark featurize process, launch to exit (headline); job = its run record duration_s; stage = its featurize stage; tasks = inside its tasks")
    print("fps = every held-out frame, skipped or not, per second; x = speed-up against off; CPU s = the featurize process tree's CPU seconds")
    print("load = mean 1-min load average during featurize; others = CPU cores other processes took meanwhile (of 2); pred s = the vidspark predict process afterwards")
    print(
        f"{'skip_static':>11} {'skipped':>7} {'motion sk.':>10} {'feat s':>7} {'fps':>6} {'x':>5} {'job s':>6} {'x':>5} {'stage x':>7} {'tasks x':>7} "
        f"{'CPU s':>6} {'x':>5} {'load':>5} {'others':>6} {'pred s':>6} {'max|Δsm|':>9} {'p99|Δsm|':>9} {'labels same':>11} {'target':>6}"
    )
    for name, r in results["runs"].items():
        c = r.get("vs_off")
        skipped = f"{c['skipped_fraction']:.1%}" if c else "-"
        ms = f"{c['motion_frames_skipped']}/{c['motion_frames']}" if c else "-"
        label = "off" if name == "off" else f"{r['threshold']:g}"
        print(
            f"{label:>11} {skipped:>7} {ms:>10} {r['process_s']:7.1f} {r['fps_process']:6.1f} {(c['speedup_process'] if c else 1):5.2f} "
            f"{r['job_s']:6.1f} {(c['speedup_job'] if c else 1):5.2f} {(c['speedup_stage'] if c else 1):7.2f} {(c['speedup_in_tasks'] if c else 1):7.2f} "
            f"{r['cpu_s']:6.1f} {(c['speedup_cpu'] if c else 1):5.2f} {r['process']['load_mean']:5.1f} {r['process']['others_cpu_s'] / r['process_s']:6.2f} {r['predict']['process_s']:6.1f} "
            f"{(c['smoothed_abs_diff_max'] if c else 0):9.4f} {(c['smoothed_abs_diff_p99'] if c else 0):9.4f} "
            f"{('yes' if c['video_labels_unchanged'] else 'NO') if c else '-':>11} {('met' if r['target_met'] else 'NOT') if c else '-':>6}"
        )
    spread, mean_prob = off["same_video_rel_l2_p50"], off["predict"]["mean_smoothed_prob"]
    print(f"features: median relative L2 between two frames of one video {spread:.4f}; mean smoothed probability of the predicted class {mean_prob:.4f}")
    for r in results["runs"].values():
        c = r.get("vs_off")
        if not c:
            continue
        cost = c["reused_features_rel_l2"]
        parts = [f"{k} {v['frames']} frames p50 {v['p50']:.4f} max {v['max']:.4f}" for k, v in cost.items() if k != "all"]
        print(
            f"{r['threshold']:g}: {r['model_frames']} frames through the model; raw |Δprob| max {c['raw_abs_diff_max']:.4f}; reused features vs the model's, relative L2: {'; '.join(parts)}; "
            f"reference checks {c['reference_problems']}; record count matches table {c['skipped_record_matches_table']}; by camera {c['per_camera']}"
        )
    for row in results.get("criteria", []):
        print(f"offline rule {row['rule']:>8} < {row['threshold']:<6g}: {row['skipped_fraction']:.1%} of frames skipped, {row['motion_frames_skipped']}/{row['motion_frames']} motion frames skipped")
    print(f"off: in tasks {off['task_s']:.1f} s (model {off['model_s']:.1f} s), stage {off['stage_s']:.1f} s, job {off['job_s']:.1f} s, process {off['process_s']:.1f} s")
    print(f"load average at start {results['load_start']}, at end {results['load_end']}")
    print(
        f"bench took {results['bench_s']} s (footage {'reused' if results['footage']['reused'] else 'built'} in {results['footage']['build_s']} s); "
        f"its vidspark commands used {results['commands_cpu_s']:.0f} CPU s, other processes {results['others_cpu_s']:.0f} CPU s meanwhile"
    )


if __name__ == "__main__":
    sys.exit(main())
