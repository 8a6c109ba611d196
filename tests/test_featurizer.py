from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from vidspark.config import FeaturizerConf
from vidspark.errors import ConfigError
from vidspark.featurizer import FEATURE_DIM, build_model, featurize_arrays, featurizer_id, preprocess

PROBE = """
import numpy as np, sys
from vidspark.config import FeaturizerConf
from vidspark.featurizer import build_model, featurize_arrays
x = np.random.default_rng(5).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
f = featurize_arrays(build_model(FeaturizerConf(weights="random", seed=3, image_size=64)), x)
np.save(sys.argv[1], f)
"""


@pytest.fixture(scope="module")
def small_model():
    return build_model(FeaturizerConf(weights="random", seed=3, image_size=64))


def test_random_weights_are_identical_in_another_process(small_model, tmp_path):
    """Every Python worker must build the same model, or features from two executors would not mix."""
    x = np.random.default_rng(5).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    here = featurize_arrays(small_model, x)
    subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "f.npy")], check=True, timeout=300)
    np.testing.assert_allclose(np.load(tmp_path / "f.npy"), here, rtol=1e-5, atol=1e-6)
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
    loaded = build_model(FeaturizerConf(weights=str(path), image_size=64))
    x = np.random.default_rng(8).integers(0, 255, (1, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(featurize_arrays(loaded, x), featurize_arrays(small_model, x), rtol=1e-5, atol=1e-6)


def test_weights_from_s3_fetched_once_into_cache(small_model, s3_client, bucket, s3_endpoint, tmp_path):
    """The air-gapped path with weights in object storage: download to the cache, then load."""
    from vidspark.config import StorageConf

    path = tmp_path / "w.weights.h5"
    small_model.save_weights(path)
    s3_client.upload_file(str(path), bucket, "models/resnet50_notop.weights.h5")
    uri = f"s3://{bucket}/models/resnet50_notop.weights.h5"
    conf = FeaturizerConf(weights=uri, image_size=64, cache_dir=str(tmp_path / "cache"))
    storage = StorageConf(endpoint_url=s3_endpoint)
    loaded = build_model(conf, storage)
    cached = tmp_path / "cache" / "weights" / bucket / "models" / "resnet50_notop.weights.h5"
    assert cached.is_file() and cached.stat().st_size == path.stat().st_size
    x = np.random.default_rng(9).integers(0, 255, (1, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(featurize_arrays(loaded, x), featurize_arrays(small_model, x), rtol=1e-5, atol=1e-6)
    assert featurizer_id(conf, storage).startswith("resnet50/s3-")
