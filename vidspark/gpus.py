"""Which GPU a featurize task's model runs on, and which GPUs its Python worker sees (no TensorFlow here).

Spark hands each task the addresses of its GPUs (``TaskContext.resources()["gpu"]``), as the
discovery script printed them: ``nvidia-smi`` indices (physical; where ``CUDA_VISIBLE_DEVICES`` already
narrowed the executor, its entries as written, which ``scripts/get_gpus_resources.sh`` prints), GPU UUIDs (``GPU-8d3c...``) or MIG instances (``MIG-...``).

- **narrow** (an executor with one GPU: ``spark.executor.resource.gpu.amount`` 1, the shape
  ``conf/gpu.yaml`` asks for): before TensorFlow starts in the Python worker,
  ``CUDA_VISIBLE_DEVICES`` is set to the assigned GPU, so the worker opens a CUDA context on that
  GPU alone and its model is ``/GPU:0``. Every task of the executor gets the same address, so a
  reused worker never needs another.
- **shared** (an executor with several GPUs): a reused Python worker may be handed any of them, so
  visibility cannot be narrowed; the model is placed on the assigned GPU explicitly, and a worker
  keeps one model at most (building the model for another GPU drops the one it had). MIG instances
  cannot be addressed this way: they need one per executor.
- **none** (no GPU assigned: local mode, or a CPU executor): the first visible GPU if any, else the CPU.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from dataclasses import dataclass
from typing import Any

from vidspark.errors import ConfigError

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_FORMS = {
    "index": re.compile(r"\d+"),
    "uuid": re.compile(rf"GPU-{_UUID}"),
    "mig": re.compile(rf"MIG-(?:GPU-{_UUID}/\d+/\d+|{_UUID})"),
}
ACCEPTED = "nvidia-smi indices (0, 1, ...), GPU UUIDs (GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx) or MIG instances (MIG-...)"


@dataclass(frozen=True)
class GpuAddress:
    """One address Spark assigned: its text and its form (``index``, ``uuid`` or ``mig``)."""

    raw: str
    kind: str


def parse_address(raw: str) -> GpuAddress:
    """The form of a GPU address Spark assigned, or one :class:`ConfigError` saying which forms work."""
    text = str(raw).strip()
    for kind, pattern in _FORMS.items():
        if pattern.fullmatch(text):
            return GpuAddress(text, kind)
    raise ConfigError(
        f"Spark assigned the GPU address {raw!r}, which vidspark cannot place a model on: it understands {ACCEPTED}. "
        "Fix the output of the GPU discovery script (spark.executor.resource.gpu.discoveryScript, or spark.worker.resource.gpu.discoveryScript on standalone)"
    )


@dataclass(frozen=True)
class Placement:
    """Where a task's model goes.

    ``visible``: what ``CUDA_VISIBLE_DEVICES`` is set to before TensorFlow starts (narrow mode), else
    None (left as it is). ``tf_index``: the index among the GPUs TensorFlow lists (None: no GPU assigned).
    """

    address: str | None
    mode: str  # narrow | shared | none
    visible: str | None
    tf_index: int | None

    def record(self, device: str) -> dict[str, object]:
        """What a task reports about it (the run record's ``executor_gpus``): the address Spark gave, the mode, what
        the worker could see (``CUDA_VISIBLE_DEVICES``, None: every GPU of the machine), the TensorFlow device chosen
        for it and the device the model runs on (they differ only under ``VIDSPARK_GPU_SIMULATE``, in tests)."""
        tf_device = f"/GPU:{self.tf_index}" if self.tf_index is not None else None
        return {"address": self.address, "mode": self.mode, "visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "tf_device": tf_device, "device": device}


def placement(address: str | None, *, executor_gpus: float, inherited: str | None = None, uuid_index: dict[str, int] | None = None) -> Placement:
    """The placement of a task's model (pure: the caller applies it).

    ``executor_gpus``: ``spark.executor.resource.gpu.amount`` (at most 1: narrow). ``inherited``: the
    executor's ``CUDA_VISIBLE_DEVICES``. ``uuid_index``: UUID -> ``nvidia-smi`` index (shared mode with
    UUID addresses; default: asks ``nvidia-smi``).
    """
    if address is None:
        return Placement(None, "none", None, None)
    addr = parse_address(address)
    listed = [v.strip() for v in inherited.split(",")] if inherited and inherited.strip() not in ("", "-1") else None
    if listed is not None and addr.raw not in listed:  # an address outside what the executor may use: another job's GPU
        raise ConfigError(
            f"Spark assigned GPU {addr.raw} but this executor's CUDA_VISIBLE_DEVICES={inherited!r} does not list it: the discovery script must print "
            "the entries of CUDA_VISIBLE_DEVICES as written (scripts/get_gpus_resources.sh does), not renumber them"
        )
    if executor_gpus <= 1:
        if inherited is not None and inherited.strip() in ("", "-1") and "VIDSPARK_GPU_SIMULATE" not in os.environ:
            raise ConfigError(
                f"Spark assigned GPU {addr.raw} but this executor's CUDA_VISIBLE_DEVICES={inherited!r} hides every GPU: unset it in the executor's environment (spark.executorEnv.CUDA_VISIBLE_DEVICES)"
            )
        return Placement(addr.raw, "narrow", addr.raw, 0)
    if addr.kind == "mig":
        raise ConfigError(
            f"Spark assigned the MIG instance {addr.raw} to an executor of {executor_gpus:g} GPUs: a process can use one MIG instance only, so give each "
            "executor one (spark.executor.resource.gpu.amount=1; vidspark then narrows each Python worker to it)"
        )
    if listed is not None:  # TensorFlow numbers the listed GPUs 0, 1, ... in that order
        return Placement(addr.raw, "shared", None, listed.index(addr.raw))
    if addr.kind == "index":
        return Placement(addr.raw, "shared", None, int(addr.raw))
    index = (uuid_index if uuid_index is not None else nvidia_smi_uuids()).get(addr.raw)
    if index is None:
        raise ConfigError(f"Spark assigned GPU {addr.raw}, which nvidia-smi on this executor does not list")
    return Placement(addr.raw, "shared", None, index)


@functools.lru_cache(maxsize=1)
def nvidia_smi_uuids() -> dict[str, int]:
    """GPU UUID -> index as ``nvidia-smi`` lists them (the order TensorFlow uses with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    pairs = (line.split(",") for line in out.splitlines() if "," in line)
    return {uuid.strip(): int(index) for index, uuid in pairs if index.strip().isdigit()}


def executor_gpus(spark_conf: Any) -> float:
    """``spark.executor.resource.gpu.amount`` from a Spark conf (``RuntimeConfig`` or a dict), 0 when unset."""
    value = spark_conf.get("spark.executor.resource.gpu.amount", None)
    try:
        return float(value) if value not in (None, "") else 0.0
    except ValueError as exc:
        raise ConfigError(f"spark.executor.resource.gpu.amount={value!r} is not a number") from exc


@dataclass(frozen=True)
class StageRequest:
    """What the featurize stage asks Spark for: a GPU share and CPUs per task, as a stage-level ResourceProfile.

    ``profile``: the PySpark ``ResourceProfile`` to pass to ``mapInPandas`` (None: the stage asks for
    nothing of its own). ``note``: why not, where it does not (logged once per job).
    """

    task_gpus: float
    task_cpus: int
    profile: Any
    note: str | None


def task_gpu_share(task_gpus: float, *, executor_gpus: float, executor_cores: int, task_cpus: int) -> float:
    """``featurizer.task_gpus``, or (0: auto) the executor's GPUs shared by as many tasks as its cores hold.

    Spark needs ``1/k`` shares of a GPU (or whole GPUs): an automatic share is rounded down to one.
    """
    if task_gpus > 0 or executor_gpus <= 0:
        return task_gpus if executor_gpus > 0 else 0.0
    tasks = max(1, executor_cores // max(1, task_cpus))
    share = executor_gpus / tasks
    return share if share >= 1 else 1.0 / -(-tasks // max(1, int(executor_gpus)))


def stage_request(spark: Any, task_gpus: float, task_cpus: int) -> StageRequest:
    """The featurize stage's own resource request, where Spark can honour one.

    Executors with GPUs (``spark.executor.resource.gpu.amount``) and no global task GPU amount: the
    featurize stage (and its warm-up) asks for ``task_gpus`` of a GPU and ``task_cpus`` CPUs per task
    through a task-only ResourceProfile (PySpark 4+, standalone, YARN or Kubernetes with dynamic
    allocation off); listing, probing, group-bys and writes hold no GPU. A global
    ``spark.task.resource.gpu.amount`` (every stage holds that share), a local master (no GPU
    scheduling) or PySpark 3.5 (no ``mapInPandas(profile=)``) leave the stage without a request of its own.
    """
    import inspect

    from pyspark.sql import DataFrame

    conf = spark.conf
    gpus = executor_gpus(conf)
    cpus = task_cpus or int(conf.get("spark.task.cpus", "1") or 1)
    if gpus <= 0:
        return StageRequest(0.0, cpus, None, None)
    cores = int(conf.get("spark.executor.cores", "0") or 0) or cpus
    share = task_gpu_share(task_gpus, executor_gpus=gpus, executor_cores=cores, task_cpus=cpus)
    master = spark.sparkContext.master or ""
    if conf.get("spark.task.resource.gpu.amount", None) not in (None, ""):
        return StageRequest(share, cpus, None, "spark.task.resource.gpu.amount is set: every stage holds that GPU share (set featurizer.task_gpus instead, for the featurize stage alone)")
    if master.startswith("local"):
        return StageRequest(share, cpus, None, "local master: Spark schedules no GPUs; every task uses the first GPU TensorFlow sees")
    if "profile" not in inspect.signature(DataFrame.mapInPandas).parameters:
        return StageRequest(share, cpus, None, "this PySpark has no stage-level scheduling for mapInPandas (4.0+): set spark.task.resource.gpu.amount for every stage")
    from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

    requests = TaskResourceRequests().cpus(cpus).resource("gpu", share)
    return StageRequest(share, cpus, ResourceProfileBuilder().require(requests).build, None)
