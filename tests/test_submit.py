"""submit.sh: the spark-submit line it builds from what `make dist` built, and a real spark-submit run on local Spark.

The fast tests run submit.sh in a copy of what it reads (itself, jobs/, conf/, vidspark/__init__.py)
with stand-in dist files, so they need no `make dist` and can check that nothing gets written.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.distenv import build_wheel, version
from vidspark.synthetic import LocalSink, write_labeled_set

ROOT = Path(__file__).resolve().parents[1]
VERSION = version()
WHEEL = f"vidspark-{VERSION}-py3-none-any.whl"
ENV = f"vidspark-{VERSION}-env.tar.gz"
# What the calling shell may have set that would change the line (conftest sets the PYSPARK_* two).
SUBMIT_VARS = ("SPARK_MASTER", "SPARK_SUBMIT", "SPARK_SUBMIT_ARGS", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "VIDSPARK_DIST", "VIDSPARK_ENV", "VIDSPARK_PYTHON")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SUBMIT_VARS}
    return {**env, "VIDSPARK_PYTHON": sys.executable, **extra}


def submit(where: Path, *args: str, timeout: int = 600, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(where / "submit.sh"), *args], capture_output=True, text=True, timeout=timeout, env=clean_env(**env), cwd=where)


def words(res: subprocess.CompletedProcess[str]) -> list[str]:
    """The spark-submit command line submit.sh printed, as the words it runs."""
    prefix = "submit.sh: running: "
    lines = [line for line in res.stdout.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, res.stdout
    return shlex.split(lines[0][len(prefix) :])


def options(cmd: list[str], name: str) -> list[str]:
    return [cmd[i + 1] for i, w in enumerate(cmd[:-1]) if w == name]


def spark_confs(cmd: list[str]) -> dict[str, list[str]]:
    """Every ``--conf key=value`` before the job file (the job's own ``--conf`` comes after it)."""
    job_at = next(i for i, w in enumerate(cmd) if w.endswith(".py") and "/jobs/" in w)
    out: dict[str, list[str]] = {}
    for value in options(cmd[:job_at], "--conf"):
        key, _, val = value.partition("=")
        out.setdefault(key, []).append(val)
    return out


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if "__pycache__" not in p.parts}


def repo_files() -> set[str]:
    """The checkout's files, without the virtualenv, caches and test data."""
    skip = {".git", ".venv", ".pytest_cache", ".mypy_cache", ".ruff_cache", "__pycache__", "data"}
    found = set()
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip]
        found.update(str(Path(folder, f).relative_to(ROOT)) for f in files)
    return found


@pytest.fixture()
def checkout(tmp_path) -> Path:
    """submit.sh with what it reads, and a dist/ of stand-in files (submit.sh never opens them)."""
    co = tmp_path / "checkout"
    co.mkdir()
    shutil.copy2(ROOT / "submit.sh", co)
    for folder in ("jobs", "conf"):
        shutil.copytree(ROOT / folder, co / folder)
    (co / "vidspark").mkdir()
    shutil.copy2(ROOT / "vidspark" / "__init__.py", co / "vidspark")
    (co / "dist").mkdir()
    (co / "dist" / WHEEL).write_bytes(b"stand-in wheel")
    (co / "dist" / ENV).write_bytes(b"stand-in env")
    return co


def recipe(help_text: str, start: str) -> str:
    """The shell command of a --help recipe: the line holding ``start`` and its backslash continuations."""
    lines = help_text.splitlines()
    i = next(n for n, line in enumerate(lines) if start in line)
    cmd = [lines[i][lines[i].index(start) :]]
    while cmd[-1].endswith("\\"):
        i += 1
        cmd.append(lines[i])
    return "\n".join(cmd)


def run_recipe(co: Path, start: str) -> list[str]:
    script = recipe(submit(co, "--help").stdout, start)
    assert script.count("./submit.sh ") == 1, script
    res = subprocess.run(["bash", "-c", script.replace("./submit.sh ", "./submit.sh --dry-run ")], capture_output=True, text=True, timeout=60, env=clean_env(), cwd=co)
    assert res.returncode == 0, res.stderr
    return words(res)


def test_help_documents_cluster_recipes(checkout):
    out = submit(checkout, "--help").stdout
    for needle in ("make dist", "--py-files", "--archives", "venv-pack", "constraints.txt", "yarn", "k8s://", "spark://", "--gpu", "cron", "Airflow", "VIDSPARK_DIST"):
        assert needle in out, needle
    assert f"dist/{WHEEL}" in out and "@VERSION@" not in out


def test_dry_run_ships_the_wheel_and_the_conf_on_a_local_master(checkout):
    res = submit(checkout, "--dry-run", "predict", "--features", "f", "--model", "m", "--output", "o", "--conf", "conf/cluster.yaml")
    assert res.returncode == 0, res.stderr
    cmd = words(res)
    wheel = str(checkout / "dist" / WHEEL)
    assert options(cmd, "--master") == ["local[*]"] and options(cmd, "--py-files") == [wheel]
    assert options(cmd, "--files") == ["conf/cluster.yaml"] and "--archives" not in cmd  # local runs use this machine's Python
    confs = spark_confs(cmd)
    assert confs["spark.executorEnv.PYTHONPATH"] == [wheel] and confs["spark.task.cpus"] == ["4"]
    assert "spark.pyspark.python" not in confs
    assert cmd[-9:] == [str(checkout / "jobs" / "predict.py"), "--features", "f", "--model", "m", "--output", "o", "--conf", "conf/cluster.yaml"]


def test_missing_wheel_exits_2_saying_to_run_make_dist(checkout):
    (checkout / "dist" / WHEEL).unlink()
    res = submit(checkout, "--dry-run", "train", "--features", "f", "--model", "m")
    assert res.returncode == 2 and res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1 and "make dist" in res.stderr and WHEEL in res.stderr


def test_vidspark_dist_points_at_another_folder(checkout, tmp_path):
    release = tmp_path / "release"
    (checkout / "dist").rename(release)
    cmd = words(submit(checkout, "--dry-run", "train", "--features", "f", "--model", "m", VIDSPARK_DIST=str(release), SPARK_MASTER="spark://10.0.0.5:7077"))
    assert options(cmd, "--py-files") == [str(release / WHEEL)] and options(cmd, "--archives") == [f"{release / ENV}#env"]


def test_standalone_recipe_runs_executors_on_the_packed_env(checkout):
    cmd = run_recipe(checkout, "SPARK_MASTER=spark://")
    confs = spark_confs(cmd)
    assert options(cmd, "--master") == ["spark://10.0.0.5:7077"] and "--deploy-mode" not in cmd
    assert options(cmd, "--archives") == [f"{checkout / 'dist' / ENV}#env"] and options(cmd, "--py-files") == [str(checkout / "dist" / WHEEL)]
    assert confs["spark.pyspark.python"] == ["./env/bin/python"]
    assert confs["spark.pyspark.driver.python"] == [sys.executable]  # a client-mode driver keeps this machine's Python
    assert confs["spark.executorEnv.PYTHONPATH"] == [WHEEL]  # where executors fetch --py-files (PySpark skips .whl)
    assert cmd[-2:] == ["--conf", "conf/cluster.yaml"] and options(cmd, "--files") == ["conf/cluster.yaml"]


def test_yarn_recipe_runs_the_driver_on_the_packed_env_too(checkout):
    cmd = run_recipe(checkout, "SPARK_MASTER=yarn")
    confs = spark_confs(cmd)
    assert options(cmd, "--master") == ["yarn"] and options(cmd, "--deploy-mode") == ["cluster"] and options(cmd, "--num-executors") == ["8"]
    assert options(cmd, "--archives") == [f"{checkout / 'dist' / ENV}#env"]
    assert confs["spark.pyspark.python"] == ["./env/bin/python"] and confs["spark.pyspark.driver.python"] == ["./env/bin/python"]
    assert cmd[-2:] == ["--conf", "cluster.yaml"]  # the driver finds --files in its working directory


def test_kubernetes_recipe_gives_the_pods_everything_they_fetch(checkout):
    cmd = run_recipe(checkout, "SPARK_MASTER=k8s://")
    confs = spark_confs(cmd)
    assert options(cmd, "--master")[0].startswith("k8s://https://") and options(cmd, "--deploy-mode") == ["cluster"]
    assert confs["spark.kubernetes.container.image"][0] and confs["spark.kubernetes.file.upload.path"][0].startswith("s3a://")
    assert any(p.startswith("org.apache.hadoop:hadoop-aws:") for p in options(cmd, "--packages"))  # spark-submit's upload to s3a://
    assert "spark.jars.ivy" in confs  # the driver pod resolves --packages again, into a writable folder
    # The 800 MB env is fetched by the pods from where it was put once, not uploaded on every submit.
    assert options(cmd, "--archives") == [f"s3a://my-bucket/vidspark/{ENV}#env"]
    assert confs["spark.pyspark.python"] == ["./env/bin/python"] and confs["spark.pyspark.driver.python"] == ["./env/bin/python"]
    assert confs["spark.executorEnv.PYTHONPATH"] == [WHEEL]
    # Local files are only those spark-submit uploads to spark.kubernetes.file.upload.path.
    local = [w for w in cmd[1:] if w.startswith("/")]
    assert sorted(local) == sorted([str(checkout / "dist" / WHEEL), str(checkout / "jobs" / "run.py")])
    assert options(cmd, "--py-files") == [str(checkout / "dist" / WHEEL)] and options(cmd, "--files") == ["conf/cluster.yaml"]
    assert cmd[-2:] == ["--conf", "cluster.yaml"]
    assert "make dist ENV_PYTHON=/usr/bin/python3.11" in submit(checkout, "--help").stdout  # the pods' Python


def test_gpu_dry_run_has_the_gpu_settings_and_the_discovery_script_works(checkout):
    res = submit(checkout, "--gpu", "--dry-run", "featurize", "--input", "s3://b/in", "--output", "s3://b/out/features")
    assert res.returncode == 0, res.stderr
    cmd = words(res)
    gpu_yaml = str(checkout / "conf" / "gpu.yaml")
    assert options(cmd, "--files") == [gpu_yaml] and cmd[-2:] == ["--conf", gpu_yaml]
    confs = spark_confs(cmd)
    for key, value in (("spark.executor.resource.gpu.amount", "1"), ("spark.executorEnv.CUDA_DEVICE_ORDER", "PCI_BUS_ID")):
        assert confs[key] == [value]
    assert "spark.task.resource.gpu.amount" not in confs  # the featurize stage asks for its GPU share itself (featurizer.task_gpus)
    assert confs["spark.executor.resource.gpu.discoveryScript"][0].startswith("/")  # on the nodes: discovery runs before --files arrive
    script = ROOT / "scripts" / "get_gpus_resources.sh"
    uuids = ["GPU-5f3a9c1e-0000-4000-8000-00000000000a", "GPU-5f3a9c1e-0000-4000-8000-00000000000b"]
    # the entries CUDA_VISIBLE_DEVICES lists, as written (the GPUs vidspark narrows each worker to), never renumbered
    for visible, addresses in (("2,3", ["2", "3"]), (" , ".join(uuids), uuids), ("-1", []), ("", [])):
        out = subprocess.run([str(script)], capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": visible})
        assert out.returncode == 0 and json.loads(out.stdout) == {"name": "gpu", "addresses": addresses}, (visible, out.stdout, out.stderr)


def test_gpu_combines_with_the_users_conf(checkout):
    res = submit(checkout, "--gpu", "--dry-run", "featurize", "--input", "i", "--output", "o", "--conf", "conf/cluster.yaml", SPARK_MASTER="yarn")
    assert res.returncode == 0, res.stderr
    cmd = words(res)
    confs = spark_confs(cmd)
    assert confs["spark.executor.resource.gpu.amount"] == ["1"] and "spark.task.resource.gpu.amount" not in confs  # gpu.yaml's
    assert confs["spark.executor.cores"] == ["4"] and confs["spark.executor.memory"] == ["8g"]  # cluster.yaml's win over gpu.yaml's 8 and 16g
    assert confs["spark.sql.adaptive.enabled"] == ["true"]  # only in cluster.yaml
    assert options(cmd, "--files") == ["conf/cluster.yaml"] and cmd[-2:] == ["--conf", "conf/cluster.yaml"]  # the job reads the user's conf


@pytest.mark.parametrize("master", ["yarn", "k8s://https://k8s.example:6443", "spark://10.0.0.5:7077"])
@pytest.mark.parametrize("user_conf", [None, "conf/cluster.yaml"])
def test_gpu_conf_works_on_each_cluster_manager(checkout, master, user_conf):
    """conf/gpu.yaml as written, alone or under the user's conf: one GPU per executor, the vendor Kubernetes needs, the discovery script on the nodes."""
    args = ["--gpu", "--dry-run", "featurize", "--input", "s3://b/in", "--output", "s3://b/out/features", *(["--conf", user_conf] if user_conf else [])]
    res = submit(checkout, *args, SPARK_MASTER=master)
    assert res.returncode == 0, res.stderr
    cmd = words(res)
    assert options(cmd, "--master") == [master]
    confs = spark_confs(cmd)
    assert confs["spark.executor.resource.gpu.amount"] == ["1"] and confs["spark.executor.resource.gpu.vendor"] == ["nvidia.com"]
    assert "spark.task.resource.gpu.amount" not in confs and confs["spark.executor.resource.gpu.discoveryScript"][0].startswith("/")
    if user_conf:
        assert confs["spark.executor.cores"] == ["4"] and cmd[-2:] == ["--conf", user_conf]


def test_two_submits_at_once_write_nothing(checkout, tmp_path):
    """Two cron jobs at once: same line, and the checkout (dist/ included) unchanged after both."""
    before = snapshot(checkout)
    env = clean_env(SPARK_MASTER="spark://10.0.0.5:7077")
    argv = [str(checkout / "submit.sh"), "--dry-run", "run", "--input", "s3://cams/", "--model", "m", "--output", "o", "--conf", "conf/cluster.yaml"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=checkout) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == outs[1][0] and f"{ENV}#env" in outs[0][0]
    assert snapshot(checkout) == before


def test_a_local_submit_runs_spark_submit_with_this_python_and_writes_nothing(checkout, tmp_path):
    fake = tmp_path / "spark-submit"
    fake.write_text('#!/usr/bin/env bash\necho "PYSPARK_PYTHON=$PYSPARK_PYTHON"\nprintf "%s\\n" "$@"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    before = snapshot(checkout)
    extra = "--conf spark.hadoop.fs.s3a.secret.key=hunter2"
    res = submit(checkout, "train", "--features", "f", "--model", "m", SPARK_SUBMIT=str(fake), SPARK_SUBMIT_ARGS=extra)
    assert res.returncode == 0, res.stderr
    printed, *ran = res.stdout.splitlines()
    assert ran[0] == f"PYSPARK_PYTHON={sys.executable}"  # embedded runs: Python workers on this machine's interpreter
    shown = words(subprocess.CompletedProcess([], 0, printed, ""))
    assert "spark.hadoop.fs.s3a.secret.key=hunter2" in ran and "hunter2" not in printed and "spark.hadoop.fs.s3a.secret.key=***" in shown
    assert [w.replace("=hunter2", "=***") for w in ran[1:]] == shown[1:]  # spark-submit gets the line printed, secrets unmasked
    assert snapshot(checkout) == before
    res = submit(checkout, "train", "--features", "f", "--model", "m", SPARK_SUBMIT=str(fake), PYSPARK_PYTHON="/opt/py/bin/python")
    assert res.stdout.splitlines()[1] == "PYSPARK_PYTHON=/opt/py/bin/python"


def test_nodes_with_their_own_python(checkout):
    """VIDSPARK_ENV=none ships no env; PYSPARK_PYTHON names the executors' Python (an image's, say)."""
    cmd = words(submit(checkout, "--dry-run", "train", "--features", "f", "--model", "m", SPARK_MASTER="spark://h:7077", VIDSPARK_ENV="none", PYSPARK_PYTHON="/opt/venv/bin/python"))
    assert "--archives" not in cmd and spark_confs(cmd)["spark.pyspark.python"] == ["/opt/venv/bin/python"]
    (checkout / "dist" / ENV).unlink()  # no env built: the nodes' default Python
    cmd = words(submit(checkout, "--dry-run", "train", "--features", "f", "--model", "m", SPARK_MASTER="spark://h:7077"))
    assert "--archives" not in cmd and "spark.pyspark.python" not in spark_confs(cmd)
    res = submit(checkout, "--dry-run", "train", "--features", "f", "--model", "m", SPARK_MASTER="spark://h:7077", VIDSPARK_ENV="/nowhere/env.tar.gz")
    assert res.returncode == 2 and "make dist" in res.stderr


def test_unknown_job_exits_2(checkout):
    assert submit(checkout, "frobnicate").returncode == 2


@pytest.mark.slow
def test_real_spark_submit_featurize(tmp_path):
    """spark-submit on local Spark with a real wheel (pip wheel --no-deps), run from the checkout, leaving it as it was."""
    dist = tmp_path / "dist"
    with zipfile.ZipFile(build_wheel(dist)) as whl:
        meta = whl.read(f"vidspark-{VERSION}.dist-info/METADATA").decode()
        assert "vidspark/log4j2.properties" in whl.namelist()
    pyspark_reqs = [line for line in meta.splitlines() if line.startswith("Requires-Dist: pyspark")]
    assert len(pyspark_reqs) == 1 and pyspark_reqs[0].endswith('; extra == "spark"')  # clusters bring their own Spark
    write_labeled_set(LocalSink(tmp_path / "in"), per_class=3, seed=2)
    (tmp_path / "in" / "car" / "broken.jpg").write_bytes(b"nope")
    before = repo_files()
    res = submit(
        ROOT, "featurize", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out" / "features"),
        "--conf", "conf/local.yaml", "--set", "featurizer.weights=random", "--set", "job.max_error_fraction=0.5",
        "--set", "spark.driver.memory=1g", "--run-id", "submit-test", VIDSPARK_DIST=str(dist),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert options(words(res), "--py-files") == [str(dist / WHEEL)]
    record = json.loads((tmp_path / "out" / "runs" / "submit-test.json").read_text())
    assert record["summary"]["featurized"] == 6 and record["summary"]["errors_by_stage"] == {"decode": 1}
    assert repo_files() - before == set()
