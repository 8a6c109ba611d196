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


# Spark settings every session gets unless the conf's spark: section, spark-submit or spark-defaults.conf sets them.
SPARK_DEFAULTS: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}
# And on a local master (the embedded run): conf/local.yaml's spark: section lists exactly these. No web UI there:
# starting it costs every local job 1-2 s of CPU, and vidspark logs its own progress (set it to true to have it).
LOCAL_SPARK_DEFAULTS: dict[str, str] = {
    "spark.sql.shuffle.partitions": "8",
    "spark.sql.execution.arrow.maxRecordsPerBatch": "256",
    "spark.driver.memory": "4g",
    "spark.ui.enabled": "false",
}
LOG4J2_FILE = Path(__file__).with_name("log4j2.properties")
_LOG4J_NAMES = ("log4j2.properties", "log4j2.xml", "log4j2.yaml", "log4j2.yml", "log4j2.json", "log4j2-test.properties")


def configure_logging(level: str = "INFO", *, framework_logs: bool = False) -> None:
    """Python logging to stderr at ``level``; TensorFlow/absl/CUDA start-up notices off unless ``framework_logs``.

    The switch travels in ``VIDSPARK_FRAMEWORK_LOGS``, which local Python workers inherit and
    :func:`build_session` hands to cluster executors.
    """
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("py4j", "botocore", "urllib3", "matplotlib", "h5py", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if framework_logs:
        os.environ["VIDSPARK_FRAMEWORK_LOGS"] = "1"
    else:
        os.environ.pop("VIDSPARK_FRAMEWORK_LOGS", None)


def user_log4j_config(spark_conf: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> str | None:
    """The user's own log4j2 configuration, if they have one (vidspark then leaves Spark's logging alone).

    Found in ``-Dlog4j2.configurationFile`` of ``spark.driver.extraJavaOptions`` (conf or
    ``SPARK_SUBMIT_OPTS``), or as a log4j2 file in ``$SPARK_CONF_DIR`` (else ``$SPARK_HOME/conf``).
    """
    env = os.environ if environ is None else environ
    for text in (str(spark_conf.get("spark.driver.extraJavaOptions", "")), env.get("SPARK_SUBMIT_OPTS", ""), env.get("JAVA_TOOL_OPTIONS", "")):
        m = re.search(r"-Dlog4j2?\.configurationFile=(\S+)", text)
        if m and m.group(1) != LOG4J2_FILE.as_uri():  # vidspark's own file is not the user's
            return m.group(1)
    conf_dir = env.get("SPARK_CONF_DIR") or (os.path.join(env["SPARK_HOME"], "conf") if env.get("SPARK_HOME") else None)
    if conf_dir:
        for name in _LOG4J_NAMES:
            if os.path.isfile(os.path.join(conf_dir, name)):
                return os.path.join(conf_dir, name)
    return None


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


def release_major(java: str) -> int | None:
    """Major version from the ``release`` file of the JDK or JRE ``java`` belongs to (no JVM started), or None without one."""
    try:
        text = (Path(os.path.realpath(java)).parent.parent / "release").read_text(errors="replace")
    except OSError:
        return None
    m = re.search(r'^JAVA_VERSION="(\d+)(?:\.(\d+))?', text, re.MULTILINE)
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
    major = release_major(java) or java_major(java)  # the release file when there is one: starting a JVM only to ask costs 0.1-0.5 s
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

    submitted = under_spark_submit()
    if master or not submitted:
        master = master or "local[*]"
        if master.startswith("local"):
            # Local workers must run this interpreter (the venv), not whatever python3 is on PATH.
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    given = _submitted_settings() if submitted else {}
    # under spark-submit the master is spark-submit's: local defaults apply to a local one there too
    settings = session_settings(master or given.get("spark.master"), spark_conf, given=set(given), submitted=submitted)
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    effective = spark.sparkContext.getConf()
    jvm_property = spark.sparkContext._jvm.java.lang.System.getProperty  # type: ignore[union-attr]
    own_log4j = user_log4j_config({"spark.driver.extraJavaOptions": effective.get("spark.driver.extraJavaOptions", "")}) or next(
        (str(v) for v in (jvm_property("log4j2.configurationFile"), jvm_property("log4j.configurationFile")) if v and str(v) != LOG4J2_FILE.as_uri()), None
    )
    if own_log4j is None:
        spark.sparkContext.setLogLevel("WARN")
    else:
        logger.info("Spark logging: your log4j2 configuration %s", own_log4j)
    return spark


def session_settings(
    master: str | None, spark_conf: Mapping[str, Any], *, given: set[str] | frozenset[str] = frozenset(), submitted: bool = False, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The Spark settings vidspark hands the session builder: the conf's ``spark:`` section over the built-in defaults.

    Defaults (:data:`SPARK_DEFAULTS`, and :data:`LOCAL_SPARK_DEFAULTS` on a local master) yield to
    the conf and to keys spark-submit already set (``given``); a local run also gets
    ``spark.task.cpus`` from :func:`local_task_cpus` and vidspark's log4j2 file when the user has none.
    """
    env = os.environ if environ is None else environ
    settings = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in spark_conf.items()}
    local = bool(master) and str(master).startswith("local")
    defaults = {**SPARK_DEFAULTS, **(LOCAL_SPARK_DEFAULTS if local else {})}
    if local:
        cpus = local_task_cpus(str(master))
        if cpus:
            defaults["spark.task.cpus"] = str(cpus)
        if not submitted and LOG4J2_FILE.is_file() and user_log4j_config(settings, env) is None and "spark.driver.extraJavaOptions" not in settings:
            defaults["spark.driver.extraJavaOptions"] = f"-Dlog4j2.configurationFile={LOG4J2_FILE.as_uri()}"  # WARN and up, no start-up banner
    if env.get("VIDSPARK_FRAMEWORK_LOGS") == "1":
        defaults["spark.executorEnv.VIDSPARK_FRAMEWORK_LOGS"] = "1"
    return {**{k: v for k, v in defaults.items() if k not in given}, **settings}


def _submitted_settings() -> dict[str, str]:
    """What spark-submit already set (its --conf flags, --properties-file, spark-defaults.conf): it wins over vidspark's defaults."""
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()  # type: ignore[attr-defined]  # connects to spark-submit's gateway; sets nothing
    return dict(SparkConf().getAll())


def new_run_id(job: str) -> str:
    return f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-{job}-{uuid.uuid4().hex[:6]}"
