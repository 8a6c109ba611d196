from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from vidspark.backbone import FEATURE_DIM, build_model, featurize_arrays, featurizer_id, preprocess
from vidspark.config import FeaturizerConf
from vidspark.errors import ConfigError

PROBE = """
import numpy as np, sys
from vidspark.config import FeaturizerConf
from vidspark.backbone import build_model, featurize_arrays
x = np.random.default_rng(5).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
model = build_model(FeaturizerConf(weights="random", seed=3, precision="float32", image_size=64))
np.save(sys.argv[1], featurize_arrays(model, x))
import hashlib
print(hashlib.sha256(b"".join(np.ascontiguousarray(w).tobytes() for w in model.get_weights())).hexdigest())
"""


def weights_digest(model) -> str:
    """SHA-256 of every weight of the Keras ``model``, in order: equal only for bit-identical weights."""
    import hashlib

    return hashlib.sha256(b"".join(np.ascontiguousarray(w).tobytes() for w in model.get_weights())).hexdigest()


@pytest.fixture(scope="module")
def small_model():
    return build_model(FeaturizerConf(weights="random", seed=3, precision="float32", image_size=64))


def test_random_weights_are_identical_in_another_process(small_model, tmp_path):
    """Every Python worker must build the same model, or features from two executors would not mix."""
    x = np.random.default_rng(5).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    here = featurize_arrays(small_model, x)
    probe = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "f.npy")], check=True, timeout=300, capture_output=True, text=True)
    assert probe.stdout.strip().splitlines()[-1] == weights_digest(small_model)  # the same weights, bit for bit
    # the same features, up to float32 summation order (oneDNN picks kernels by the threads a process has)
    np.testing.assert_allclose(np.load(tmp_path / "f.npy"), here, rtol=1e-4, atol=1e-5)
    assert here.shape == (2, FEATURE_DIM) and here.dtype == np.float32
    assert np.isfinite(here).all() and here.std() > 0


def test_batches_give_the_same_features_as_one_call(small_model):
    x = np.random.default_rng(6).integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(featurize_arrays(small_model, x, batch_size=2), featurize_arrays(small_model, x, batch_size=5), rtol=1e-4, atol=1e-5)
    assert featurize_arrays(small_model, x[:0]).shape == (0, FEATURE_DIM)


def test_different_images_give_different_features(small_model):
    a = np.zeros((1, 64, 64, 3), np.uint8)
    b = np.full((1, 64, 64, 3), 200, np.uint8)
    fa, fb = featurize_arrays(small_model, a), featurize_arrays(small_model, b)
    assert np.abs(fa - fb).max() > 1e-3


def test_preprocess_is_caffe_bgr_mean_subtraction():
    x = np.zeros((1, 1, 1, 3), np.uint8)
    x[..., 0] = 255  # red
    out = preprocess(x)
    np.testing.assert_allclose(out[0, 0, 0], [-103.939, -116.779, 255 - 123.68], rtol=1e-6)


def test_featurizer_ids(tmp_path):
    assert featurizer_id(FeaturizerConf(weights="random", seed=4)) == "resnet50/random-seed4@224"
    assert featurizer_id(FeaturizerConf(weights="imagenet")) == "resnet50/imagenet@224"
    w = tmp_path / "w.h5"
    w.write_bytes(b"weights")
    fid = featurizer_id(FeaturizerConf(weights=str(w), image_size=256))
    assert fid.startswith("resnet50/file-") and fid.endswith("@256")
    with pytest.raises(ConfigError, match="featurizer.weights"):
        featurizer_id(FeaturizerConf(weights=str(tmp_path / "missing.h5")))


def test_weights_file_round_trip(small_model, tmp_path):
    """A local weights file (the air-gapped path) loads into the same model."""
    path = tmp_path / "resnet50_notop.weights.h5"
    small_model.save_weights(path)
    loaded = build_model(FeaturizerConf(weights=str(path), precision="float32", image_size=64))
    x = np.random.default_rng(8).integers(0, 255, (1, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(featurize_arrays(loaded, x), featurize_arrays(small_model, x), rtol=1e-5, atol=1e-6)


def test_weights_from_s3_fetched_once_into_cache(small_model, s3_client, bucket, s3_endpoint, tmp_path):
    """The air-gapped path with weights in object storage: download to the cache, then load."""
    from vidspark.config import StorageConf

    path = tmp_path / "w.weights.h5"
    small_model.save_weights(path)
    s3_client.upload_file(str(path), bucket, "models/resnet50_notop.weights.h5")
    uri = f"s3://{bucket}/models/resnet50_notop.weights.h5"
    conf = FeaturizerConf(weights=uri, precision="float32", image_size=64, cache_dir=str(tmp_path / "cache"))
    storage = StorageConf(endpoint_url=s3_endpoint)
    loaded = build_model(conf, storage)
    cached = tmp_path / "cache" / "weights" / bucket / "models" / "resnet50_notop.weights.h5"
    assert cached.is_file() and cached.stat().st_size == path.stat().st_size
    x = np.random.default_rng(9).integers(0, 255, (1, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(featurize_arrays(loaded, x), featurize_arrays(small_model, x), rtol=1e-5, atol=1e-6)
    assert featurizer_id(conf, storage).startswith("resnet50/s3-")


def _scenes(n: int, size: int) -> np.ndarray:
    """Camera-like frames (not noise): mixed precision is judged on what the model really sees."""
    from vidspark.synthetic import CLASSES, scene

    rng = np.random.default_rng(11)
    return np.stack([np.asarray(scene(CLASSES[i % len(CLASSES)], rng, size=(160, 120), phase=i / 3).resize((size, size))) for i in range(n)])


@pytest.fixture(scope="module")
def float32_featurizer():
    from vidspark.backbone import Featurizer

    return Featurizer(FeaturizerConf(weights="random", seed=3, precision="float32", image_size=64, batch_size=4))


def test_compiled_call_equals_keras_predict_for_any_batch_size(float32_featurizer, small_model):
    """The tf.function call (one trace for every batch size) gives Keras' own predict_on_batch features."""
    x = _scenes(7, 64)
    got = float32_featurizer(x)  # batches of 4 and 3: the partial batch reuses the trace
    np.testing.assert_allclose(got, featurize_arrays(small_model, x), rtol=1e-4, atol=1e-5)
    assert got.dtype == np.float32 and got.shape == (7, FEATURE_DIM)
    assert float32_featurizer(x[:0]).shape == (0, FEATURE_DIM)
    assert float32_featurizer._fn.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_features_within_1e_2_of_float32(float32_featurizer, precision):
    """featurizer.precision: per frame, |f_mixed - f_32| / |f_32| <= 1e-2 (the contract that lets them share a store)."""
    from vidspark.backbone import Featurizer

    x = _scenes(8, 64)
    mixed = Featurizer(FeaturizerConf(weights="random", seed=3, image_size=64, batch_size=4, precision=precision))
    got = mixed(x)  # TensorFlow's CPU kernels run both dtypes (emulated where the CPU lacks them): a failure is a bug
    ref = float32_featurizer(x)
    rel = np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert got.dtype == np.float32
    assert rel.max() <= 1e-2, rel
    assert rel.max() > 0  # it really ran in another precision
    compute = {layer.dtype_policy.compute_dtype for layer in mixed.model.layers if hasattr(layer, "dtype_policy")}
    assert precision in compute
    # The global Keras policy is restored: a float32 model built afterwards computes in float32.
    after = build_model(FeaturizerConf(weights="random", seed=3, precision="float32", image_size=64))
    assert {layer.dtype_policy.compute_dtype for layer in after.layers if hasattr(layer, "dtype_policy")} == {"float32"}


def test_xla_pads_the_last_batch_and_matches_float32(float32_featurizer):
    from vidspark.backbone import Featurizer

    x = _scenes(6, 64)
    xla = Featurizer(FeaturizerConf(weights="random", seed=3, precision="float32", image_size=64, batch_size=4, xla=True))
    got = xla(x)  # 4 + 2 padded to 4
    assert got.shape == (6, FEATURE_DIM)
    np.testing.assert_allclose(got, float32_featurizer(x), rtol=1e-3, atol=1e-4)


class _FakeConfig:
    def __init__(self, gpus: list[str], initialised: bool = False) -> None:
        self.gpus, self.initialised, self.visible, self.growth = gpus, initialised, None, []
        self.experimental = self

    def list_physical_devices(self, kind: str) -> list[str]:
        return list(self.gpus) if kind == "GPU" else ["cpu0"]

    def set_visible_devices(self, devices: list[str], kind: str) -> None:
        if self.initialised:
            raise RuntimeError("Visible devices cannot be modified after being initialized")
        self.visible = devices

    def set_memory_growth(self, device: str, on: bool) -> None:
        self.growth.append((device, on))


class _FakeTF:
    def __init__(self, config: _FakeConfig) -> None:
        self.config = config


def test_device_is_the_gpu_spark_assigned():
    from vidspark.backbone import choose_device
    from vidspark.errors import ModelError

    cfg = _FakeConfig(["gpu0", "gpu1", "gpu2"])
    assert choose_device(_FakeTF(cfg), "2") == "/GPU:2"
    assert cfg.visible is None and cfg.growth == [("gpu0", True), ("gpu1", True), ("gpu2", True)]
    assert choose_device(_FakeTF(cfg), "0") == "/GPU:0"  # a reused worker serving a task of another GPU
    with pytest.raises(ModelError, match="assigned GPU 3"):
        choose_device(_FakeTF(_FakeConfig(["gpu0"])), "3")
    assert choose_device(_FakeTF(_FakeConfig([])), None) == "/CPU:0"
    assert choose_device(_FakeTF(_FakeConfig(["gpu0"])), None) == "/GPU:0"


def test_tensorflow_threads_follow_the_task(monkeypatch):
    """Set before the runtime starts (the Featurizer does it before entering a device scope)."""
    from vidspark import backbone

    calls = []

    class Threading:
        def set_intra_op_parallelism_threads(self, n: int) -> None:
            calls.append(("intra", n))

        def set_inter_op_parallelism_threads(self, n: int) -> None:
            calls.append(("inter", n))

    class TF:
        class config:
            threading = Threading()

    monkeypatch.setattr(backbone, "task_cpus", lambda: 4)
    backbone.configure_threads(TF, FeaturizerConf())
    assert calls == [("intra", 4), ("inter", 2)]
    calls.clear()
    backbone.configure_threads(TF, FeaturizerConf(threads=2))
    assert calls == [("intra", 2), ("inter", 1)]


def test_task_gpu_reads_the_task_resources(monkeypatch):
    """The address comes from TaskContext.resources()["gpu"] (Spark's GPU scheduling), None without one."""
    from pyspark import TaskContext
    from pyspark.resource import ResourceInformation

    from vidspark.backbone import task_cpus, task_gpu

    class Ctx:
        def __init__(self, res: dict) -> None:
            self.res = res

        def resources(self) -> dict:
            return self.res

        def cpus(self) -> int:
            return 3

    assert task_gpu() is None and task_cpus() is None  # not in a task
    monkeypatch.setattr(TaskContext, "get", classmethod(lambda cls: Ctx({"gpu": ResourceInformation("gpu", ["1"])})))
    assert task_gpu() == "1" and task_cpus() == 3
    monkeypatch.setattr(TaskContext, "get", classmethod(lambda cls: Ctx({})))
    assert task_gpu() is None


def test_thread_setting_reaches_a_real_tensorflow(tmp_path):
    """In a fresh process (as a Python worker is), the Featurizer's TensorFlow runs the configured pool."""
    code = (
        "import tensorflow as tf\n"
        "from vidspark.config import FeaturizerConf\n"
        "from vidspark.backbone import Featurizer\n"
        "Featurizer(FeaturizerConf(weights='random', image_size=32, batch_size=2, threads=1))\n"
        "print(tf.config.threading.get_intra_op_parallelism_threads(), tf.config.threading.get_inter_op_parallelism_threads())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["1", "1"]
