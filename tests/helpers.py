"""Helpers shared by test modules (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

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
