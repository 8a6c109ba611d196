"""Helpers shared by test modules (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from vidspark.cli import main
from vidspark.synthetic import LocalSink, write_labeled_set


def train_model(spark, root: Path, args: list[str], *, per_class: int, seed: int, size: tuple[int, int], folds: int) -> Path:
    """Featurize a synthetic two-class labeled set under ``root`` and train on it with ``args``; returns the model folder."""
    write_labeled_set(LocalSink(root / "labeled"), classes=("car", "person"), per_class=per_class, seed=seed, size=size)
    assert main(["featurize", "--input", str(root / "labeled"), "--output", str(root / "features"), *args], spark=spark) == 0
    assert main(["train", "--features", str(root / "features"), "--model", str(root / "model"), "--folds", str(folds), *args], spark=spark) == 0
    return root / "model"


def prob_matrix(column) -> np.ndarray:
    """A column of class name -> probability maps (as pandas holds them) as an ``(n, classes)`` array, classes in written order.

    Every row must name the same classes in the same order (one model wrote them).
    """
    pairs = [list(m.items()) if isinstance(m, dict) else list(m) for m in column]
    names = [k for k, _ in pairs[0]] if pairs else []
    assert all([k for k, _ in p] == names for p in pairs), "rows of several models"
    return np.array([[v for _, v in p] for p in pairs], dtype=np.float64).reshape(len(pairs), len(names))


class Background:
    """A command started now and waited for later, so that a fresh process's start (an interpreter, TensorFlow, a JVM)
    overlaps other work on the second core: ``result()`` is what ``subprocess.run(argv, capture_output=True, text=True,
    timeout=timeout)`` returns, ``timeout`` counted from the start; a process still running at the deadline is killed."""

    def __init__(self, argv: list[str], *, timeout: float, **popen: Any) -> None:
        self.argv = argv
        self.deadline = time.monotonic() + timeout
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
        self._done: subprocess.CompletedProcess[str] | None = None

    def result(self) -> subprocess.CompletedProcess[str]:
        if self._done is None:
            try:
                out, err = self.proc.communicate(timeout=max(0.0, self.deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stop()
                raise
            self._done = subprocess.CompletedProcess(self.argv, self.proc.returncode, out, err)
        return self._done

    def stop(self) -> None:
        """Kill the process if it still runs (a test that failed before it looked at the result)."""
        if self._done is None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.communicate()
