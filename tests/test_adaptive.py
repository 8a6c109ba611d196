"""The featurizer adapts to the machine it lands on: precision, batch size (measured, cached), decode beside or between model calls."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from vidspark import backbone
from vidspark.backbone import CALIBRATION_FILE, Featurizer, auto_precision, cpu_info
from vidspark.config import FeaturizerConf, load_conf
from vidspark.frames import CoreGate, decode_alternates


@pytest.mark.parametrize(
    "gpu, flags, expected",
    [
        ({"name": "NVIDIA A100", "compute_capability": [8, 0]}, [], "bfloat16"),
        ({"name": "NVIDIA H100", "compute_capability": [9, 0]}, [], "bfloat16"),
        ({"name": "NVIDIA L4", "compute_capability": [8, 9]}, [], "bfloat16"),
        ({"name": "Tesla T4", "compute_capability": [7, 5]}, [], "float16"),
        ({"name": "Tesla V100", "compute_capability": [7, 0]}, [], "float16"),
        ({"name": "Tesla P100", "compute_capability": [6, 0]}, [], "float32"),
        ({"name": "unknown", "compute_capability": None}, [], "float32"),
        (None, ["avx2", "avx512f", "avx512_bf16"], "bfloat16"),  # AMD Zen 4, Intel Cooper Lake
        (None, ["avx2", "amx_bf16", "amx_tile"], "bfloat16"),  # Intel Sapphire Rapids
        (None, ["avx2", "avx512f", "avx512_vnni"], "float32"),  # Cascade Lake: no native bf16
        (None, ["neon", "asimd"], "float32"),
        (None, [], "float32"),
    ],
)
def test_auto_precision_is_native_only(gpu, flags, expected):
    assert auto_precision(gpu, flags) == expected


def test_cpu_info_names_this_cpu():
    info = cpu_info()
    assert info["model"] and info["cores"] >= 1
    assert set(info["flags"]) <= set(backbone._SPEED_FLAGS)
    cpuinfo = Path("/proc/cpuinfo").read_text()
    for flag in info["flags"]:
        assert f" {flag}" in cpuinfo


def test_batch_size_auto_and_precision_auto_are_the_defaults():
    conf = load_conf()
    assert conf.featurizer.batch_size == 0 and conf.featurizer.precision == "auto" and conf.featurizer.skip_static == 0.0
    assert load_conf(overrides=["featurizer.batch_size=auto"]).featurizer.batch_size == 0
    assert load_conf(overrides=["featurizer.batch_size=48"]).featurizer.batch_size == 48
    for path in ("conf/local.yaml", "conf/cluster.yaml"):
        assert load_conf(path).featurizer.batch_size == 0, path


def test_batch_size_is_measured_once_then_read_from_the_cache(tmp_path):
    conf = FeaturizerConf(weights="random", image_size=32, precision="float32", threads=1, cache_dir=str(tmp_path))
    first = Featurizer(conf)
    assert first.calibration["source"] == "measured"
    measured = {int(b): v for b, v in first.calibration["fps_by_batch"].items()}
    assert first.batch_size in measured and first.batch_size == max(measured, key=lambda b: measured[b])
    assert list(measured) == list(backbone.CPU_BATCH_CANDIDATES[: len(measured)])  # tried in order, stopped when no faster
    assert all(v > 0 for v in measured.values())
    cache = json.loads((tmp_path / CALIBRATION_FILE).read_text())
    (key,) = cache
    assert first.hardware_key(cpu_info()) == key
    assert cpu_info()["model"] in key and "float32" in key and "threads=1" in key and "tensorflow" in key
    second = Featurizer(conf)
    assert second.calibration["source"] == "cached" and second.batch_size == first.batch_size
    assert second.calibrate_s < first.calibrate_s
    # Another precision or input size is another entry: a calibration holds only for what it measured.
    first.precision = "bfloat16"
    assert first.hardware_key(cpu_info()) != key and first._calibrated(cpu_info())["source"] == "measured"
    first.precision = "float32"
    assert len(json.loads((tmp_path / CALIBRATION_FILE).read_text())) == 2
    x = np.random.default_rng(0).integers(0, 256, (first.batch_size + 3, 32, 32, 3), dtype=np.uint8)
    assert first(x).shape == (first.batch_size + 3, backbone.FEATURE_DIM)


def test_an_explicit_batch_size_wins_and_measures_nothing(tmp_path):
    model = Featurizer(FeaturizerConf(weights="random", image_size=32, batch_size=5, precision="auto", threads=1, cache_dir=str(tmp_path)))
    assert model.batch_size == 5 and model.calibration["source"] == "featurizer.batch_size" and model.calibrate_s == 0.0
    assert not (tmp_path / CALIBRATION_FILE).exists()
    assert model.precision == auto_precision(None, cpu_info()["flags"])
    compute = {layer.dtype_policy.compute_dtype for layer in model.model.layers if hasattr(layer, "dtype_policy")}
    assert compute == {model.precision}
    assert model.describe().startswith(f"batch 5 (featurizer.batch_size), {model.precision}, 1 threads")


def test_an_unwritable_cache_only_costs_a_calibration(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    model = Featurizer(FeaturizerConf(weights="random", image_size=32, precision="float32", threads=1, cache_dir=str(blocker)))
    assert model.calibration["source"] == "measured" and model.batch_size in backbone.CPU_BATCH_CANDIDATES


def test_alternate_gate_holds_decoding_while_the_model_runs():
    gate = CoreGate(alternate=True)
    passed = threading.Event()

    def decode() -> None:
        gate.wait()
        passed.set()

    with gate.hold():
        t = threading.Thread(target=decode)
        t.start()
        assert not passed.wait(timeout=0.5)  # held back while the model has the cores
    assert passed.wait(timeout=5)
    t.join()
    assert gate.waited_s > 0.4
    overlap = CoreGate(alternate=False)
    with overlap.hold():
        overlap.wait()  # never blocks
    assert overlap.waited_s == 0.0


def test_decode_mode_auto_alternates_unless_the_model_leaves_cores_free(monkeypatch):
    from vidspark import frames

    monkeypatch.setattr(frames, "task_cpus", lambda: 4)
    assert decode_alternates(FeaturizerConf()) is True  # the model takes the task's 4 cores
    assert decode_alternates(FeaturizerConf(threads=4)) is True
    assert decode_alternates(FeaturizerConf(threads=3)) is False  # one core left for decoding
    assert decode_alternates(FeaturizerConf(threads=3, decode_mode="alternate")) is True
    assert decode_alternates(FeaturizerConf(decode_mode="overlap")) is False


def test_a_cached_model_serves_every_fetch_decode_and_skip_setting():
    """Keys that do not change the model do not key the worker's model cache; those that do, do."""
    base = FeaturizerConf(weights="random", image_size=32)
    same = dataclasses.replace(base, fetch_threads=9, decode_mode="overlap", skip_static=0.03, warm_up=False, decode_timeout_s=5.0, max_image_pixels=10)
    assert backbone.model_conf(same) == backbone.model_conf(base)
    for changed in ({"image_size": 64}, {"seed": 1}, {"precision": "float32"}, {"batch_size": 8}, {"threads": 1}, {"xla": True}, {"weights": "imagenet"}):
        assert backbone.model_conf(dataclasses.replace(base, **changed)) != backbone.model_conf(base), changed
