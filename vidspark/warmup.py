"""Warm-up: build the model in every Python worker slot while the driver lists the input."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pandas as pd
from pyspark import InheritableThread
from pyspark.sql import SparkSession

from vidspark.backbone import cached_model, model_is_cached
from vidspark.config import FeaturizerConf, StorageConf

logger = logging.getLogger(__name__)


def make_warm_fn(fconf: FeaturizerConf, sconf: StorageConf, stats: Any, executor_gpus: float = 0.0) -> Any:
    def warm_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for _ in batches:
            pass
        fresh = not model_is_cached(fconf, sconf)
        model = cached_model(fconf, sconf, executor_gpus=executor_gpus)
        if fresh:
            stats.add({"workers_warmed": 1.0, "tf_import_s_max": model.import_s, "model_build_s_max": model.build_s, "first_call_s_max": model.warm_s})
        yield pd.DataFrame({"pid": [os.getpid()]})

    return warm_partition


def task_slots(spark: SparkSession) -> int:
    """How many tasks Spark runs at once: default parallelism over ``spark.task.cpus``."""
    return max(1, spark.sparkContext.defaultParallelism // max(1, int(spark.conf.get("spark.task.cpus", "1") or 1)))


class WarmUp:
    """Build the model in every Python worker slot while the driver lists the input (a context manager).

    A background Spark job of one task per slot; workers are reused (``spark.python.worker.reuse``),
    so the featurize tasks that follow find the model built. Failures only cost the overlap. Leaving
    the ``with`` block stops the job if it still runs (nothing to featurize, or the run failed).
    """

    def __init__(self, spark: SparkSession, fconf: FeaturizerConf, sconf: StorageConf, run_id: str, stats: Any, *, executor_gpus: float = 0.0, profile: Any | None = None) -> None:
        self.spark = spark
        self.group = f"vidspark-warm-up-{run_id}"
        slots = task_slots(spark)
        df = spark.range(0, slots, 1, slots).mapInPandas(make_warm_fn(fconf, sconf, stats, executor_gpus), schema="pid long", **({"profile": profile} if profile is not None else {}))
        self.cancelled = threading.Event()

        def job() -> None:
            spark.sparkContext.setJobGroup(self.group, "vidspark: build the featurizer in each Python worker", interruptOnCancel=False)
            if self.cancelled.is_set():
                return
            try:
                df.collect()
            except Exception as exc:  # cancelled, or a model that cannot load: featurize will say so itself
                logger.debug("warm-up ended: %s", exc)

        self.thread = InheritableThread(target=job, name="vidspark-warm-up", daemon=True)
        self.thread.start()

    def __enter__(self) -> WarmUp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    def cancel(self) -> None:
        """Stop the warm-up job if it still runs (nothing to featurize, or the run failed); a no-op once it ended."""
        self.cancelled.set()
        deadline = time.monotonic() + 60
        while self.thread.is_alive() and time.monotonic() < deadline:
            self.spark.sparkContext.cancelJobGroup(self.group)  # again each round: the job may be submitted after the first
            self.thread.join(timeout=0.5)
