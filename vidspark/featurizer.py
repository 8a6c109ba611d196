"""ResNet50 featurizer: model factory cached per Python worker, numpy batches in and out.

Nothing here touches Spark, so it is testable on plain arrays. TensorFlow is imported inside the
factory, never at module import, so the driver and non-featurizing workers do not pay for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from vidspark.config import FeaturizerConf, StorageConf
from vidspark.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

FEATURE_DIM = 2048
_MODELS: dict[tuple[Any, ...], Any] = {}
_LOCK = threading.Lock()


def _is_special(weights: str) -> bool:
    return weights in ("imagenet", "random")


def featurizer_id(conf: FeaturizerConf, storage: StorageConf | None = None, *, s3_client: Any | None = None) -> str:
    """Identify backbone, weights and input size, so features of different models never mix.

    ``resnet50/imagenet@224``, ``resnet50/random-seed0@224``, or
    ``resnet50/file-<sha256[:16]>@224`` (``s3-<etag>`` for weights on S3).

    Raises
    ------
    ConfigError
        If a weights path does not exist.
    """
    w = conf.weights
    if w == "imagenet":
        wid = "imagenet"
    elif w == "random":
        wid = f"random-seed{conf.seed}"
    elif w.startswith("s3://"):
        from vidspark.storage import cached_s3_client

        client = s3_client or cached_s3_client(storage or StorageConf())
        bucket, _, key = w[5:].partition("/")
        try:
            head = client.head_object(Bucket=bucket, Key=key)
        except Exception as exc:  # botocore raises many classes; all mean "cannot use this file"
            raise ConfigError(f"conf key 'featurizer.weights': cannot read {w!r}: {exc}") from exc
        wid = "s3-" + str(head.get("ETag", "")).strip('"').replace("-", "")[:16]
    else:
        path = Path(w).expanduser()
        if not path.is_file():
            raise ConfigError(f"conf key 'featurizer.weights': {w!r} is not a file; allowed: imagenet, random, a local path or s3:// URI of a Keras ResNet50 'notop' weights file")
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        wid = "file-" + digest.hexdigest()[:16]
    return f"{conf.backbone}/{wid}@{conf.image_size}"


def _fetch_weights(uri: str, conf: FeaturizerConf, storage: StorageConf) -> str:
    """Download ``s3://`` weights once per machine into the cache folder; return the local path."""
    from vidspark.storage import cached_s3_client

    cache = Path(conf.cache_dir or os.path.join(tempfile.gettempdir(), "vidspark-cache")).expanduser()
    bucket, _, key = uri[5:].partition("/")
    target = cache / "weights" / bucket / key
    if target.is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    client = cached_s3_client(storage)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    os.close(fd)
    try:
        client.download_file(bucket, key, tmp)
        os.replace(tmp, target)  # atomic: concurrent workers never see a half file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return str(target)


def _seeded_init(model: Any, seed: int) -> None:
    """Glorot-uniform kernels, zero biases, identity batch-norm, from a numpy generator.

    Independent of TensorFlow's RNG state, so every Python worker builds the identical model.
    """
    rng = np.random.default_rng(seed)
    for var in model.weights:
        shape = tuple(var.shape)
        name = var.path if hasattr(var, "path") else var.name
        if len(shape) >= 2:
            receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
            fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            var.assign(rng.uniform(-limit, limit, size=shape).astype(np.float32))
        elif "gamma" in name or "moving_variance" in name:
            var.assign(np.ones(shape, np.float32))
        else:
            var.assign(np.zeros(shape, np.float32))


def build_model(conf: FeaturizerConf, storage: StorageConf | None = None) -> Any:
    """Build ResNet50 (no top, global average pooling, 2048 outputs) with the configured weights.

    Raises
    ------
    ModelError
        If ImageNet weights cannot be downloaded or a weights file cannot be loaded.
    """
    import tensorflow as tf

    if conf.threads > 0:
        with contextlib.suppress(RuntimeError):  # already initialised in this process: keep what it has
            tf.config.threading.set_intra_op_parallelism_threads(conf.threads)
            tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, conf.threads)))
    for gpu in tf.config.list_physical_devices("GPU"):
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)
    shape = (conf.image_size, conf.image_size, 3)
    w = conf.weights
    if w == "random":
        model = tf.keras.applications.ResNet50(include_top=False, weights=None, pooling="avg", input_shape=shape)
        _seeded_init(model, conf.seed)
        return model
    if w == "imagenet":
        try:
            return tf.keras.applications.ResNet50(include_top=False, weights="imagenet", pooling="avg", input_shape=shape)
        except Exception as exc:  # urllib/HTTP/OS errors differ by platform
            raise ModelError(
                "could not download the ImageNet ResNet50 weights (no route to the model hub?): put "
                "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 on a path every executor sees or in S3 and set "
                f"featurizer.weights to it; featurizer.weights=random only for tests. Cause: {type(exc).__name__}: {exc}"
            ) from exc
    path = _fetch_weights(w, conf, storage or StorageConf()) if w.startswith("s3://") else str(Path(w).expanduser())
    try:
        return tf.keras.applications.ResNet50(include_top=False, weights=path, pooling="avg", input_shape=shape)
    except Exception as exc:  # h5py/keras raise several classes for a bad file
        raise ModelError(f"cannot load ResNet50 weights from {w!r}: {type(exc).__name__}: {exc}") from exc


def cached_model(conf: FeaturizerConf, storage: StorageConf | None = None) -> Any:
    """The model for ``conf``, built at most once per Python worker process."""
    key = (os.getpid(), conf, storage)
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            logger.info("building %s featurizer in pid %d", conf.backbone, os.getpid())
            model = _MODELS[key] = build_model(conf, storage)
        return model


def preprocess(batch: np.ndarray) -> np.ndarray:
    """Caffe-style ImageNet preprocessing (RGB->BGR, mean subtraction), as Keras' ResNet50 expects."""
    x = batch.astype(np.float32)[..., ::-1]
    x -= np.array([103.939, 116.779, 123.68], dtype=np.float32)
    return x


def featurize_arrays(model: Any, images: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
    """Run uint8 ``(n, s, s, 3)`` images through the model in batches; ``(n, 2048)`` float32 out."""
    if len(images) == 0:
        return np.zeros((0, FEATURE_DIM), dtype=np.float32)
    out = []
    for start in range(0, len(images), batch_size):
        chunk = preprocess(images[start : start + batch_size])
        out.append(np.asarray(model.predict_on_batch(chunk), dtype=np.float32))
    return np.concatenate(out, axis=0)
