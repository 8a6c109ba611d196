"""GPU placement without a GPU: addresses, narrow and shared placement, one model per worker, device faults, one batch shape."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from vidspark import backbone, frames
from vidspark.config import FeaturizerConf
from vidspark.errors import ConfigError, DeviceError, known_failure
from vidspark.gpus import executor_gpus, parse_address, placement, stage_request, task_gpu_share

UUID1 = "GPU-8d3c1a2b-1111-2222-3333-444455556666"
UUID2 = "GPU-8d3c1a2b-1111-2222-3333-444455557777"
MIG = "MIG-GPU-8d3c1a2b-1111-2222-3333-444455556666/1/0"


def test_addresses_of_every_form_parse_and_others_fail_with_one_clear_message():
    assert parse_address("0").kind == "index" and parse_address(" 12 ").raw == "12"
    assert parse_address(UUID1).kind == "uuid"
    assert parse_address(MIG).kind == "mig" and parse_address("MIG-8d3c1a2b-1111-2222-3333-444455556666").kind == "mig"
    for bad in ("gpu0", "", "0,1", "GPU-xyz", "/GPU:0"):
        with pytest.raises(ConfigError, match="understands nvidia-smi indices .* GPU UUIDs .* MIG instances.*discoveryScript"):
            parse_address(bad)


def test_one_gpu_per_executor_narrows_the_worker_to_it():
    for address in ("1", UUID1, MIG):
        p = placement(address, executor_gpus=1)
        assert (p.mode, p.visible, p.tf_index) == ("narrow", address, 0)
    assert placement("3", executor_gpus=1, inherited="2,3").visible == "3"  # Spark's addresses are nvidia-smi's (physical) ids
    with pytest.raises(ConfigError, match="does not list it.*as written"):  # a renumbering discovery script would hand out GPU 0 here
        placement("0", executor_gpus=1, inherited="2,3")
    with pytest.raises(ConfigError, match="hides every GPU"):
        placement("0", executor_gpus=1, inherited="")
    assert placement(None, executor_gpus=1).mode == "none"


def test_several_gpus_per_executor_place_the_model_explicitly():
    assert placement("1", executor_gpus=2).tf_index == 1 and placement("1", executor_gpus=2).visible is None
    assert placement("3", executor_gpus=2, inherited="2,3").tf_index == 1  # TensorFlow numbers the listed GPUs from 0
    assert placement(UUID2, executor_gpus=2, inherited=f"{UUID1},{UUID2}").tf_index == 1
    assert placement(UUID2, executor_gpus=2, uuid_index={UUID1: 0, UUID2: 1}).tf_index == 1
    with pytest.raises(ConfigError, match="does not list it"):
        placement("1", executor_gpus=2, inherited="0")
    with pytest.raises(ConfigError, match="nvidia-smi on this executor does not list"):
        placement(UUID1, executor_gpus=2, uuid_index={})
    with pytest.raises(ConfigError, match=r"MIG instance .*spark\.executor\.resource\.gpu\.amount=1"):
        placement(MIG, executor_gpus=2)


def test_executor_gpus_from_the_spark_conf():
    assert executor_gpus({}) == 0 and executor_gpus({"spark.executor.resource.gpu.amount": "2"}) == 2
    with pytest.raises(ConfigError, match="not a number"):
        executor_gpus({"spark.executor.resource.gpu.amount": "two"})


def test_a_task_narrows_visibility_before_tensorflow_starts(monkeypatch):
    monkeypatch.setattr(backbone, "task_gpu", lambda: UUID1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{UUID1},{UUID2}")
    monkeypatch.setattr(backbone, "_tensorflow_started", lambda: False)
    p = backbone.task_placement(1)
    assert p.mode == "narrow" and os.environ["CUDA_VISIBLE_DEVICES"] == UUID1 and p.record("/GPU:0")["visible"] == UUID1
    # TensorFlow already started in this worker with other GPUs visible: placed explicitly instead (it cannot be narrowed now)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{UUID1},{UUID2}")
    monkeypatch.setattr(backbone, "_tensorflow_started", lambda: True)
    monkeypatch.setattr(backbone, "task_gpu", lambda: UUID2)
    p = backbone.task_placement(1)
    assert (p.mode, p.tf_index) == ("shared", 1) and os.environ["CUDA_VISIBLE_DEVICES"] == f"{UUID1},{UUID2}"


def test_a_worker_keeps_a_model_for_one_gpu_at_most(monkeypatch):
    built = []

    class Fake:
        def __init__(self, conf, storage, *, place):
            self.place = place
            built.append(place.address)

    monkeypatch.setattr(backbone, "Featurizer", Fake)
    monkeypatch.setattr(backbone, "import_tensorflow", lambda: None)
    monkeypatch.setattr(backbone, "_MODELS", {})
    conf = FeaturizerConf(weights="random")
    for address in ("0", "0", "1", "0"):
        monkeypatch.setattr(backbone, "task_gpu", lambda a=address: a)
        model = backbone.cached_model(conf, executor_gpus=2)
        assert model.place.address == address and model.place.mode == "shared" and model.place.tf_index == int(address)
        assert [k[3] for k in backbone._MODELS if k[0] == os.getpid()] == [address]  # the other GPU's model was dropped
    assert built == ["0", "1", "0"]


def test_decoding_runs_beside_a_model_on_the_tasks_gpu(monkeypatch):
    conf = FeaturizerConf(decode_mode="auto")
    monkeypatch.setattr(frames, "task_gpu", lambda: None)
    assert frames.decode_alternates(conf)  # CPU: the model takes every core, decoding waits for it
    monkeypatch.setattr(frames, "task_gpu", lambda: "0")
    assert not frames.decode_alternates(conf)


@pytest.fixture(scope="module")
def tiny():
    return backbone.Featurizer(FeaturizerConf(weights="random", image_size=32, batch_size=4, precision="float32", threads=1))


def _scenes(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_frames_travel_as_uint8_and_are_preprocessed_inside_the_call(tiny):
    (spec,) = tiny._fn.input_signature
    assert spec.dtype.name == "uint8"
    x = _scenes(5)
    reference = np.asarray(tiny.model.predict_on_batch(backbone.preprocess(x)), dtype=np.float32)  # numpy preprocessing, Keras call
    np.testing.assert_allclose(tiny(x), reference, rtol=1e-4, atol=1e-5)


def test_one_batch_shape_per_worker_on_a_gpu_the_tail_padded(tiny, monkeypatch):
    shapes = []
    fn = tiny._fn
    monkeypatch.setattr(tiny, "_fn", lambda x: shapes.append(tuple(x.shape)) or fn(x))
    x = _scenes(6)
    free = tiny(x)
    assert shapes == [(4, 32, 32, 3), (2, 32, 32, 3)]  # CPU without XLA: the tail as it is (padding costs real CPU)
    shapes.clear()
    monkeypatch.setattr(tiny, "fixed_shape", True)  # what a GPU (or XLA) sets
    np.testing.assert_allclose(tiny(x), free, rtol=1e-4, atol=1e-5)
    assert shapes == [(4, 32, 32, 3), (4, 32, 32, 3)]


def test_the_warm_up_call_has_the_shape_of_every_call_on_a_gpu(monkeypatch):
    calls = []
    original = backbone.Featurizer._call
    monkeypatch.setattr(backbone.Featurizer, "_call", lambda self, images, bs: calls.append((len(images), bs)) or original(self, images, bs))
    monkeypatch.setattr(backbone, "gpu_details", lambda tf, device: {"name": "Fake GPU", "compute_capability": [8, 0]})
    model = backbone.Featurizer(FeaturizerConf(weights="random", image_size=32, batch_size=4, precision="float32", threads=1))
    assert model.fixed_shape and calls == [(4, 4)]


def test_with_batch_size_auto_a_gpu_sees_only_the_chosen_shape_warm_up_included(tmp_path, monkeypatch):
    """A calibration cached for this GPU: no warm-up at another size, one call at the chosen one before any task's."""
    monkeypatch.setattr(backbone, "gpu_details", lambda tf, device: {"name": "Fake GPU", "compute_capability": [8, 0]})
    conf = FeaturizerConf(weights="random", image_size=32, batch_size=0, precision="float32", threads=1, cache_dir=str(tmp_path))
    key = backbone.Featurizer(dataclasses.replace(conf, batch_size=4)).hardware_key(backbone.cpu_info())  # batch_size is not in the key
    (tmp_path / backbone.CALIBRATION_FILE).write_text(json.dumps({key: {"batch_size": 8, "fps_by_batch": {"8": 1.0}}}))
    calls = []
    original = backbone.Featurizer._call
    monkeypatch.setattr(backbone.Featurizer, "_call", lambda self, images, bs: calls.append((len(images), bs)) or original(self, images, bs))
    model = backbone.Featurizer(conf)
    assert (model.batch_size, model.calibration["source"], calls) == (8, "cached", [(8, 8)])
    calls.clear()
    shapes = []
    fn = model._fn
    monkeypatch.setattr(model, "_fn", lambda x: shapes.append(tuple(x.shape)) or fn(x))
    assert model(_scenes(11)).shape == (11, backbone.FEATURE_DIM)
    assert shapes == [(8, 32, 32, 3), (8, 32, 32, 3)]  # the tail of 3 padded to the one shape


def test_a_calibration_where_not_even_the_smallest_batch_fits_fails_the_task(tiny, monkeypatch):
    def oom(images, bs):
        raise DeviceError(f"out of memory in a batch of {bs} frames", out_of_memory=True)

    monkeypatch.setattr(tiny, "_call", oom)
    with pytest.raises(DeviceError, match="batch of 32 frames") as err:
        tiny.calibrate(candidates=(32, 64))
    assert err.value.out_of_memory

    def second_oom(images, bs):  # 32 fits, 64 does not: 32 is kept
        if bs == 64:
            raise DeviceError("out of memory", out_of_memory=True)

    monkeypatch.setattr(tiny, "_call", second_oom)
    assert tiny.calibrate(candidates=(32, 64), min_frames=32)["batch_size"] == 32


def test_a_device_fault_while_loading_weights_is_a_device_error_not_a_bad_file(tmp_path, monkeypatch):
    tf = backbone.import_tensorflow()
    weights = tmp_path / "resnet50_notop.h5"
    weights.write_bytes(b"not read")

    def oom(**kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[7,7,512,2048]")

    monkeypatch.setattr(tf.keras.applications, "ResNet50", oom)
    with pytest.raises(DeviceError, match="out of memory on the CPU") as err:
        backbone.Featurizer(FeaturizerConf(weights=str(weights), image_size=32, batch_size=4, precision="float32", threads=1))
    assert err.value.out_of_memory


def test_a_device_fault_fails_the_task_naming_the_device_the_batch_and_what_to_lower(tiny, monkeypatch):
    tf = tiny._tf

    def oom(x):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[4,2048,7,7]")

    monkeypatch.setitem(backbone._MODELS, ("test", "tiny"), tiny)
    monkeypatch.setattr(tiny, "_fn", oom)
    with pytest.raises(DeviceError, match=r"out of memory on the CPU .* batch of 4 frames .*lower featurizer.batch_size \(now 4\)") as err:
        tiny(_scenes(4))
    assert err.value.out_of_memory and err.value.exit_code == 5
    assert tiny not in backbone._MODELS.values()  # forgotten: nothing in this worker uses it again

    def cuda(x):
        raise tf.errors.InternalError(None, None, "CUDA_ERROR_ILLEGAL_ADDRESS: an illegal memory access was encountered")

    monkeypatch.setattr(tiny, "_fn", cuda)
    monkeypatch.setattr(tiny, "place", placement("1", executor_gpus=1))
    monkeypatch.setattr(tiny, "gpu", {"name": "Fake GPU", "compute_capability": [8, 0]})
    with pytest.raises(DeviceError, match=r"device error on GPU 1 \(Fake GPU, /CPU:0\) in a batch of 3 frames: CUDA_ERROR_ILLEGAL_ADDRESS.*Spark retries it") as err:
        tiny(_scenes(3))
    assert not err.value.out_of_memory
    monkeypatch.setattr(tiny, "_fn", lambda x: (_ for _ in ()).throw(tf.errors.FailedPreconditionError(None, None, "cuDNN launch failure")))
    with pytest.raises(DeviceError, match="device error on GPU 1 .*cuDNN launch failure"):  # any runtime error of the call: inputs are checked before
        tiny(_scenes(3))
    # on the driver, the executor's traceback becomes the one line and exit code 5
    found = known_failure(RuntimeError(f"Traceback ...\nvidspark.errors.DeviceError: {err.value}\n"))
    assert isinstance(found, DeviceError) and found.exit_code == 5


class _Spark:
    """What stage_request reads of a session: its conf and its master."""

    def __init__(self, master: str, **conf: str) -> None:
        self.conf = {k.replace("__", "."): v for k, v in conf.items()}

        class Ctx:
            pass

        self.sparkContext = Ctx()
        self.sparkContext.master = master


def test_the_gpu_share_is_asked_for_by_the_featurize_stage_alone_where_spark_can():
    assert task_gpu_share(0.25, executor_gpus=1, executor_cores=8, task_cpus=2) == 0.25
    assert task_gpu_share(0, executor_gpus=1, executor_cores=8, task_cpus=2) == 0.25  # auto: 4 tasks share the GPU
    assert task_gpu_share(0, executor_gpus=1, executor_cores=4, task_cpus=4) == 1.0  # --gpu --conf conf/cluster.yaml
    assert task_gpu_share(0, executor_gpus=1, executor_cores=3, task_cpus=1) == pytest.approx(1 / 3)
    assert task_gpu_share(0, executor_gpus=2, executor_cores=2, task_cpus=1) == 1.0
    assert task_gpu_share(0.5, executor_gpus=0, executor_cores=8, task_cpus=2) == 0.0
    gpu = {"spark__executor__resource__gpu__amount": "1", "spark__executor__cores": "8"}
    cluster = stage_request(_Spark("spark://h:7077", **gpu), 0.25, 2)
    requests = cluster.profile.taskResources
    assert cluster.note is None and requests["gpu"].amount == 0.25 and requests["cpus"].amount == 2
    assert stage_request(_Spark("spark://h:7077"), 0.25, 2).profile is None  # no GPUs on the executors: nothing to ask for
    local = stage_request(_Spark("local[4]", **gpu), 0.25, 2)
    assert local.profile is None and "local master" in local.note
    both = stage_request(_Spark("yarn", spark__task__resource__gpu__amount="0.25", **gpu), 0.25, 2)
    assert both.profile is None and "every stage holds that GPU share" in both.note


@pytest.mark.parametrize("name", ["vtest.avi", "bikes.mp4"])
def test_several_decoder_threads_per_video_give_the_same_frames(name):
    """conf/gpu.yaml's video.decode_threads (FFmpeg threads per video, so a GPU task decodes on several cores): same frames as one."""
    from pathlib import Path

    from vidspark.config import VideoConf
    from vidspark.video import decode_frames

    path = Path(__file__).parent / "data" / "real" / name
    one = list(decode_frames(str(path), VideoConf(decode_threads=1, max_frames=60), size=32))
    two = list(decode_frames(str(path), VideoConf(decode_threads=2, max_frames=60), size=32))
    assert len(one) == len(two) == 60
    assert [f.idx for f in one] == [f.idx for f in two] and all(np.array_equal(a.pixels, b.pixels) for a, b in zip(one, two, strict=True))
