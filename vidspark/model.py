"""LightGBM model directory: save atomically, load with integrity and compatibility checks.

A model directory holds ``model.txt`` (LightGBM's native text, at its best iteration),
``model.json`` (classes, feature dimension, featurizer id, parameters, metrics, the SHA-256 of
``model.txt``), ``cv_report.json`` and ``confusion_matrix.png``. Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidspark.errors import ModelError
from vidspark.fs import FileSystem, is_hadoop_uri

MODEL_TXT = "model.txt"
MODEL_JSON = "model.json"
CV_REPORT = "cv_report.json"
CONFUSION_PNG = "confusion_matrix.png"


@dataclass(frozen=True)
class TrainedModel:
    """A loaded model: the booster's text, its metadata, and a lazily built booster."""

    model_str: str
    meta: Mapping[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def feature_dim(self) -> int:
        return int(self.meta["feature_dim"])

    @property
    def featurizer(self) -> str:
        return str(self.meta["featurizer"])

    def booster(self) -> Any:
        import lightgbm as lgb

        return lgb.Booster(model_str=self.model_str)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Per-class probabilities, shape ``(n, n_classes)``, in ``classes`` order."""
        return predict_proba(self.booster(), X, len(self.classes))


def predict_proba(booster: Any, X: np.ndarray, n_classes: int, *, num_threads: int = 0) -> np.ndarray:
    """Booster output as an ``(n, n_classes)`` probability matrix (binary models give one column).

    ``num_threads`` 0 lets LightGBM (OpenMP) use every core; a Spark task passes its own CPUs, or
    concurrent Python workers each spin up all cores' worth of OpenMP threads and slow each other down.
    """
    raw = np.asarray(booster.predict(X, num_threads=num_threads) if num_threads else booster.predict(X), dtype=np.float64)
    if n_classes == 2:
        raw = raw.reshape(-1)
        return np.column_stack([1.0 - raw, raw])
    return raw.reshape(len(X), n_classes)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def save_model_dir(
    model_dir: str | Path,
    *,
    model_str: str,
    meta: dict[str, Any],
    cv_report: dict[str, Any],
    write_extra: Callable[[Path], None] | None = None,
    spark: Any | None = None,
) -> str:
    """Write a model directory: a local path atomically, or any Hadoop URI (``s3a://``, ``hdfs://``...) through ``spark``.

    A reader sees either the previous complete model or the new complete model, never a mix (on
    object stores, whose renames are copies, a reader can briefly see the folder being moved).

    Raises
    ------
    ModelError
        If ``model_dir`` is a URI and no ``spark`` session is given to reach it.
    """
    if not is_hadoop_uri(str(model_dir)):
        return str(_save_local(model_dir, model_str=model_str, meta=meta, cv_report=cv_report, write_extra=write_extra))
    if spark is None:
        raise ModelError(f"model directory {str(model_dir)!r} is a URI: it is written through Spark's Hadoop FileSystem, and no session was given")
    with tempfile.TemporaryDirectory(prefix="vidspark-model-") as local:
        built = _save_local(Path(local) / "model", model_str=model_str, meta=meta, cv_report=cv_report, write_extra=write_extra)
        FileSystem(spark, str(model_dir)).put_dir(str(built), str(model_dir))
    return str(model_dir)


def _save_local(
    model_dir: str | Path,
    *,
    model_str: str,
    meta: dict[str, Any],
    cv_report: dict[str, Any],
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write a model directory atomically: built in a sibling temp folder, then renamed into place.

    A reader sees either the previous complete model or the new complete model, never a mix.
    """
    target = Path(model_dir).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "model_txt_sha256": sha256_text(model_str)}
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        (tmp / MODEL_TXT).write_text(model_str, encoding="utf-8")
        (tmp / MODEL_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
        (tmp / CV_REPORT).write_text(json.dumps(cv_report, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
        if write_extra is not None:
            write_extra(tmp)
        os.chmod(tmp, 0o755)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_model_dir(model_dir: str | Path, *, spark: Any | None = None) -> TrainedModel:
    """Load and check a model directory: a local path, or any Hadoop URI read through ``spark``.

    Raises
    ------
    ModelError
        If a file is missing, ``model.json`` is not valid, ``model.txt`` does not match the SHA-256
        recorded in ``model.json`` (truncated or replaced), or LightGBM cannot parse it.
    """
    if is_hadoop_uri(str(model_dir)):
        if spark is None:
            raise ModelError(f"model directory {str(model_dir)!r} is a URI: it is read through Spark's Hadoop FileSystem, and no session was given")
        fs = FileSystem(spark, str(model_dir))
        if not fs.exists(str(model_dir)):
            raise ModelError(f"model directory {str(model_dir)!r} does not exist: train a model with 'vidspark train' first")
        with tempfile.TemporaryDirectory(prefix="vidspark-model-") as local:
            fs.get_dir(str(model_dir), os.path.join(local, "model"))
            return load_model_dir(os.path.join(local, "model"))
    path = Path(model_dir).expanduser()
    txt, js = path / MODEL_TXT, path / MODEL_JSON
    for f in (txt, js):
        if not f.is_file():
            raise ModelError(f"model directory {str(path)!r} has no {f.name}: train a model with 'vidspark train' first")
    try:
        meta = json.loads(js.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{str(js)!r} is not valid JSON ({exc}); the model directory is damaged, train again") from exc
    for key in ("classes", "feature_dim", "featurizer", "model_txt_sha256"):
        if key not in meta:
            raise ModelError(f"{str(js)!r} lacks {key!r}; it was not written by vidspark train")
    model_str = txt.read_text(encoding="utf-8")
    if sha256_text(model_str) != meta["model_txt_sha256"]:
        raise ModelError(f"{str(txt)!r} does not match the checksum in model.json (truncated or replaced); train again")
    model = TrainedModel(model_str=model_str, meta=meta)
    try:
        booster = model.booster()
    except Exception as exc:  # lightgbm raises LightGBMError, a plain Exception subclass
        raise ModelError(f"LightGBM cannot read {str(txt)!r}: {exc}") from exc
    if booster.num_feature() != model.feature_dim:
        raise ModelError(f"{str(txt)!r} expects {booster.num_feature()} features but model.json says {model.feature_dim}")
    return model


def check_compatible(model: TrainedModel, *, featurizers: list[str], feature_dim: int | None) -> None:
    """Refuse features made by another featurizer or of another dimension than the model's.

    Raises
    ------
    ModelError
        Naming what the model expects and what the features hold.
    """
    others = sorted(set(featurizers) - {model.featurizer})
    if others:
        raise ModelError(
            f"the model was trained on features of {model.featurizer!r} but these features come from {others}: featurize again with the model's featurizer settings, or train a model on these features"
        )
    if feature_dim is not None and feature_dim != model.feature_dim:
        raise ModelError(f"the model expects {model.feature_dim} features per frame but these features have {feature_dim}")
