"""Entry-point support shared by the CLI and ``jobs/*.py``: logging, Java check, Spark session, run records.

This is the only module that builds a SparkSession; library transforms take a DataFrame.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vidspark.errors import EnvironmentProblem

logger = logging.getLogger(__name__)

MIN_JAVA = 17


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("py4j", "botocore", "urllib3", "matplotlib", "h5py", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def under_spark_submit() -> bool:
    """True when this driver was started by spark-submit (which owns master and Java)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def java_major(java: str) -> int | None:
    """Major version of a ``java`` executable, or None when it does not run."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def check_java() -> None:
    """Refuse to start without Java 17+, saying what to install.

    Raises
    ------
    EnvironmentProblem
        If no ``java`` is found or it is older than 17.
    """
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    if not java or not os.path.exists(java):
        raise EnvironmentProblem(f"Java not found: PySpark needs Java {MIN_JAVA} or newer; install it (Debian/Ubuntu: apt-get install openjdk-17-jre-headless) or set JAVA_HOME")
    major = java_major(java)
    if major is None or major < MIN_JAVA:
        raise EnvironmentProblem(f"{java} is Java {major or 'unknown'}; PySpark needs Java {MIN_JAVA} or newer: install openjdk-17 and set JAVA_HOME")


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (containers).

    The JVM counts the same way for ``local[*]``, so the two agree inside a CPU-limited container.
    """
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def local_task_cpus(master: str) -> int | None:
    """``spark.task.cpus`` for a ``local[N]`` master: tasks of up to 4 cores that divide N evenly.

    A featurize task runs one TensorFlow thread pool of ``spark.task.cpus`` threads and builds the
    model once per Python worker. One task per core would start N workers (N model builds, N × 1.4
    GB) that each see one core; one task of all cores scales TensorFlow poorly past a few threads.
    Up to 4 is the middle (2 cores: one task of 2; 16 cores: four of 4; 6 cores: two of 3), and a
    divisor of N leaves no core idle.
    """
    m = re.fullmatch(r"local\[(\*|\d+)(?:,\s*\d+)?\]|local", master.strip())
    if not m:
        return None
    if m.group(1) is None:  # plain "local": one core
        return 1
    n = available_cpus() if m.group(1) == "*" else int(m.group(1))
    return next(d for d in (4, 3, 2, 1) if d <= n and n % d == 0)


def build_session(app_name: str, *, master: str | None, spark_conf: Mapping[str, Any]) -> Any:
    """Build (or get) the SparkSession for a job.

    ``master`` wins when given; otherwise spark-submit's master is kept, and a plain ``python``
    start gets ``local[*]``. Spark settings come from the conf's ``spark`` section.
    """
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if master or not under_spark_submit():
        master = master or "local[*]"
        builder = builder.master(master)
        if master.startswith("local"):
            # Local workers must run this interpreter (the venv), not whatever python3 is on PATH.
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
            cpus = local_task_cpus(master)
            if cpus and "spark.task.cpus" not in spark_conf:
                builder = builder.config("spark.task.cpus", str(cpus))
    for key, value in spark_conf.items():
        builder = builder.config(key, str(value).lower() if isinstance(value, bool) else str(value))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def new_run_id(job: str) -> str:
    return f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-{job}-{uuid.uuid4().hex[:6]}"
