"""LightGBM model directory: save atomically, load with integrity and compatibility checks.

A model directory holds ``model.txt`` (LightGBM's native text, at its best iteration),
``model.json`` (classes, feature dimension, featurizer id, parameters, metrics, the SHA-256 of
``model.txt``), ``cv_report.json`` and ``confusion_matrix.png``. Nothing is pickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidspark.config import StorageConf
from vidspark.errors import ModelError, StorageError
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

    @property
    def model_id(self) -> str:
        """The SHA-256 of ``model.txt``: the ``model_id`` of every prediction row this model writes."""
        return str(self.meta["model_txt_sha256"])

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


# Hadoop filesystems whose rename is atomic: a model directory is staged beside its place and renamed in.
RENAMING_SCHEMES = frozenset({"file", "hdfs", "viewfs", "webhdfs", "swebhdfs", "ofs", "o3fs"})


def save_model_dir(
    model_dir: str | Path,
    *,
    model_str: str,
    meta: dict[str, Any],
    cv_report: dict[str, Any],
    write_extra: Callable[[Path], None] | None = None,
    spark: Any | None = None,
    storage: StorageConf | None = None,
) -> str:
    """Write a model directory so that a reader sees the previous complete model or the new one, never a mix.

    - a local path, or a Hadoop URI whose renames are atomic (``hdfs://``, ``file://``...): built
      in a sibling folder and renamed into place;
    - ``s3://`` (through boto3, like the input) and Hadoop object stores (``s3a://``, ``gs://``,
      ``abfs://``...), where a rename is a copy: the booster goes to an immutable
      ``model-<sha256[:16]>.txt``, then ``model.json``, which names it, is written last in one PUT:
      that single object is the commit. The previous model's file is kept (a reader that has just
      read the old ``model.json`` still finds it); older ones are deleted.

    Raises
    ------
    StorageError
        A URI whose filesystem is not available here (no connector) or cannot be written.
    ModelError
        A Hadoop URI and no ``spark`` session to reach it.
    """
    uri = str(model_dir)
    if not is_hadoop_uri(uri):
        return str(_save_local(model_dir, model_str=model_str, meta=meta, cv_report=cv_report, write_extra=write_extra))
    store = model_store(uri, spark=spark, storage=storage)
    with tempfile.TemporaryDirectory(prefix="vidspark-model-") as local:
        built = _save_local(Path(local) / "model", model_str=model_str, meta=meta, cv_report=cv_report, write_extra=write_extra)
        if isinstance(store, _HadoopStore) and store.scheme in RENAMING_SCHEMES:
            store.fs.put_dir(str(built), uri)
            return uri
        _commit(store, built)
    return uri


def _commit(store: _Store, built: Path) -> None:
    """Object-store commit of a locally built model directory: extras, the content-addressed booster, ``model.json`` last."""
    meta = json.loads((built / MODEL_JSON).read_text(encoding="utf-8"))
    model_file = f"model-{meta['model_txt_sha256'][:16]}.txt"
    previous = store.get(MODEL_JSON)
    before = set(store.names())  # only what existed before this commit may be cleaned up: a concurrent writer's booster is not ours to delete
    keep = {model_file}
    if previous is not None:
        with contextlib.suppress(ValueError, KeyError, AttributeError):
            keep.add(str(json.loads(previous).get("model_file", MODEL_TXT)))
    for f in sorted(built.iterdir()):
        if f.name not in (MODEL_TXT, MODEL_JSON):
            store.put(f.name, f.read_bytes())
    store.put(model_file, (built / MODEL_TXT).read_bytes())
    store.put(MODEL_JSON, (json.dumps({**meta, "model_file": model_file}, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8"))
    for name in sorted(before - keep):
        if name == MODEL_TXT or (name.startswith("model-") and name.endswith(".txt")):
            store.delete(name)


class _Store:
    """The files of one model directory on a store that is written object by object."""

    def get(self, name: str) -> bytes | None:
        raise NotImplementedError

    def put(self, name: str, data: bytes) -> None:
        raise NotImplementedError

    def names(self) -> list[str]:
        raise NotImplementedError

    def delete(self, name: str) -> None:
        raise NotImplementedError


class _S3Store(_Store):
    def __init__(self, uri: str, storage: StorageConf | None) -> None:
        from vidspark.storage import cached_s3_client, split_s3_uri

        self.uri = uri.rstrip("/")
        self.bucket, prefix = split_s3_uri(self.uri)
        self.prefix = prefix.rstrip("/") + "/" if prefix else ""
        self.client = cached_s3_client(storage or StorageConf())

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn()
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"model directory {self.uri}: cannot {what}: {exc}") from exc

    def get(self, name: str) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"].read())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise StorageError(f"model directory {self.uri}: cannot read {name}: {exc}") from exc
        except BotoCoreError as exc:  # endpoint unreachable, no credentials
            raise StorageError(f"model directory {self.uri}: cannot read {name}: {exc}") from exc

    def put(self, name: str, data: bytes) -> None:
        self._call(f"write {name}", lambda: self.client.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=data))

    def names(self) -> list[str]:
        pages = self._call("list", lambda: list(self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix, Delimiter="/")))
        return sorted(o["Key"][len(self.prefix) :] for page in pages for o in page.get("Contents", ()))

    def delete(self, name: str) -> None:
        self._call(f"delete {name}", lambda: self.client.delete_object(Bucket=self.bucket, Key=self.prefix + name))


class _HadoopStore(_Store):
    def __init__(self, uri: str, spark: Any) -> None:
        self.uri = uri.rstrip("/")
        self.scheme = uri.split("://", 1)[0].lower()
        try:
            self.fs = FileSystem(spark, self.uri)
        except Exception as exc:  # py4j wraps Hadoop's UnsupportedFileSystemException
            text = str(exc)
            if any(m in text for m in ("No FileSystem for scheme", "UnsupportedFileSystemException", "ClassNotFoundException")):
                missing = re.search(r"Class (\S+) not found", text)
                raise StorageError(
                    f"model directory {self.uri}: this Spark has no Hadoop FileSystem for '{self.scheme}://'"
                    + (f" ({missing.group(1)} is not on the classpath)" if missing else "")
                    + " (add its connector jar, e.g. hadoop-aws for s3a://), or use s3:// (vidspark's own S3 client), hdfs:// or a local path"
                ) from None
            raise StorageError(f"model directory {self.uri}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None

    def _path(self, name: str) -> str:
        return f"{self.uri}/{name}"

    def _call(self, what: str, fn: Callable[[], Any], hint: str = "") -> Any:
        try:
            return fn()
        except Exception as exc:  # py4j's Java exceptions: permissions, read-only filesystems (http://), the network
            first = next((line for line in str(exc).splitlines() if line.strip() and not line.startswith("An error occurred")), type(exc).__name__)
            raise StorageError(f"model directory {self.uri}: cannot {what} ({first.strip()[:300]}){hint}") from None

    def get(self, name: str) -> bytes | None:
        path = self._path(name)
        return self._call(f"read {name}", lambda: self.fs.read_bytes(path) if self.fs.exists(path) else None)

    def put(self, name: str, data: bytes) -> None:
        self._call(f"write {name}", lambda: self.fs.write_bytes(self._path(name), data), "; write the model to a writable location")

    def names(self) -> list[str]:
        return list(self._call("list", lambda: self.fs.list_names(self.uri)))

    def delete(self, name: str) -> None:
        self._call(f"delete {name}", lambda: self.fs.delete(self._path(name), recursive=False))


def model_store(uri: str, *, spark: Any | None, storage: StorageConf | None = None) -> _Store:
    """The store of a model directory URI: ``s3://`` through boto3, any other scheme through Spark's Hadoop FileSystem."""
    if uri.lower().startswith("s3://"):
        return _S3Store(uri, storage)
    if spark is None:
        raise ModelError(f"model directory {uri!r} is a URI: it is read and written through Spark's Hadoop FileSystem, and no session was given")
    return _HadoopStore(uri, spark)


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


def load_model_dir(model_dir: str | Path, *, spark: Any | None = None, storage: StorageConf | None = None) -> TrainedModel:
    """Load and check a model directory: a local path, ``s3://`` (boto3), or any Hadoop URI read through ``spark``.

    Raises
    ------
    ModelError
        If a file is missing, ``model.json`` is not valid, the booster file does not match the
        SHA-256 recorded in ``model.json`` (truncated or replaced), or LightGBM cannot parse it.
    StorageError
        A URI whose filesystem is not available here.
    """
    uri = str(model_dir)
    if is_hadoop_uri(uri):
        store = model_store(uri, spark=spark, storage=storage)
        js = store.get(MODEL_JSON)
        if js is None:
            raise ModelError(f"model directory {uri!r} does not exist or has no {MODEL_JSON}: train a model with 'vidspark train' first")
        meta = _parse_meta(js, f"{uri}/{MODEL_JSON}")
        name = str(meta.get("model_file", MODEL_TXT))
        txt = store.get(name)
        if txt is None:
            raise ModelError(f"model directory {uri!r} has no {name}: train a model with 'vidspark train' first")
        return _checked(txt.decode("utf-8"), meta, f"{uri}/{name}")
    path = Path(model_dir).expanduser()
    js_path = path / MODEL_JSON
    if not js_path.is_file():
        raise ModelError(f"model directory {str(path)!r} has no {MODEL_JSON}: train a model with 'vidspark train' first")
    meta = _parse_meta(js_path.read_bytes(), str(js_path))
    txt_path = path / str(meta.get("model_file", MODEL_TXT))
    if not txt_path.is_file():
        raise ModelError(f"model directory {str(path)!r} has no {txt_path.name}: train a model with 'vidspark train' first")
    return _checked(txt_path.read_text(encoding="utf-8"), meta, str(txt_path))


def _parse_meta(data: bytes, where: str) -> dict[str, Any]:
    try:
        meta = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{where!r} is not valid JSON ({exc}); the model directory is damaged, train again") from exc
    for key in ("classes", "feature_dim", "featurizer", "model_txt_sha256"):
        if key not in meta:
            raise ModelError(f"{where!r} lacks {key!r}; it was not written by vidspark train")
    return dict(meta)


def _checked(model_str: str, meta: dict[str, Any], where: str) -> TrainedModel:
    """The model, once its text matches the checksum and its header the metadata.

    The booster itself is parsed where it predicts (each Python worker, once): the driver reads the
    header alone, so a job that predicts nothing (a night with nothing new) never imports LightGBM.
    """
    if sha256_text(model_str) != meta["model_txt_sha256"]:
        raise ModelError(f"{where!r} does not match the checksum in model.json (truncated or replaced); train again")
    model = TrainedModel(model_str=model_str, meta=meta)
    n_features = booster_feature_count(model_str)
    if n_features is None:
        raise ModelError(f"LightGBM cannot read {where!r}: not a LightGBM text model (no 'tree' header with max_feature_idx)")
    if n_features != model.feature_dim:
        raise ModelError(f"{where!r} expects {n_features} features but model.json says {model.feature_dim}")
    return model


def booster_feature_count(model_str: str) -> int | None:
    """The number of features a LightGBM text model takes (its header's ``max_feature_idx`` + 1), or None when it has no such header."""
    head = model_str[:4096].splitlines()
    if not head or head[0].strip() != "tree":
        return None
    for line in head[1:]:
        if line.startswith("max_feature_idx="):
            try:
                return int(line.split("=", 1)[1]) + 1
            except ValueError:
                return None
    return None


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
