"""Issue 13: one clear line and a documented exit code for known failures, quiet logs, one set of
defaults, progress lines, a run record from the start, ``vidspark check`` and ``--dry-run``."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port
from tests.helpers import Background
from vidspark.app import LOCAL_SPARK_DEFAULTS, LOG4J2_FILE, SPARK_DEFAULTS, session_settings, user_log4j_config
from vidspark.cli import build_parser, main
from vidspark.config import load_conf, to_dict
from vidspark.errors import ConfigError, ModelError, WeightsUnavailable, known_failure
from vidspark.progress import Progress, eta_text, progress_line
from vidspark.synthetic import LocalSink, S3Sink, write_labeled_set
from vidspark.tfquiet import drop_noise

ROOT = Path(__file__).resolve().parents[1]
VIDSPARK = str(Path(sys.executable).with_name("vidspark"))
RANDOM = ["--set", "featurizer.weights=random", "--set", "featurizer.image_size=64", "--set", "featurizer.batch_size=8"]


def _cli(args: list[str], env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VIDSPARK, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


NO_CONF_TEST = "test_a_job_without_conf_is_quiet_and_records_its_settings"


@pytest.fixture(scope="module", autouse=True)
def job_without_conf(request, tmp_path_factory):
    """NO_CONF_TEST's `vidspark featurize` (its folder and its process), started with the module: its JVM, Python workers
    and TensorFlow start while the tests before it run, on the other core. Nothing where that test is not selected."""
    if not any(item.name == NO_CONF_TEST for item in request.session.items):
        yield None
        return
    root = tmp_path_factory.mktemp("no-conf")
    write_labeled_set(LocalSink(root / "in"), per_class=12, size=(64, 48))
    args = ["featurize", "--input", str(root / "in"), "--output", str(root / "features"), "--run-id", "r1", *RANDOM, "--set", "job.progress_seconds=0.2", "--set", "job.rows_per_task=4"]
    job = Background([VIDSPARK, *args], timeout=300, cwd=ROOT, env=dict(os.environ))
    yield root, job
    job.stop()


# -- known failures: one line, a documented exit code --------------------------------------------


def test_unreachable_model_hub_is_one_line_and_exit_5(tmp_path):
    """The default weights (imagenet) on a machine that cannot reach the hub: a real download attempt through a proxy on loopback where nothing listens."""
    write_labeled_set(LocalSink(tmp_path / "in"), per_class=2, size=(64, 48))
    port = free_port()
    env = {"KERAS_HOME": str(tmp_path / "keras"), "NO_PROXY": "", **{v: f"http://127.0.0.1:{port}" for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")}}
    out = _cli(["featurize", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out" / "features")], env)
    lines = out.stderr.splitlines()
    assert out.returncode == 5, out.stderr
    assert len(lines) <= 3, out.stderr  # an INFO line for the readable input, the error; no Spark was started
    errors = [ln for ln in lines if ln.startswith("vidspark: error:")]
    assert len(errors) == 1 and "featurizer.weights" in errors[0] and "Connection refused" in errors[0]
    assert "Traceback" not in out.stderr and "at org.apache" not in out.stderr
    assert not (tmp_path / "out").exists()
    quiet = _cli(["featurize", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out" / "features"), "--log-level", "warning"], env)
    assert quiet.returncode == 5 and len(quiet.stderr.splitlines()) == 1, quiet.stderr


def test_known_failure_on_an_executor_becomes_its_own_error(spark):
    """A vidspark error raised inside a Spark task reaches the driver wrapped in Spark's exception; its class and line come back out."""

    def fail(batches):
        for _ in batches:
            raise WeightsUnavailable("no weights on this executor")
        yield from ()

    with pytest.raises(Exception) as info:
        spark.range(2).mapInPandas(fail, schema="id long").collect()
    found = known_failure(info.value)
    assert isinstance(found, WeightsUnavailable) and found.exit_code == 5
    assert str(found) == "no weights on this executor"
    assert known_failure(RuntimeError("vidspark.errors.NotAClass: x")) is None
    assert isinstance(known_failure(ModelError("m")), ModelError)


def test_log_level_is_case_insensitive():
    for text in ("debug", "Info", "WARNING", "error"):
        assert build_parser().parse_args(["predict", "--features", "f", "--model", "m", "--output", "o", "--log-level", text]).log_level == text.upper()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "--features", "f", "--model", "m", "--output", "o", "--log-level", "loud"])


def test_a_layout_that_fits_no_key_fails_before_spark_with_exit_2(tmp_path, capsys):
    write_labeled_set(LocalSink(tmp_path / "in"), per_class=2, size=(32, 32))
    code = main(["featurize", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "f"), "--layout", "{camera_id}/{date}/{ts}.jpg", *RANDOM])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "0 fit, 4 do not" in err[0] and "does not fit layout" in err[0], err
    assert not (tmp_path / "f").exists()


def test_a_missing_model_fails_before_spark_with_exit_2(tmp_path, capsys):
    code = main(["predict", "--features", str(tmp_path / "f"), "--model", str(tmp_path / "nope"), "--output", str(tmp_path / "p")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("vidspark: error:") and "train a model" in err[0]


# -- one set of defaults --------------------------------------------------------------------------


def test_no_conf_is_conf_local_yaml():
    local = load_conf(ROOT / "conf" / "local.yaml")
    builtin = load_conf(None)
    a, b = to_dict(local), to_dict(builtin)
    a.pop("spark"), b.pop("spark")
    assert a == b  # every key local.yaml lists has its built-in value
    raw = yaml.safe_load((ROOT / "conf" / "local.yaml").read_text())
    listed = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in raw["spark"].items()}
    assert listed == {**SPARK_DEFAULTS, **LOCAL_SPARK_DEFAULTS}
    env: dict[str, str] = {}
    assert session_settings("local[2]", {}, environ=env) == session_settings("local[2]", local.spark, environ=env)
    assert session_settings("local[2]", {}, environ=env)["spark.sql.shuffle.partitions"] == "8"


def test_cluster_settings_override_and_spark_submit_wins():
    cluster = load_conf(ROOT / "conf" / "cluster.yaml")
    s = session_settings("yarn", cluster.spark, submitted=True, environ={})
    assert s["spark.sql.shuffle.partitions"] == "200" and s["spark.ui.showConsoleProgress"] == "false"
    assert "spark.driver.extraJavaOptions" not in s and "spark.sql.execution.arrow.maxRecordsPerBatch" in s
    given = {"spark.sql.session.timeZone", "spark.ui.showConsoleProgress"}
    s = session_settings("yarn", {}, given=given, submitted=True, environ={})
    assert not given & set(s) and s["spark.sql.execution.arrow.pyspark.enabled"] == "true"
    assert "spark.sql.shuffle.partitions" not in s  # a cluster's own default (or the conf) decides


def test_a_users_log4j2_configuration_is_respected(tmp_path):
    assert user_log4j_config({}, {}) is None
    assert user_log4j_config({"spark.driver.extraJavaOptions": "-Xss4m -Dlog4j2.configurationFile=file:/etc/l.properties"}, {}) == "file:/etc/l.properties"
    assert user_log4j_config({"spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={LOG4J2_FILE.as_uri()}"}, {}) is None
    (tmp_path / "log4j2.properties").write_text("rootLogger.level = info\n")
    assert user_log4j_config({}, {"SPARK_CONF_DIR": str(tmp_path)}) == str(tmp_path / "log4j2.properties")
    s = session_settings("local[2]", {}, environ={"SPARK_CONF_DIR": str(tmp_path)})
    assert "spark.driver.extraJavaOptions" not in s  # vidspark's file only where the user has none
    assert session_settings("local[2]", {}, environ={})["spark.driver.extraJavaOptions"].endswith("log4j2.properties")


# -- quiet logs ------------------------------------------------------------------------------------

NOISY = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795387759.157784   15131 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results.",
    "I0000 00:00:1795387759.158269   15131 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.",
    "E0000 00:00:1795387767.707418   15131 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.",
]


def test_noise_filter_drops_the_start_up_notices_only():
    kept = ["E0000 00:00:1795387767.707418   15131 some_kernel.cc:52] OOM when allocating tensor", "Traceback (most recent call last):", "ValueError: bad"]
    assert drop_noise("\n".join(NOISY + kept) + "\n") == "\n".join(kept) + "\n"


def test_the_filter_passes_other_lines_on_as_they_come():
    code = (
        "import os, sys\nfrom vidspark.tfquiet import filtered_stderr\n"
        "with filtered_stderr():\n"
        "    os.write(2, b'I0000 00:00:1795387759.157784   15131 port.cc:153] oneDNN custom operations are on.\\nkept from C\\n')\n"
        "    print('kept from Python', file=sys.stderr)\n"
        "print('after', file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stderr == "kept from C\nkept from Python\nafter\n", out.stderr


def test_tensorflow_starts_quietly_unless_asked():
    code = "from vidspark.tfquiet import import_tensorflow; import sys; tf = import_tensorflow(); print('user line', file=sys.stderr)"
    started = [  # side by side: each is a TensorFlow import
        Background([sys.executable, "-c", code], env={**os.environ, "VIDSPARK_FRAMEWORK_LOGS": "1"}, timeout=120),
        Background([sys.executable, "-c", code], env={k: v for k, v in os.environ.items() if k not in ("VIDSPARK_FRAMEWORK_LOGS", "TF_CPP_MIN_LOG_LEVEL")}, timeout=120),
    ]
    loud, quiet = (b.result() for b in started)
    assert loud.returncode == quiet.returncode == 0, quiet.stderr
    assert any(drop_noise(line) == "" for line in loud.stderr.splitlines(keepends=True)), loud.stderr  # on this CPU machine TF does print notices
    assert quiet.stderr.strip() == "user line", quiet.stderr


# -- progress -------------------------------------------------------------------------------------


def test_progress_line_and_eta():
    line = progress_line("featurize", frames=500, units_done=5, units_total=20, errors=3, elapsed=50.0)
    assert line == "featurize: 500/~2000 frames, 5/20 tasks (25.0 %), 10.0 frames/s, 3 errors, ETA 2m30s"
    assert "500/2000 frames" in progress_line("featurize", frames=500, units_done=5, units_total=20, errors=0, elapsed=50.0, frames_total=2000)
    assert progress_line("predict", frames=None, units_done=0, units_total=8, errors=None, elapsed=3.0) == "predict: 0/8 tasks (0.0 %), ETA ?"
    assert (eta_text(3725), eta_text(59.6), eta_text(None)) == ("1h02m", "1m00s", "?")


def test_progress_logs_while_the_block_runs(caplog):
    import time

    state = {"tasks": 0.0, "frames": 0.0}
    with caplog.at_level(logging.INFO, logger="vidspark.progress"), Progress("featurize", every=0.05, counts=lambda: dict(state), units_total=4) as p:
        for i in range(1, 5):
            state.update(tasks=float(i), frames=float(10 * i))
            time.sleep(0.12)
        time.sleep(0.12)  # one more line after the last task
    assert p.lines >= 3
    messages = [r.message for r in caplog.records]
    assert "featurize: 40/~40 frames, 4/4 tasks (100.0 %)" in messages[-1], messages
    assert any("/~40 frames, 1/4 tasks (25.0 %)" in m or "/~40 frames, 2/4 tasks (50.0 %)" in m for m in messages), messages
    with Progress("x", every=0, counts=dict) as silent:
        pass
    assert silent.thread is None


# -- a job without --conf: defaults, quiet stderr, progress, the run record ------------------------


def test_a_job_without_conf_is_quiet_and_records_its_settings(job_without_conf):
    root, job = job_without_conf
    out = job.result()
    assert out.returncode == 0, out.stderr[-3000:]
    err = out.stderr
    for noise in ("[Stage", "Setting default log level", "I0000", "E0000", "absl::InitializeLog", "NativeCodeLoader", "oneDNN"):
        assert noise not in err, err
    progress = [ln for ln in err.splitlines() if "vidspark.progress: featurize:" in ln]
    assert progress and all("frames/s" in ln and "ETA" in ln for ln in progress), err
    record = json.loads((root / "runs" / "r1.json").read_text())
    assert record["status"] == "ok" and record["exit_code"] == 0
    assert record["spark_settings"]["spark.sql.shuffle.partitions"] == "8"
    assert record["spark_settings"]["spark.ui.showConsoleProgress"] == "false"
    assert record["versions"]["tensorflow"] and record["versions"]["keras"]
    (made_by,) = record["summary"]["executor_versions"]
    assert made_by == f"tensorflow {record['versions']['tensorflow']}, keras {record['versions']['keras']}"


def test_the_run_record_is_written_at_start(spark, tmp_path, monkeypatch):
    import vidspark.featurize as fz
    import vidspark.pipeline  # noqa: F401  (imported before the spy: its `from vidspark.featurize import featurize` must not bind the spy for later tests)

    seen = {}

    def spy(session, **kwargs):
        seen.update(json.loads((tmp_path / "runs" / "r2.json").read_text()))
        return {"listed": 0, "error_count": 0, "error_fraction": 0.0, "errors_by_stage": {}, "errors": str(tmp_path / "errors")}

    write_labeled_set(LocalSink(tmp_path / "in"), per_class=1, size=(32, 32))
    monkeypatch.setattr(fz, "featurize", spy)
    assert main(["featurize", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "features"), "--run-id", "r2", *RANDOM], spark=spark) == 0
    assert seen["status"] == "running" and seen["ended"] is None and seen["exit_code"] is None
    assert json.loads((tmp_path / "runs" / "r2.json").read_text())["status"] == "ok"


# -- vidspark check and --dry-run -----------------------------------------------------------------


def test_check_and_dry_run_preview_a_night(spark, tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    keys = write_labeled_set(LocalSink(inp), per_class=3, size=(64, 48))
    (inp / "README.txt").write_text("not a frame")
    code = main(["check", "--input", str(inp), "--output", str(out / "features"), "--keys", "50", *RANDOM], spark=spark)
    report = capsys.readouterr().out
    assert code == 0, report
    assert f"on the first {len(keys) + 1} keys: {len(keys)} fit, 1 do not" in report
    assert "car/car_0000.jpg -> label=car" in report and "README.txt" in report
    assert "would featurize 6 objects (0 of them again: changed), skip 0 unchanged, prune 0 with --prune" in report

    assert main(["featurize", "--input", str(inp), "--output", str(out / "features"), "--dry-run", *RANDOM], spark=spark) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dry_run"] and summary["would_featurize"] == 6 and not out.exists()  # nothing written, not even a run record

    assert main(["featurize", "--input", str(inp), "--output", str(out / "features"), *RANDOM, "--set", "job.max_error_fraction=0.5"], spark=spark) == 0
    capsys.readouterr()
    (inp / keys[0]).unlink()
    write_labeled_set(LocalSink(inp), classes=("car",), per_class=1, seed=9, size=(64, 48))  # car_0000.jpg again, other bytes
    (inp / "car" / "car_0000.jpg").touch()
    assert main(["check", "--input", str(inp), "--output", str(out / "features"), "--json", *RANDOM], spark=spark) == 0
    found = {f["check"]: f for f in json.loads(capsys.readouterr().out)["findings"]}
    assert found["plan"]["detail"] == "would featurize 1 objects (1 of them again: changed), skip 5 unchanged, prune 0 with --prune"
    (inp / "person" / "person_0002.jpg").unlink()
    assert main(["check", "--input", str(inp), "--output", str(out / "features"), "--prune", "--json", *RANDOM], spark=spark) == 0
    found = {f["check"]: f for f in json.loads(capsys.readouterr().out)["findings"]}
    assert found["plan"]["detail"].endswith("skip 4 unchanged, prune 1")


def test_check_finds_a_layout_that_fits_nothing_and_an_unreachable_bucket(spark, tmp_path, capsys, s3_client, bucket):
    write_labeled_set(S3Sink(s3_client, bucket, "cams/"), per_class=2, size=(32, 32))
    code = main(["check", "--input", f"s3://{bucket}/cams", "--layout", "{camera_id}/{date}/{ts}.jpg", *RANDOM], spark=spark)
    captured = capsys.readouterr()
    assert code == ConfigError.exit_code == 2
    assert "FAIL  layout" in captured.out and "0 fit, 4 do not" in captured.out
    assert captured.err.count("vidspark: error:") == 1
    code = main(["check", "--input", f"s3://{bucket}-missing/cams", *RANDOM], spark=spark)
    captured = capsys.readouterr()
    assert code == 3 and "FAIL  input" in captured.out and "does not exist" in captured.out


def test_dry_runs_of_predict_and_run_write_nothing(spark, tmp_path, capsys, s3_client, bucket):
    from tests.helpers import train_model

    model = train_model(spark, tmp_path / "m", RANDOM, per_class=8, seed=1, size=(64, 48), folds=2)
    on_s3 = f"s3://{bucket}/models/cars"  # a model directory on the loopback S3 server, through the CLI
    assert main(["train", "--features", str(tmp_path / "m" / "features"), "--model", on_s3, "--folds", "2", "--run-id", "t1", *RANDOM], spark=spark) == 0
    assert json.loads(s3_client.get_object(Bucket=bucket, Key="models/runs/t1.json")["Body"].read())["status"] == "ok"
    capsys.readouterr()
    assert main(["predict", "--features", str(tmp_path / "m" / "features"), "--model", on_s3, "--output", str(tmp_path / "p"), "--dry-run", *RANDOM], spark=spark) == 0
    assert json.loads(capsys.readouterr().out)["classes"] == ["car", "person"]
    assert main(["predict", "--features", str(tmp_path / "m" / "features"), "--model", str(model), "--output", str(tmp_path / "p"), "--dry-run", *RANDOM], spark=spark) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["would_predict_frames"] == 16 and not (tmp_path / "p").exists()
    assert main(["run", "--input", str(tmp_path / "m" / "labeled"), "--model", str(model), "--output", str(tmp_path / "r"), "--dry-run", *RANDOM], spark=spark) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["featurize"].get("would_featurize") == 16 and not (tmp_path / "r").exists(), s
    other = ["--set", "featurizer.weights=random", "--set", "featurizer.seed=7", "--set", "featurizer.image_size=64"]
    assert main(["run", "--input", str(tmp_path / "m" / "labeled"), "--model", str(model), "--output", str(tmp_path / "r"), *other], spark=spark) == 2
    assert "trained on features of 'resnet50/random-seed0@64'" in capsys.readouterr().err
