"""MLflow tracking (vidspark/tracking.py): off without MLFLOW_TRACKING_URI; against a real tracking server on loopback when on.

The slow tests start ``mlflow server`` (its own SQLite backend and artifact folder in tmp) from a
venv of its own, and use the ``mlflow-skinny`` client; tests/mlflowenv.py builds both once and
caches them in ``.pytest_cache``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import free_port
from tests.distenv import ROOT
from vidspark.cli import main
from vidspark.config import Conf
from vidspark.errors import ConfigError, EnvironmentProblem, ModelError
from vidspark.model import load_model_dir, save_model_dir
from vidspark.synthetic import LocalSink, write_labeled_set
from vidspark.tracking import log_training, registration_target, resolve_model

REGISTERED = "vidspark-cctv"
MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "VIDSPARK_MLFLOW_REGISTER")


@pytest.fixture(autouse=True)
def no_mlflow_env(monkeypatch):
    """Whatever the calling shell has, each test starts with tracking off."""
    for var in MLFLOW_ENV:
        monkeypatch.delenv(var, raising=False)


def test_without_a_tracking_uri_nothing_is_logged_and_mlflow_is_never_imported(tmp_path):
    code = (
        "import sys\n"
        "from vidspark.config import Conf\n"
        "from vidspark.tracking import log_training, resolve_model\n"
        "assert log_training(sys.argv[1], {'rows': 3}, conf=Conf(), run_id='r') is None\n"
        "assert resolve_model(sys.argv[1]) == sys.argv[1]\n"
        "assert resolve_model('s3://bucket/models/m') == 's3://bucket/models/m'\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV}
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "model")], capture_output=True, text=True, timeout=120, cwd=ROOT, env={**env, "VIDSPARK_MLFLOW_REGISTER": "m@a"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "[]"
    assert "VIDSPARK_MLFLOW_REGISTER=m@a is set but MLFLOW_TRACKING_URI is not" in res.stderr


def test_an_mlflow_uri_without_the_client_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError, as where the extra is not installed
    with pytest.raises(EnvironmentProblem, match=r"pip install 'vidspark\[mlflow\]'") as raised:
        resolve_model("models:/cctv@champion")
    assert "\n" not in str(raised.value) and str(raised.value).startswith("--model models:/cctv@champion needs the MLflow client")
    assert resolve_model("/data/models/cctv") == "/data/models/cctv"


def test_a_tracking_uri_without_the_client_warns_and_keeps_the_model(monkeypatch, caplog, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with caplog.at_level(logging.WARNING, logger="vidspark.tracking"):
        assert log_training(str(tmp_path), {}, conf=Conf()) is None
    assert "pip install 'vidspark[mlflow]'" in caplog.text and "kept but not logged" in caplog.text


def test_registration_target():
    assert registration_target("cctv") == ("cctv", None)
    assert registration_target(" cctv-classifier@champion ") == ("cctv-classifier", "champion")
    for bad in ("", "a@b@c", "a/b", "cctv@", "cctv@1st"):
        with pytest.raises(ConfigError, match="VIDSPARK_MLFLOW_REGISTER"):
            registration_target(bad)


# --- against a real tracking server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_server(pytestconfig, tmp_path_factory):
    """A tracking server on 127.0.0.1 for this module, starting (see :func:`track`); the MLflow client importable here."""
    from tests.mlflowenv import client_path, server_venv, tracking_server

    cache = pytestconfig.cache.mkdir("vidspark-mlflow")
    version, _ = client_path(cache)
    with tracking_server(server_venv(cache, version), tmp_path_factory.mktemp("mlflow")) as server:
        yield server


def track(server, monkeypatch):
    """Wait for the server, point MLflow at it (as a team's environment would), and return a client to check what it holds."""
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.wait())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "vidspark-tests")
    return MlflowClient(tracking_uri=server.url)


def _cli_json(capsys, argv: list[str], spark) -> dict:
    """Run one verb, check its exit code 0, and return the JSON summary it printed (nothing else on stdout)."""
    capsys.readouterr()
    assert main(argv, spark=spark) == 0
    return json.loads(capsys.readouterr().out)


def _probabilities(spark, folder: Path) -> dict:
    return {(r["uri"], r["frame_idx"]): sorted(r["probabilities"].items()) for r in spark.read.parquet(str(folder / "frames")).select("uri", "frame_idx", "probabilities").collect()}


@pytest.mark.slow
def test_train_logs_a_run_registers_the_model_and_predict_reads_it_back(spark, mlflow_server, monkeypatch, capsys, caplog, tmp_path, test_conf_args):
    args = [*test_conf_args, "--set", "featurizer.image_size=32"]
    write_labeled_set(LocalSink(tmp_path / "labeled"), classes=("car", "person"), per_class=8, seed=4, size=(64, 48))
    features, model = str(tmp_path / "features"), tmp_path / "model"
    _cli_json(capsys, ["featurize", "--input", str(tmp_path / "labeled"), "--output", features, *args], spark)  # while the server starts
    tracked = track(mlflow_server, monkeypatch)
    monkeypatch.setenv("VIDSPARK_MLFLOW_REGISTER", f"{REGISTERED}@champion")
    summary = _cli_json(capsys, ["train", "--features", features, "--model", str(model), "--folds", "3", "--run-id", "train-tracked", *args], spark)
    run_id = summary["mlflow_run_id"]
    assert json.loads((tmp_path / "runs" / "train-tracked.json").read_text())["summary"]["mlflow_run_id"] == run_id
    meta, report = json.loads((model / "model.json").read_text()), json.loads((model / "cv_report.json").read_text())

    run = tracked.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "train-tracked"
    assert tracked.get_experiment(run.info.experiment_id).name == "vidspark-tests"
    params = run.data.params
    assert params["objective"] == "binary" and params["learning_rate"] == "0.1" and params["train.num_boost_round"] == "60"
    assert {k: params[k] for k in ("train.folds", "train.seed", "train.early_stopping_rounds")} == {"train.folds": "3", "train.seed": "42", "train.early_stopping_rounds": "30"}
    assert params["featurizer"] == "resnet50/random-seed0@32" and params["classes"] == '["car", "person"]'
    assert run.data.tags["vidspark.run_id"] == "train-tracked" and run.data.tags["vidspark.model_txt_sha256"] == meta["model_txt_sha256"]

    # one value per fold, at step = fold, equal to cv_report.json's; the pooled ones once
    for metric in ("accuracy", "f1", "best_iteration"):
        history = sorted((m.step, m.value) for m in tracked.get_metric_history(run_id, f"fold_{metric}"))
        assert history == [(f["fold"], pytest.approx(f[metric])) for f in report["folds"]] and len(history) == 3
    assert run.data.metrics["cv_accuracy"] == pytest.approx(report["overall_out_of_fold"]["accuracy"]) and run.data.metrics["rows"] == 16

    # the confusion matrix and the model directory as artifacts
    assert {a.path for a in tracked.list_artifacts(run_id)} >= {"model", "confusion_matrix.png", "confusion_matrix.json", "conf.json"}
    assert {a.path for a in tracked.list_artifacts(run_id, "model")} == {f"model/{p.name}" for p in model.iterdir()} >= {"model/model.txt", "model/model.json", "model/cv_report.json"}
    from mlflow.artifacts import download_artifacts

    matrix = json.loads(Path(download_artifacts(run_id=run_id, artifact_path="confusion_matrix.json", dst_path=str(tmp_path))).read_text())
    assert matrix["classes"] == ["car", "person"] and matrix["matrix"] == report["overall_out_of_fold"]["confusion_matrix"] and sum(map(sum, matrix["matrix"])) == 16

    # registered, with the alias on the new version
    version = tracked.get_model_version_by_alias(REGISTERED, "champion")
    assert version.run_id == run_id and version.version == "1"

    # predict with models:/NAME@ALIAS gives what the local model directory gives
    assert main(["predict", "--features", features, "--model", f"models:/{REGISTERED}@champion", "--output", str(tmp_path / "p-mlflow"), *args], spark=spark) == 0
    assert main(["predict", "--features", features, "--model", str(model), "--output", str(tmp_path / "p-local"), *args], spark=spark) == 0
    by_mlflow, by_local = _probabilities(spark, tmp_path / "p-mlflow"), _probabilities(spark, tmp_path / "p-local")
    assert len(by_local) == 16 and by_mlflow.keys() == by_local.keys()
    np.testing.assert_array_equal(np.array([by_mlflow[k] for k in sorted(by_local)]), np.array([by_local[k] for k in sorted(by_local)]))

    # the other URI forms load the same booster; unknown names and aliases are one line, exit 2
    local_model = load_model_dir(model)
    for uri in (f"models:/{REGISTERED}/1", f"runs:/{run_id}/model"):
        assert load_model_dir(resolve_model(uri)).model_str == local_model.model_str
    for uri, message in ((f"models:/{REGISTERED}@nope", "alias nope not found"), ("models:/no-such-model/1", "no-such-model not found")):
        with pytest.raises(ModelError, match=message):
            resolve_model(uri)
    capsys.readouterr()
    assert main(["predict", "--features", features, "--model", f"models:/{REGISTERED}@nope", "--output", str(tmp_path / "p-none"), *args], spark=spark) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vidspark: error: --model models:/vidspark-cctv@nope:") and "alias nope not found" in err[-1]

    # a server that is down costs a warning: the model directory is written whole, the job succeeds
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow retries for minutes by default (docs/operations.md)
    with caplog.at_level(logging.WARNING, logger="vidspark.tracking"):
        summary = _cli_json(capsys, ["train", "--features", features, "--model", str(tmp_path / "model-untracked"), "--folds", "3", *args], spark)
    assert "mlflow_run_id" not in summary and load_model_dir(tmp_path / "model-untracked").model_str == local_model.model_str
    assert "MLflow tracking at http://127.0.0.1:" in caplog.text and "model-untracked is kept but not logged" in caplog.text


@pytest.mark.slow
def test_a_model_directory_on_s3_is_logged_with_its_live_booster(mlflow_server, s3_client, bucket, monkeypatch):
    """log_training reads an object-store model directory (model.json names a content-addressed booster) and logs only the live files."""
    from vidspark.config import StorageConf
    from vidspark.train import fit_booster, lgb_params

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 8)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    meta = {"classes": ["a", "b"], "feature_dim": 8, "featurizer": "resnet50/random-seed0@32", "params": {"objective": "binary"}}
    report = {"folds": [{"fold": k, "accuracy": 0.5 + k / 10, "f1": 0.5} for k in range(2)], "overall_out_of_fold": {"accuracy": 0.6, "confusion_matrix": [[50, 10], [10, 50]]}}
    uri = f"s3://{bucket}/models/cars"
    for rounds in (5, 9):  # twice: the directory then also holds the previous booster
        model_str = fit_booster(lgb_params(Conf().train, 2), X, y, num_boost_round=rounds).model_to_string()
        save_model_dir(uri, model_str=model_str, meta=meta, cv_report=report, storage=StorageConf())
    assert len([o for o in s3_client.list_objects_v2(Bucket=bucket, Prefix="models/cars/")["Contents"] if o["Key"].rsplit("/", 1)[1].startswith("model-")]) == 2

    tracked = track(mlflow_server, monkeypatch)
    run_id = log_training(uri, {"rows": 120}, conf=Conf(), register="")
    assert run_id is not None
    live = json.loads(s3_client.get_object(Bucket=bucket, Key="models/cars/model.json")["Body"].read())["model_file"]
    assert {a.path for a in tracked.list_artifacts(run_id, "model")} == {"model/model.json", "model/cv_report.json", f"model/{live}"}
    assert [(m.step, m.value) for m in sorted(tracked.get_metric_history(run_id, "fold_accuracy"), key=lambda m: m.step)] == [(0, 0.5), (1, pytest.approx(0.6))]
    assert load_model_dir(resolve_model(f"runs:/{run_id}/model")).model_str == model_str
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(ConfigError, match="set MLFLOW_TRACKING_URI"):
        resolve_model(f"runs:/{run_id}/model")
