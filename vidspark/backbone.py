"""The ResNet50 backbone: model factory cached per Python worker, device and precision, numpy batches in and out.

Nothing here touches Spark, so it is testable on plain arrays. TensorFlow is imported inside the
factory, never at module import, so the driver and non-featurizing workers do not pay for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from vidspark.config import IMAGENET_NOTOP_FILE, IMAGENET_NOTOP_MD5, FeaturizerConf, StorageConf
from vidspark.errors import ConfigError, DeviceError, ModelError, WeightsUnavailable
from vidspark.gpus import Placement, placement
from vidspark.storage import split_s3_uri
from vidspark.tfquiet import import_tensorflow

logger = logging.getLogger(__name__)

FEATURE_DIM = 2048
_MODELS: dict[tuple[Any, ...], Any] = {}
_LOCK = threading.RLock()  # reentrant: a model that fails while being built (under the lock) forgets itself


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
        bucket, key = split_s3_uri(w)
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


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded weights: ``$KERAS_HOME/models``, else ``~/.keras/models``."""
    return Path(os.environ.get("KERAS_HOME") or os.path.join("~", ".keras")).expanduser() / "models"


def resolve_weights(conf: FeaturizerConf, storage: StorageConf | None = None, *, s3_client: Any | None = None, timeout: float = 10.0) -> str:
    """Where the weights will come from, as one line, checked from the driver without TensorFlow.

    ``imagenet``: the Keras cache, else a HEAD request to ``featurizer.imagenet_url`` (through the
    proxies of the environment, as Keras' own download goes); a local path or ``s3://`` object: it
    exists. Executors see their own network and cache: this says what the driver sees.

    Raises
    ------
    WeightsUnavailable
        ImageNet weights neither cached nor downloadable (exit code 5).
    ConfigError
        A weights path or object that does not exist (exit code 2).
    """
    w = conf.weights
    if w == "random":
        return f"random (seed {conf.seed}): for tests; the features mean nothing"
    if w == "imagenet":
        cached = keras_cache_dir() / IMAGENET_NOTOP_FILE
        if cached.is_file():
            return f"imagenet, cached at {cached}"
        import urllib.request

        try:
            with urllib.request.urlopen(urllib.request.Request(conf.imagenet_url, method="HEAD"), timeout=timeout):
                pass
        except Exception as exc:  # URLError, HTTPError, socket timeouts, proxy errors
            reason = getattr(exc, "reason", None) or exc
            raise WeightsUnavailable(
                f"featurizer.weights=imagenet: {IMAGENET_NOTOP_FILE} is not in the Keras cache ({cached.parent}) and {conf.imagenet_url} "
                f"cannot be reached ({reason}): put the file on a path every executor sees or in S3 and set featurizer.weights to it, "
                "or set featurizer.imagenet_url to a mirror"
            ) from exc
        return f"imagenet, downloadable from {conf.imagenet_url} (each machine caches it once)"
    return f"{w} ({featurizer_id(conf, storage, s3_client=s3_client)})"


def _fetch_weights(uri: str, conf: FeaturizerConf, storage: StorageConf) -> str:
    """Download ``s3://`` weights once per machine into the cache folder; return the local path."""
    from vidspark.storage import cached_s3_client

    cache = Path(conf.cache_dir or os.path.join(tempfile.gettempdir(), "vidspark-cache")).expanduser()
    bucket, key = split_s3_uri(uri)
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


_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
# CPU flags (as /proc/cpuinfo names them) that mean native bfloat16 arithmetic: AVX-512 BF16 (AMD Zen 4+,
# Intel Cooper Lake) and AMX (Intel Sapphire Rapids+). Without them bfloat16 is emulated, and slower than float32.
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# The flags that decide TensorFlow's CPU kernels, recorded with benchmarks and keyed into the calibration cache.
_SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "amx_tile", "neon", "asimd", "sve")


def cpu_info() -> dict[str, Any]:
    """This machine's CPU: model name, the flags that decide TensorFlow's kernels, and the usable core count.

    Linux reads ``/proc/cpuinfo``; elsewhere the model is :func:`platform.processor` and the flags are empty.
    """
    model: str = platform.processor() or platform.machine()
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            name = name.strip()
            if name in ("model name", "Model", "cpu model") and value.strip():
                model = value.strip()
            elif name in ("flags", "Features") and not flags:
                flags = set(value.split())
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return {"model": model, "flags": sorted(f for f in flags if f in _SPEED_FLAGS), "cores": cores}


def gpu_details(tf: Any, device: str) -> dict[str, Any] | None:
    """Name and compute capability of the GPU ``device`` (``/GPU:N``), or None on a CPU."""
    if not device.startswith("/GPU:"):
        return None
    gpus = tf.config.list_physical_devices("GPU")
    index = int(device.split(":")[1])
    details = tf.config.experimental.get_device_details(gpus[index]) if index < len(gpus) else {}
    cc = details.get("compute_capability")
    return {"name": details.get("device_name", f"GPU {index}"), "compute_capability": list(cc) if cc else None}


def auto_precision(gpu: dict[str, Any] | None, cpu_flags: list[str] | set[str]) -> str:
    """``featurizer.precision: auto``: the fastest precision this device computes natively.

    NVIDIA GPUs: bfloat16 from compute capability 8.0 (Ampere: bf16 tensor cores), mixed float16 on 7.x
    (Volta, Turing: float16 tensor cores only), float32 below. CPUs: bfloat16 only with native BF16
    (AVX-512 BF16 or AMX), else float32: emulated bfloat16 is slower than float32.
    """
    if gpu is not None:
        cc = tuple(gpu.get("compute_capability") or (0, 0))
        return "bfloat16" if cc >= (8, 0) else "float16" if cc >= (7, 0) else "float32"
    return "bfloat16" if any(f in cpu_flags for f in NATIVE_BF16_CPU_FLAGS) else "float32"


def task_cpus() -> int | None:
    """CPUs Spark gave the running task (``spark.task.cpus``), or None outside a Spark task."""
    try:
        from pyspark import TaskContext
    except ImportError:  # pragma: no cover - pyspark is a dependency
        return None
    ctx = TaskContext.get()
    return int(ctx.cpus()) if ctx is not None else None


def task_gpu() -> str | None:
    """Address of the GPU Spark assigned to the running task (``TaskContext.resources()["gpu"]``), or None."""
    try:
        from pyspark import TaskContext
    except ImportError:  # pragma: no cover
        return None
    ctx = TaskContext.get()
    if ctx is None:
        return None
    gpu = ctx.resources().get("gpu")
    return gpu.addresses[0] if gpu is not None and gpu.addresses else None


def choose_device(tf: Any, place: Placement | str | None) -> str:
    """The TensorFlow device for the task's placement (:mod:`vidspark.gpus`), with memory growth on the GPUs this process sees.

    Narrow mode: the worker sees the assigned GPU alone (``CUDA_VISIBLE_DEVICES``), ``/GPU:0``.
    Shared mode: ``/GPU:<index>`` among those it sees. No GPU assigned: the first GPU if there is
    one, else the CPU. Memory growth keeps a process from taking a GPU's memory whole. A GPU
    address alone (a string) is placed as on an executor of several GPUs.
    """
    if not isinstance(place, Placement):
        place = placement(place, executor_gpus=2, inherited=None, uuid_index={}) if place is not None else Placement(None, "none", None, None)
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        with contextlib.suppress(RuntimeError):  # already initialised in this process: growth was set then
            tf.config.experimental.set_memory_growth(gpu, True)
    if place.tf_index is None:
        return "/GPU:0" if gpus else "/CPU:0"
    if place.tf_index >= len(gpus):
        if not gpus and os.environ.get("VIDSPARK_GPU_SIMULATE"):  # tests: Spark's GPU scheduling on a machine without one
            return "/CPU:0"
        raise ModelError(
            f"Spark assigned GPU {place.address} ({place.mode} placement, TensorFlow device /GPU:{place.tf_index}) but this process sees {len(gpus)} GPUs "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
        )
    return f"/GPU:{place.tf_index}"


def configure_threads(tf: Any, conf: FeaturizerConf) -> None:
    """TensorFlow's thread pools: ``conf.threads``, else the task's CPUs; only possible before its runtime starts."""
    threads = conf.threads or task_cpus() or 0
    if threads <= 0:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1 if threads <= 2 else 2)
    except RuntimeError:
        current = tf.config.threading.get_intra_op_parallelism_threads()
        if current != threads:
            logger.warning("TensorFlow already started in pid %d with %s intra-op threads; keeping them (wanted %d)", os.getpid(), current or "default", threads)


def build_model(conf: FeaturizerConf, storage: StorageConf | None = None, *, precision: str | None = None) -> Any:
    """Build ResNet50 (no top, global average pooling, 2048 outputs) with the configured weights.

    ``precision`` (default ``conf.precision``; ``auto`` is resolved for this machine's CPU) other than
    float32 builds it under Keras' mixed policy (float32 variables, bfloat16 or float16 compute).

    Raises
    ------
    ModelError
        If ImageNet weights cannot be downloaded or a weights file cannot be loaded.
    """
    tf = import_tensorflow()
    configure_threads(tf, conf)
    precision = precision or conf.precision
    if precision == "auto":
        precision = auto_precision(None, cpu_info()["flags"])
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(_POLICIES[precision])
    try:
        return _build(tf, conf, storage)
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)


def _build(tf: Any, conf: FeaturizerConf, storage: StorageConf | None) -> Any:
    shape = (conf.image_size, conf.image_size, 3)
    w = conf.weights
    if w == "random":
        model = tf.keras.applications.ResNet50(include_top=False, weights=None, pooling="avg", input_shape=shape)
        _seeded_init(model, conf.seed)
        return model
    if w == "imagenet":
        try:  # what Keras' weights="imagenet" does, from featurizer.imagenet_url (a mirror on air-gapped clusters)
            path = tf.keras.utils.get_file(IMAGENET_NOTOP_FILE, conf.imagenet_url, cache_subdir="models", file_hash=IMAGENET_NOTOP_MD5)
        except Exception as exc:  # urllib/HTTP/OS errors differ by platform
            raise WeightsUnavailable(
                f"could not download the ImageNet ResNet50 weights from {conf.imagenet_url} (no route to the model hub?): put "
                f"{IMAGENET_NOTOP_FILE} on a path every executor sees or in S3 and set featurizer.weights to it, or set "
                f"featurizer.imagenet_url to a mirror; featurizer.weights=random only for tests. Cause: {type(exc).__name__}: {exc}"
            ) from exc
        return tf.keras.applications.ResNet50(include_top=False, weights=path, pooling="avg", input_shape=shape)
    path = _fetch_weights(w, conf, storage or StorageConf()) if w.startswith("s3://") else str(Path(w).expanduser())
    try:
        return tf.keras.applications.ResNet50(include_top=False, weights=path, pooling="avg", input_shape=shape)
    except tf.errors.OpError:  # the device failed (out of memory, CUDA), not the file: a DeviceError, by the caller
        raise
    except Exception as exc:  # h5py/keras raise several classes for a bad file
        raise ModelError(f"cannot load ResNet50 weights from {w!r}: {type(exc).__name__}: {exc}") from exc


# Batch sizes a calibration tries, in order, on CPUs and on GPUs; it stops at the first that is no faster.
CPU_BATCH_CANDIDATES = (16, 32, 64, 128)
GPU_BATCH_CANDIDATES = (32, 64, 128, 256, 512)
CALIBRATION_FILE = "calibration.json"


def cache_root(conf: FeaturizerConf) -> Path:
    """This machine's vidspark cache folder: ``featurizer.cache_dir``, else ``<tmp>/vidspark-cache``."""
    return Path(conf.cache_dir or os.path.join(tempfile.gettempdir(), "vidspark-cache")).expanduser()


class Featurizer:
    """A built model and its compiled call, on one device: uint8 frames in, float32 features out.

    The call is one ``tf.function`` traced once for any batch size (XLA: batches are padded to
    ``batch_size``, because XLA compiles one program per shape). ``precision: auto`` is resolved
    for the device (:func:`auto_precision`); ``batch_size: 0`` (``auto``) is measured on it
    (:meth:`calibrate`), or read from the calibration cached for this CPU/GPU model, precision,
    thread count and TensorFlow version.
    """

    def __init__(self, conf: FeaturizerConf, storage: StorageConf | None = None, *, gpu_address: str | None = None, place: Placement | None = None) -> None:
        tf = import_tensorflow()
        t0 = time.perf_counter()
        self.conf = conf
        self.import_s = 0.0
        configure_threads(tf, conf)  # first: entering a tf.device starts TensorFlow's runtime
        self.place = place if place is not None else placement(gpu_address, executor_gpus=2, inherited=None, uuid_index={}) if gpu_address is not None else Placement(None, "none", None, None)
        self.device = choose_device(tf, self.place)
        self.gpu = gpu_details(tf, self.device)
        cpu = cpu_info()
        self.precision = auto_precision(self.gpu, cpu["flags"]) if conf.precision == "auto" else conf.precision
        self._tf = tf
        self.batch_size = conf.batch_size
        try:
            with tf.device(self.device):
                self.model = build_model(conf, storage, precision=self.precision)
        except tf.errors.OpError as exc:  # CUDA could not start on the GPU (busy in EXCLUSIVE_PROCESS mode, a broken driver)
            raise self._device_error(exc, 0) from exc
        # uint8 frames in (a quarter of the bytes to the device), ImageNet preprocessing inside the compiled call
        spec = tf.TensorSpec((None, conf.image_size, conf.image_size, 3), tf.uint8)
        model = self.model
        mean = tf.constant([103.939, 116.779, 123.68], tf.float32)

        def features(x: Any) -> Any:
            bgr = tf.reverse(tf.cast(x, tf.float32), axis=[-1]) - mean  # RGB -> BGR, Caffe-style mean (what Keras' ResNet50 expects)
            return tf.cast(model(bgr, training=False), tf.float32)

        self._fn = tf.function(features, input_signature=[spec], jit_compile=conf.xla)
        # One batch shape per worker on a GPU and under XLA (the tail padded): cuDNN autotunes and XLA compiles per shape.
        self.fixed_shape = bool(conf.xla or self.gpu is not None)
        self.build_s = time.perf_counter() - t0
        self.versions = f"tensorflow {tf.__version__}, keras {tf.keras.__version__}"
        self.threads = conf.threads or task_cpus() or tf.config.threading.get_intra_op_parallelism_threads() or cpu["cores"]
        t1 = time.perf_counter()
        if conf.batch_size or not self.fixed_shape:  # a fixed shape with batch_size auto is first traced at the size chosen below
            warm = conf.batch_size if self.fixed_shape else min(conf.batch_size or 2, 2)  # the shape every call will have
            self._call(np.zeros((warm, conf.image_size, conf.image_size, 3), np.uint8), conf.batch_size or 2)
        self.warm_s = time.perf_counter() - t1  # tracing and graph optimisation of the first call
        self.calibration: dict[str, Any] = {"batch_size": conf.batch_size, "source": "featurizer.batch_size"}
        self.calibrate_s = 0.0
        if not conf.batch_size:
            t2 = time.perf_counter()
            self.calibration = self._calibrated(cpu)
            self.batch_size = int(self.calibration["batch_size"])
            self.calibrate_s = time.perf_counter() - t2
            if self.fixed_shape and self.calibration["source"] == "cached":  # a measured one already ran this shape
                t3 = time.perf_counter()
                self._call(np.zeros((self.batch_size, conf.image_size, conf.image_size, 3), np.uint8), self.batch_size)
                self.warm_s += time.perf_counter() - t3

    def hardware_key(self, cpu: dict[str, Any]) -> str:
        """What a calibration holds for: device model, precision, threads, input size, TensorFlow."""
        device = f"gpu {self.gpu['name']} cc{self.gpu['compute_capability']}" if self.gpu else f"cpu {cpu['model']} [{' '.join(cpu['flags'])}]"
        return f"{device} | {self.conf.backbone}@{self.conf.image_size} {self.precision} xla={self.conf.xla} threads={self.threads} | {self.versions}"

    def _calibrated(self, cpu: dict[str, Any]) -> dict[str, Any]:
        key = self.hardware_key(cpu)
        path = cache_root(self.conf) / CALIBRATION_FILE
        cached: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            cached = json.loads(path.read_text())
        if isinstance(cached.get(key), dict) and cached[key].get("batch_size"):
            return {**cached[key], "source": "cached", "file": str(path)}
        result = self.calibrate()
        with contextlib.suppress(OSError, ValueError):  # a cache that cannot be written only costs the next worker a calibration
            path.parent.mkdir(parents=True, exist_ok=True)
            latest: dict[str, Any] = {}
            with contextlib.suppress(OSError, ValueError):
                latest = json.loads(path.read_text())  # another worker may have written meanwhile
            latest[key] = result
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
            with os.fdopen(fd, "w") as fh:
                json.dump(latest, fh, indent=1, sort_keys=True)
            os.replace(tmp, path)
        logger.info("featurizer calibrated in pid %d: batch %s (%s frames/s by batch)", os.getpid(), result["batch_size"], result["fps_by_batch"])
        return {**result, "source": "measured", "file": str(path)}

    def calibrate(self, candidates: tuple[int, ...] | None = None, min_frames: int = 48) -> dict[str, Any]:
        """Measure frames/s at growing batch sizes (one untimed call each, then at least ``min_frames`` timed); keep the fastest.

        Stops at the first size that is not at least 3% faster than the best so far (larger batches
        only cost memory from there) and, on a GPU, at the first that runs out of memory.
        """
        candidates = candidates or (GPU_BATCH_CANDIDATES if self.gpu else CPU_BATCH_CANDIDATES)
        rng = np.random.default_rng(0)
        frames = rng.integers(0, 256, size=(max(candidates), self.conf.image_size, self.conf.image_size, 3), dtype=np.uint8)
        fps: dict[int, float] = {}
        for bs in candidates:
            try:
                self._call(frames[:bs], bs)
                t0 = time.perf_counter()
                done = 0
                while done < max(min_frames, bs):
                    self._call(frames[:bs], bs)
                    done += bs
                fps[bs] = done / (time.perf_counter() - t0)
            except DeviceError as exc:
                if not exc.out_of_memory or not fps:  # not even the smallest batch fits: the task fails, saying what to lower
                    raise
                break
            best = max(fps.values())
            if fps[bs] < best * 1.03 and len(fps) > 1:
                break
        best_bs = max(fps, key=lambda b: fps[b])
        return {"batch_size": best_bs, "fps_by_batch": {str(b): round(v, 2) for b, v in fps.items()}, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Features of uint8 ``(n, s, s, 3)`` images, in batches of ``batch_size``."""
        return self._call(images, self.batch_size)

    def _call(self, images: np.ndarray, bs: int) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, FEATURE_DIM), dtype=np.float32)
        out = []
        with self._tf.device(self.device):
            for start in range(0, len(images), bs):
                chunk = np.ascontiguousarray(images[start : start + bs], dtype=np.uint8)
                n = len(chunk)
                if self.fixed_shape and n < bs:
                    chunk = np.concatenate([chunk, np.zeros((bs - n, *chunk.shape[1:]), np.uint8)])
                try:
                    out.append(self._fn(self._tf.constant(chunk)).numpy()[:n])
                except self._tf.errors.OpError as exc:  # the input is a checked uint8 batch of one shape: any runtime error here is the device's
                    forget(self)  # nothing in this process may use a model whose device failed
                    raise self._device_error(exc, len(chunk)) from exc
        return np.concatenate(out, axis=0)

    def _device_error(self, exc: Exception, batch: int) -> DeviceError:
        """A fault of the device (out of memory, a CUDA error) as one message: which device, which batch, what to lower."""
        oom = isinstance(exc, self._tf.errors.ResourceExhaustedError)
        where = f"GPU {self.place.address} ({(self.gpu or {}).get('name', 'GPU')}, {self.device})" if self.gpu is not None or self.place.address else f"the CPU ({self.device}, host memory)"
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        if oom:
            hint = (
                f"lower featurizer.batch_size (now {self.batch_size or 'auto'}) or give each task a larger GPU share (featurizer.task_gpus, now {self.conf.task_gpus or 'auto'}: fewer tasks per GPU)"
                if self.gpu is not None
                else f"lower featurizer.batch_size (now {self.batch_size or 'auto'}) or give executors more memory"
            )
            message = f"out of memory on {where} in a batch of {batch} frames ({self.precision}, {self.conf.image_size} px): {hint}. Cause: {first}"
        else:
            message = (
                f"device error on {where} in a batch of {batch} frames: {first}. The task fails and Spark retries it in a new Python worker; "
                "if it repeats on this GPU, check nvidia-smi and the kernel log (Xid errors)"
            )
        return DeviceError(message, out_of_memory=oom)

    def describe(self) -> str:
        """``batch 32 (measured), bfloat16, 2 threads, /CPU:0``: what the run record counts tasks under."""
        return f"batch {self.batch_size} ({self.calibration.get('source')}), {self.precision}, {self.threads} threads, {self.device}"


# FeaturizerConf keys that decide nothing in the model (how frames are fetched, decoded and skipped): a worker's
# cached model serves every value of them, so a job that changes only these builds no model again.
_NOT_MODEL_KEYS = ("fetch_threads", "max_image_pixels", "decode_timeout_s", "warm_up", "decode_mode", "skip_static")


def model_conf(conf: FeaturizerConf) -> FeaturizerConf:
    """``conf`` with the keys that do not change the model at their defaults: what a cached model is keyed by."""
    defaults = FeaturizerConf()
    return dataclasses.replace(conf, **{k: getattr(defaults, k) for k in _NOT_MODEL_KEYS})


def model_is_cached(conf: FeaturizerConf, storage: StorageConf | None = None) -> bool:
    """Whether this Python worker already built the featurizer for ``conf`` (and this task's GPU)."""
    with _LOCK:
        return (os.getpid(), model_conf(conf), storage, task_gpu()) in _MODELS


def forget(model: Featurizer) -> None:
    """Drop ``model`` from this worker's cache (its device failed: the next task builds anew, or the worker exits)."""
    with contextlib.suppress(Exception), _LOCK:
        for key in [k for k, v in _MODELS.items() if v is model]:
            del _MODELS[key]


def _tensorflow_started() -> bool:
    import sys

    return "tensorflow" in sys.modules


def task_placement(executor_gpus: float) -> Placement:
    """This task's :class:`~vidspark.gpus.Placement`, with visibility narrowed where it can be (before TensorFlow starts).

    Narrow mode needs ``CUDA_VISIBLE_DEVICES`` set before TensorFlow's first GPU query in this process;
    a worker where TensorFlow already started without it (warmed by a task with no GPU) places the
    model explicitly instead, as on a shared executor.
    """
    address = task_gpu()
    place = placement(address, executor_gpus=executor_gpus, inherited=os.environ.get("CUDA_VISIBLE_DEVICES"))
    if place.mode != "narrow":
        return place
    if not _tensorflow_started():
        os.environ["CUDA_VISIBLE_DEVICES"] = str(place.visible)
        return place
    if os.environ.get("CUDA_VISIBLE_DEVICES") == place.visible:
        return place
    logger.warning("TensorFlow started in pid %d before a GPU was assigned: GPU %s is placed explicitly, not narrowed", os.getpid(), address)
    return placement(address, executor_gpus=2, inherited=os.environ.get("CUDA_VISIBLE_DEVICES"))


def cached_model(conf: FeaturizerConf, storage: StorageConf | None = None, *, executor_gpus: float = 0.0) -> Featurizer:
    """The featurizer for ``conf`` on this task's GPU (if any), built at most once per Python worker process.

    ``executor_gpus``: ``spark.executor.resource.gpu.amount`` (decides narrow or shared placement,
    :mod:`vidspark.gpus`). A worker keeps models for one GPU at most: building for another drops them.
    A new one carries ``import_s``, ``build_s`` and ``warm_s`` (TensorFlow import, model build, first call).
    """
    gpu = task_gpu()
    conf = model_conf(conf)
    key = (os.getpid(), conf, storage, gpu)
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            place = task_placement(executor_gpus)
            others = [k for k in _MODELS if k[0] == os.getpid() and k[3] != gpu]
            for k in others:  # a reused worker of a multi-GPU executor, now serving another GPU: one model (and memory pool) at a time
                del _MODELS[k]
            if others:
                import gc

                gc.collect()
            logger.info("building %s featurizer in pid %d (gpu %s, %s)", conf.backbone, os.getpid(), gpu, place.mode)
            t0 = time.perf_counter()
            import_tensorflow()  # timed apart: the largest part of a fresh worker's start

            import_s = time.perf_counter() - t0
            model = _MODELS[key] = Featurizer(conf, storage, place=place)
            model.import_s = import_s
        return model


def preprocess(batch: np.ndarray) -> np.ndarray:
    """Caffe-style ImageNet preprocessing (RGB->BGR, mean subtraction), as Keras' ResNet50 expects."""
    x = batch.astype(np.float32)[..., ::-1]
    x -= np.array([103.939, 116.779, 123.68], dtype=np.float32)
    return x


def featurize_arrays(model: Any, images: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
    """Run uint8 ``(n, s, s, 3)`` images through a Keras model in batches; ``(n, 2048)`` float32 out."""
    if isinstance(model, Featurizer):
        return model(images)
    if len(images) == 0:
        return np.zeros((0, FEATURE_DIM), dtype=np.float32)
    out = []
    for start in range(0, len(images), batch_size):
        chunk = preprocess(images[start : start + batch_size])
        out.append(np.asarray(model.predict_on_batch(chunk), dtype=np.float32))
    return np.concatenate(out, axis=0)
