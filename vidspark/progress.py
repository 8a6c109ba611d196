"""Progress lines on long work: a driver thread that logs every ``job.progress_seconds``.

Counts come from what the driver already has: the featurize tasks' accumulator (frames, errors and
tasks, added when each task ends) and Spark's status tracker (tasks done in the job group of the
stage, for work such as predict that has no accumulator). A line says frames done of the total
(exact for stills, extrapolated from the work units done when videos are in the work), frames/s
since the stage started, errors so far and an ETA from the fraction of work units done.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

logger = logging.getLogger("vidspark.progress")


def eta_text(seconds: float | None) -> str:
    """``1h02m``, ``4m05s``, ``12s``, or ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def progress_line(label: str, *, frames: float | None, units_done: float, units_total: int, errors: float | None, elapsed: float, frames_total: int | None = None) -> str:
    """One progress line; ``frames_total`` None: estimated from the units done so far; ``frames`` None: tasks only."""
    fraction = min(1.0, units_done / units_total) if units_total else 0.0
    eta = elapsed * (1 - fraction) / fraction if fraction > 0 else None
    tasks = f"{int(units_done)}/{units_total} tasks ({100 * fraction:.1f} %)"
    if frames is None:
        return f"{label}: {tasks}, ETA {eta_text(eta)}"
    rate = frames / elapsed if elapsed > 0 else 0.0
    if frames_total is not None:
        total = f"{frames_total}"
    elif units_done > 0 and units_total:
        total = f"~{round(frames / fraction)}"
    else:
        total = "?"
    return f"{label}: {int(frames)}/{total} frames, {tasks}, {rate:.1f} frames/s, {int(errors or 0)} errors, ETA {eta_text(eta)}"


class Progress:
    """Log a progress line every ``every`` seconds while the block runs (a context manager; 0 = silent).

    ``counts`` returns the current ``frames``, ``errors``, ``tasks`` (done) and optionally ``tasks_total``; it is called from the
    progress thread, so it must only read driver-side state (an accumulator's value, the status tracker).
    """

    def __init__(self, label: str, *, every: float, counts: Callable[[], Mapping[str, float]], units_total: int = 0, frames_total: int | None = None) -> None:
        self.label, self.every, self.units_total, self.counts, self.frames_total = label, every, units_total, counts, frames_total
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.lines = 0

    def line(self) -> str:
        c = self.counts()
        return progress_line(
            self.label,
            frames=float(c["frames"]) if "frames" in c else (0.0 if self.frames_total is not None else None),
            units_done=float(c.get("tasks", 0.0)),
            units_total=int(c.get("tasks_total", self.units_total)),
            errors=float(c.get("errors", 0.0)),
            elapsed=time.monotonic() - self.t0,
            frames_total=self.frames_total,
        )

    def _loop(self) -> None:
        while not self.stop.wait(self.every):
            try:
                logger.info("%s", self.line())
                self.lines += 1
            except Exception as exc:  # a status read that fails must never fail the job
                logger.debug("progress: %s", exc)

    def __enter__(self) -> Progress:
        self.t0 = time.monotonic()
        if self.every > 0:
            self.thread = threading.Thread(target=self._loop, name=f"vidspark-progress-{self.label}", daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=5)


def group_task_counts(spark: Any, group: str) -> dict[str, float]:
    """Tasks done and in total over the started stages of a Spark job group's jobs, from the status tracker.

    The tracker does not say which stages were skipped (their output reused), so only stages that
    ran a task count: the total grows as stages start, and the ETA is of the work started so far.
    """
    tracker = spark.sparkContext.statusTracker()
    done = total = 0
    for job_id in tracker.getJobIdsForGroup(group):
        job = tracker.getJobInfo(job_id)
        for stage_id in job.stageIds if job else ():
            info = tracker.getStageInfo(stage_id)
            if info is not None and (info.numActiveTasks or info.numCompletedTasks or info.numFailedTasks):  # started: a skipped stage never runs a task
                done += info.numCompletedTasks
                total += info.numTasks
    return {"tasks": float(done), "tasks_total": float(total)}


class job_group:
    """Run the block's Spark jobs in a job group (for :func:`group_task_counts`), then restore the thread's previous group."""

    def __init__(self, spark: Any, group: str, description: str) -> None:
        self.sc, self.group, self.description = spark.sparkContext, group, description

    def __enter__(self) -> str:
        self.previous = self.sc.getLocalProperty("spark.jobGroup.id")
        self.sc.setJobGroup(self.group, self.description)
        return self.group

    def __exit__(self, *exc: object) -> None:
        self.sc.setLocalProperty("spark.jobGroup.id", self.previous)
        self.sc.setLocalProperty("spark.job.description", None)
