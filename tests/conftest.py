"""Shared fixtures: a real S3 HTTP endpoint on loopback (moto's server) and one local Spark session."""

from __future__ import annotations

import logging
import os
import socket
import sys
import uuid

import pytest

# Before anything imports boto3 or starts a JVM: fake credentials for the local endpoint only, and
# Spark's Python workers on this interpreter, bound to loopback.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "vidspark-test-key",
        "AWS_SECRET_ACCESS_KEY": "vidspark-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "",
    }
)
for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
    os.environ.pop(var, None)


logging.getLogger("werkzeug").setLevel(logging.WARNING)

# `make test` runs the suite on two pytest-xdist workers (`-n 2 --dist loadfile`): each worker has its own Spark
# session and S3 server, and takes whole test files, so module fixtures are built once. The files that share the
# demo run go to one worker together (the scheduler below); the longest files are handed out first, so neither
# worker ends alone. (xdist's own `loadgroup` cannot be used: it renames node ids, which pytest 9 ignores.)
DEMO_FILES = ("test_ddl.py", "test_e2e.py", "test_report.py")
LONG_FIRST = ("test_listing.py", "test_operability.py", "test_adaptive.py", "test_video_featurize.py", "test_skip_static.py", "test_small_jobs.py")


def _file_group(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return "demo" if path.rsplit("/", 1)[-1] in DEMO_FILES else path


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(("demo", *LONG_FIRST))}
    items.sort(key=lambda item: rank.get(_file_group(item.nodeid).rsplit("/", 1)[-1], len(rank)))  # stable: order within a file is kept


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """With ``--dist loadfile``: whole files to a worker, the demo run's files as one."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FilesAndDemo(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _file_group(nodeid)

    return FilesAndDemo(config, log)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1; boto3 finds it through AWS_ENDPOINT_URL_S3."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    os.environ["AWS_ENDPOINT_URL_S3"] = url
    yield url
    server.stop()
    os.environ.pop("AWS_ENDPOINT_URL_S3", None)


@pytest.fixture()
def s3_client(s3_endpoint):
    from vidspark.config import StorageConf
    from vidspark.storage import make_s3_client

    return make_s3_client(StorageConf(endpoint_url=s3_endpoint))


@pytest.fixture()
def bucket(s3_client):
    name = f"vidspark-{uuid.uuid4().hex[:10]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def spark(s3_endpoint):
    """One local[2] session for the whole run (started after the S3 endpoint, so workers inherit its env).

    A task may be tried twice (``local[2,2]``), as a cluster retries one (``spark.task.maxFailures``):
    a Python worker once died without a trace in a long run of tests, and a deterministic failure
    still fails both tries. The faulthandler makes such a death print its Python stack.

    The driver JVM compiles with C1 only (``-XX:TieredStopAtLevel=1``): the tests run hundreds of
    tiny jobs, where C2's optimising compiles cost more CPU than they save (about a third of the
    JVM's CPU on 2 cores); what the jobs compute does not change.
    """
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2,2]")
        .config("spark.python.worker.faulthandler.enabled", "true")
        .appName("vidspark-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "64")
        .config("spark.driver.memory", "3g")
        .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


# The featurizer conf of every test that featurizes on the shared session: seeded random weights, small batches, 32-pixel
# frames. One conf, so that a Python worker builds one model for all of them (the cache is per worker and conf).
TEST_FEATURIZER = ["--set", "featurizer.weights=random", "--set", "featurizer.batch_size=16", "--set", "featurizer.image_size=32"]


@pytest.fixture()
def test_conf_args():
    """--set arguments every Spark test uses: TEST_FEATURIZER and a short training."""
    return [*TEST_FEATURIZER, "--set", "train.num_boost_round=60"]


@pytest.fixture(scope="session")
def demo_run(spark, tmp_path_factory):
    """One ``vidspark demo`` for the tests that read real outputs (tables, run records): its workdir and what it printed."""
    import contextlib
    import io

    from vidspark.cli import main

    work = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["demo", "--workdir", str(work), *TEST_FEATURIZER, "--set", "train.num_boost_round=30"], spark=spark)
    assert code == 0, printed.getvalue()
    return work, printed.getvalue()
