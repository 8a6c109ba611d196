"""Experiment tracking with MLflow, for teams that run a tracking server: optional, off unless asked for.

With the ``mlflow`` extra installed (``pip install 'vidspark[mlflow]'``, the ``mlflow-skinny``
client) and ``MLFLOW_TRACKING_URI`` set, :func:`log_training` logs a finished training as an MLflow
run: the LightGBM parameters and the training conf as params, the metrics of every CV fold
(``step`` = fold) and the pooled out-of-fold ones, the confusion matrix, and the model directory as
the run's ``model/`` artifacts; ``VIDSPARK_MLFLOW_REGISTER=NAME[@ALIAS]`` also registers that
directory as a version of the registered model NAME and points ALIAS at it. :func:`resolve_model`
turns ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` and ``runs:/RUN_ID/model`` into a local copy
of the model directory, which :func:`vidspark.model.load_model_dir` reads like any other.

Without ``MLFLOW_TRACKING_URI`` (and for any other ``--model``) nothing here imports mlflow. A
tracking server that fails while a training is logged costs a warning, never the trained model:
the model directory is written before anything is sent.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from vidspark import __version__
from vidspark.config import Conf, StorageConf, redacted
from vidspark.errors import ConfigError, EnvironmentProblem, ModelError, StorageError
from vidspark.fs import is_hadoop_uri
from vidspark.model import CONFUSION_PNG, CV_REPORT, MODEL_JSON, MODEL_TXT

logger = logging.getLogger(__name__)

TRACKING_ENV = "MLFLOW_TRACKING_URI"
REGISTRY_ENV = "MLFLOW_REGISTRY_URI"
REGISTER_ENV = "VIDSPARK_MLFLOW_REGISTER"
DEFAULT_EXPERIMENT = "vidspark"  # when neither MLFLOW_EXPERIMENT_ID nor MLFLOW_EXPERIMENT_NAME is set
MODEL_ARTIFACT_PATH = "model"  # the model directory's place among the run's artifacts: runs:/RUN_ID/model
MLFLOW_URI_PREFIXES = ("models:/", "runs:/")
INSTALL_HINT = "pip install 'vidspark[mlflow]'"

FOLD_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "best_iteration", "n")
POOLED_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")
# MLflow's limits: a param value of at most 6000 characters, at most 1000 metrics, 100 params and 100 tags per log_batch call.
PARAM_VALUE_MAX = 6000
BATCH = {"metrics": 1000, "params": 100, "tags": 100}
_REGISTER = re.compile(r"^(?P<name>[^@/:]+?)(?:@(?P<alias>[A-Za-z_][\w-]*))?$")


def tracking_uri() -> str | None:
    """The MLflow tracking URI from ``MLFLOW_TRACKING_URI``, None when unset or empty (tracking off)."""
    return os.environ.get(TRACKING_ENV, "").strip() or None


def is_mlflow_uri(uri: str) -> bool:
    """Whether ``--model`` names an MLflow model (``models:/...`` or ``runs:/...``) rather than a model directory."""
    return uri.startswith(MLFLOW_URI_PREFIXES)


def registration_target(value: str, *, key: str = REGISTER_ENV) -> tuple[str, str | None]:
    """``NAME`` or ``NAME@ALIAS`` as ``(name, alias or None)``; ``key`` is where the value came from, for the message.

    Raises
    ------
    ConfigError
        A value that is not a registered model name optionally followed by ``@alias``.
    """
    m = _REGISTER.match(value.strip())
    if not m:
        raise ConfigError(f"{key} {value!r}: expected NAME or NAME@ALIAS (a registered model name without '/', ':' or '@'; an alias of letters, digits, '_' and '-' starting with a letter or '_')")
    return m.group("name").strip(), m.group("alias")


def _mlflow(purpose: str) -> Any:
    """Import mlflow, or say in one line which extra provides it."""
    try:
        import mlflow
    except ImportError as exc:
        raise EnvironmentProblem(f"{purpose} needs the MLflow client, which is not installed ({exc}): {INSTALL_HINT}") from None
    return mlflow


def _first_line(exc: BaseException) -> str:
    """An exception as one short line (MLflow's messages carry the server's whole answer)."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {text[:300]}"


def log_training(
    model_dir: str,
    summary: Mapping[str, Any],
    *,
    conf: Conf,
    run_id: str | None = None,
    register: str | None = None,
    spark: Any | None = None,
) -> str | None:
    """Log a finished training to MLflow when ``MLFLOW_TRACKING_URI`` is set; a no-op (mlflow not imported) otherwise.

    The run (in experiment ``MLFLOW_EXPERIMENT_ID``, else ``MLFLOW_EXPERIMENT_NAME``, else
    ``vidspark``; named after ``run_id``) gets: params, the LightGBM parameters of ``model.json``
    under their own names and the training conf as ``train.*``; metrics ``fold_*`` at ``step`` =
    fold, ``cv_*`` (pooled out of fold), ``cv_mean_*``, ``cv_std_*``, ``rows`` and the timings;
    artifacts ``model/`` (the model directory), ``confusion_matrix.png``, ``confusion_matrix.json``
    and ``conf.json`` (secrets redacted); tags ``vidspark.*``. Any failure of the tracking server
    or the client is logged as a warning and returns None: the model directory is already written.

    Parameters
    ----------
    model_dir
        The model directory :func:`vidspark.train.train` wrote: a local path, ``s3://`` or a Hadoop
        URI (read through ``spark``).
    summary
        What :func:`vidspark.train.train` returned (rows, timings, features).
    conf
        The job's conf: ``train.*`` becomes params, the redacted whole an artifact.
    run_id
        The vidspark run id: the MLflow run's name and tag ``vidspark.run_id``.
    register
        ``NAME`` or ``NAME@ALIAS``: register the model directory as a new version of NAME (and
        point ALIAS at it). Default ``VIDSPARK_MLFLOW_REGISTER``; empty: do not register.
    spark
        The session, for a model directory at a Hadoop URI.

    Returns
    -------
    str or None
        The MLflow run id, or None when tracking is off or the run could not be logged whole.
    """
    uri = tracking_uri()
    register = (os.environ.get(REGISTER_ENV, "") if register is None else register).strip() or None
    if uri is None:
        if register:
            logger.warning("%s=%s is set but %s is not: the model is neither logged nor registered", REGISTER_ENV, register, TRACKING_ENV)
        return None
    try:
        _mlflow(f"{TRACKING_ENV} is set: logging the training")
        target = registration_target(register) if register else None
    except (EnvironmentProblem, ConfigError) as exc:
        logger.warning("%s; the model at %s is kept but not logged to MLflow", exc, model_dir)
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    mlflow_run_id: str | None = None
    try:
        with _local_model_dir(model_dir, spark=spark, storage=conf.storage) as local:
            meta = json.loads((local / MODEL_JSON).read_text(encoding="utf-8"))
            report = json.loads((local / CV_REPORT).read_text(encoding="utf-8"))
            run = client.create_run(_experiment_id(client), run_name=run_id, tags=_tags(meta, summary, model_dir=model_dir, run_id=run_id))
            mlflow_run_id = run.info.run_id
            _log_batches(client, mlflow_run_id, params=_params(meta, conf), metrics=_metrics(report, summary))
            client.log_artifacts(mlflow_run_id, str(local), artifact_path=MODEL_ARTIFACT_PATH)
            if (local / CONFUSION_PNG).is_file():
                client.log_artifact(mlflow_run_id, str(local / CONFUSION_PNG))
            oof = report.get("overall_out_of_fold", {})
            client.log_dict(mlflow_run_id, {"classes": meta["classes"], "rows": "true class", "columns": "predicted class", "matrix": oof.get("confusion_matrix")}, "confusion_matrix.json")
            client.log_dict(mlflow_run_id, redacted(conf), "conf.json")
            with contextlib.redirect_stdout(io.StringIO()):  # MLflow prints the run's URL on stdout, where the CLI prints its JSON summary
                client.set_terminated(mlflow_run_id, "FINISHED")
    except Exception as exc:  # MlflowException, requests' connection errors, a store that cannot be read: none may fail the training
        logger.warning("MLflow tracking at %s failed (%s): the model at %s is kept but not logged%s", uri, _first_line(exc), model_dir, f" (run {mlflow_run_id} left FAILED)" if mlflow_run_id else "")
        if mlflow_run_id is not None:
            with contextlib.suppress(Exception), contextlib.redirect_stdout(io.StringIO()):
                client.set_terminated(mlflow_run_id, "FAILED")
        return None
    logger.info("MLflow run %s logged to %s (experiment %s)", mlflow_run_id, uri, run.info.experiment_id)
    if target is not None:
        _register(client, mlflow_run_id, *target)
    return mlflow_run_id


def _register(client: Any, run_id: str, name: str, alias: str | None) -> None:
    """Register ``runs:/RUN_ID/model`` as a new version of ``name`` and point ``alias`` at it; a failure is a warning."""
    from mlflow.exceptions import MlflowException

    try:
        try:
            client.create_registered_model(name, description="LightGBM classifier on CNN features, trained by vidspark (model directory: model.txt, model.json)")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        version = client.create_model_version(name, source=f"runs:/{run_id}/{MODEL_ARTIFACT_PATH}", run_id=run_id, tags={"vidspark.version": __version__})
        if alias:
            client.set_registered_model_alias(name, alias, version.version)
    except Exception as exc:  # as for the run: the registry failing must not fail the training
        logger.warning("MLflow model registry: could not register run %s as %s%s (%s); the run is logged", run_id, name, f"@{alias}" if alias else "", _first_line(exc))
        return
    logger.info("registered models:/%s/%s%s", name, version.version, f" (alias {alias}: models:/{name}@{alias})" if alias else "")


def _experiment_id(client: Any) -> str:
    """``MLFLOW_EXPERIMENT_ID``, or the id of ``MLFLOW_EXPERIMENT_NAME`` (default ``vidspark``), created when missing."""
    from mlflow.exceptions import MlflowException

    if os.environ.get("MLFLOW_EXPERIMENT_ID", "").strip():
        return os.environ["MLFLOW_EXPERIMENT_ID"].strip()
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or DEFAULT_EXPERIMENT
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException:  # created meanwhile by a concurrent training
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= PARAM_VALUE_MAX else text[: PARAM_VALUE_MAX - 1] + "…"


def _params(meta: Mapping[str, Any], conf: Conf) -> dict[str, str]:
    """The LightGBM parameters the booster was trained with, the ``train.*`` conf and what the model was trained on."""
    params = {str(k): _param_value(v) for k, v in sorted(dict(meta.get("params", {})).items())}
    for key, value in sorted(redacted(conf)["train"].items()):
        if key != "params":  # already merged into the LightGBM parameters above
            params[f"train.{key}"] = _param_value(value)
    params["featurizer"] = _param_value(meta.get("featurizer"))
    params["feature_dim"] = _param_value(meta.get("feature_dim"))
    params["classes"] = _param_value(list(meta.get("classes", [])))
    return params


def _metrics(report: Mapping[str, Any], summary: Mapping[str, Any]) -> list[tuple[str, float, int]]:
    """``(key, value, step)``: every fold's metrics at step = fold, then the pooled, mean and std ones at step 0."""
    out: list[tuple[str, float, int]] = []
    for fold in report.get("folds", []):
        for m in FOLD_METRICS:
            if fold.get(m) is not None:
                out.append((f"fold_{'rows' if m == 'n' else m}", float(fold[m]), int(fold["fold"])))
    pooled = report.get("overall_out_of_fold", {})
    out += [(f"cv_{m}", float(pooled[m]), 0) for m in POOLED_METRICS if pooled.get(m) is not None]
    out += [(f"cv_mean_{m}", float(v), 0) for m, v in sorted(report.get("mean_over_folds", {}).items()) if v is not None]
    out += [(f"cv_std_{m}", float(v), 0) for m, v in sorted(report.get("std_over_folds", {}).items()) if v is not None]
    for key in ("rows", "n_splits", "best_iteration"):
        if summary.get(key) is not None:
            out.append((key, float(summary[key]), 0))
    out += [(f"time_{k}", float(v), 0) for k, v in sorted(dict(summary.get("timings", {})).items())]
    return out


def _tags(meta: Mapping[str, Any], summary: Mapping[str, Any], *, model_dir: str, run_id: str | None) -> dict[str, str]:
    tags = {
        "vidspark.version": __version__,
        "vidspark.model_dir": str(model_dir),
        "vidspark.model_txt_sha256": str(meta.get("model_txt_sha256", "")),
        "vidspark.featurizer": str(meta.get("featurizer", "")),
        "vidspark.features": str(summary.get("features", meta.get("features", ""))),
    }
    if run_id:
        tags["vidspark.run_id"] = run_id
    return tags


def _log_batches(client: Any, run_id: str, *, params: Mapping[str, str], metrics: list[tuple[str, float, int]]) -> None:
    """Params and metrics in as few ``log_batch`` calls as MLflow's per-call limits allow."""
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    p = [Param(k, v) for k, v in params.items()]
    m = [Metric(k, v, now, step) for k, v, step in metrics]
    for i in range(0, len(p), BATCH["params"]):
        client.log_batch(run_id, params=p[i : i + BATCH["params"]])
    for i in range(0, len(m), BATCH["metrics"]):
        client.log_batch(run_id, metrics=m[i : i + BATCH["metrics"]])


@contextlib.contextmanager
def _local_model_dir(model_dir: str, *, spark: Any | None, storage: StorageConf) -> Iterator[Path]:
    """The model directory as a local folder: itself, or its files copied from ``s3://`` or a Hadoop URI."""
    if not is_hadoop_uri(model_dir):
        yield Path(model_dir).expanduser()
        return
    from vidspark.model import model_store

    store = model_store(model_dir, spark=spark, storage=storage)
    with tempfile.TemporaryDirectory(prefix="vidspark-mlflow-") as tmp:
        meta = store.get(MODEL_JSON)
        if meta is None:
            raise ModelError(f"model directory {model_dir!r} has no {MODEL_JSON}")
        # Only the live model: an object store's directory also keeps the previous booster file.
        names = {MODEL_JSON, CV_REPORT, CONFUSION_PNG, str(json.loads(meta).get("model_file", MODEL_TXT))}
        for name in sorted(names):
            data = meta if name == MODEL_JSON else store.get(name)
            if data is not None:
                (Path(tmp) / name).write_bytes(data)
        yield Path(tmp)


def resolve_model(uri: str) -> str:
    """A local model directory for ``--model``: an MLflow model URI downloaded, anything else returned as it is.

    ``models:/NAME@ALIAS`` is pinned to the version the alias points at now (logged), then that
    version's artifacts are downloaded; ``models:/NAME/VERSION`` and ``runs:/RUN_ID/model`` are
    downloaded as they are. The copy lives in a temporary folder removed when the process exits.
    Only an MLflow URI imports mlflow.

    Parameters
    ----------
    uri
        ``--model`` as given.

    Returns
    -------
    str
        ``uri`` itself, or the local folder holding the downloaded model directory.

    Raises
    ------
    EnvironmentProblem
        An MLflow URI and no MLflow client installed.
    ConfigError
        An MLflow URI and neither ``MLFLOW_TRACKING_URI`` nor ``MLFLOW_REGISTRY_URI`` set, or a URI without a model name.
    ModelError
        No such registered model, version, alias or run, or artifacts that hold no ``model.json``.
    StorageError
        The tracking server cannot be reached or fails.
    """
    if not is_mlflow_uri(uri):
        return uri
    mlflow = _mlflow(f"--model {uri}")
    where = os.environ.get(REGISTRY_ENV, "").strip() if uri.startswith("models:/") else ""
    where = where or tracking_uri() or ""
    if not where:
        raise ConfigError(f"--model {uri}: set {TRACKING_ENV} to the MLflow tracking server that holds the model (or {REGISTRY_ENV} for a separate registry)")
    path = uri.split(":/", 1)[1].strip("/")
    if not path.split("/", 1)[0].split("@", 1)[0]:
        raise ConfigError(f"--model {uri!r}: expected models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model")
    from mlflow.exceptions import MlflowException

    source = uri
    try:
        if uri.startswith("models:/") and "@" in path:
            name, alias = path.split("@", 1)
            version = mlflow.MlflowClient().get_model_version_by_alias(name, alias)
            source = f"models:/{name}/{version.version}"  # this version, even if the alias moves while it downloads
            logger.info("%s is version %s (run %s)", uri, version.version, version.run_id)
        dst = tempfile.mkdtemp(prefix="vidspark-mlflow-model-")
        atexit.register(shutil.rmtree, dst, ignore_errors=True)
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=dst)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise ModelError(f"--model {uri}: {_first_line(exc)}") from None
        raise StorageError(f"--model {uri}: the MLflow server at {where} failed: {_first_line(exc)}") from None
    except OSError as exc:  # requests' connection errors are OSErrors
        raise StorageError(f"--model {uri}: the MLflow server at {where} cannot be reached: {_first_line(exc)}") from None
    if not (Path(local) / MODEL_JSON).is_file():
        raise ModelError(f"--model {uri}: its artifacts hold no {MODEL_JSON}; use a model that vidspark train logged (runs:/RUN_ID/{MODEL_ARTIFACT_PATH}) or registered")
    logger.info("model %s downloaded to %s", source, local)
    return str(local)
