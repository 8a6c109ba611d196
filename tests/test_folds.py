from __future__ import annotations

import warnings

import numpy as np
import pytest

from vidspark.errors import TrainingDataError
from vidspark.train import grouped_stratified_folds


def test_no_group_on_both_sides():
    rng = np.random.default_rng(0)
    groups = np.array([f"cam{g % 3}/v{g}" for g in rng.integers(0, 40, 600)], dtype=object)
    label_of = {g: int(rng.integers(0, 3)) for g in sorted(set(groups))}  # seeded: one label per video, as in labeled video sets
    y = np.array([label_of[g] for g in groups])
    folds = grouped_stratified_folds(y, groups, n_splits=5, seed=1)
    assert len(folds) == 5
    seen_test = np.concatenate([te for _, te in folds])
    assert sorted(seen_test) == list(range(len(y)))  # every row tested exactly once
    for tr, te in folds:
        assert not set(groups[tr]) & set(groups[te])


def test_unit_groups_balanced_within_one_row_per_class():
    y = np.array([0] * 23 + [1] * 17 + [2] * 11)
    groups = np.array([f"img{i}" for i in range(len(y))], dtype=object)
    folds = grouped_stratified_folds(y, groups, n_splits=5, seed=3)
    for c in range(3):
        per_fold = [int((y[te] == c).sum()) for _, te in folds]
        assert max(per_fold) - min(per_fold) <= 1, (c, per_fold)


def test_too_few_groups_lowers_folds_with_warning():
    y = np.array([0] * 10 + [1] * 10)
    groups = np.array([f"a{i % 5}" for i in range(10)] + ["b0"] * 5 + ["b1"] * 5, dtype=object)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folds = grouped_stratified_folds(y, groups, n_splits=5, seed=0)
    assert len(folds) == 2
    assert any("2 folds" in str(w.message) for w in caught)


def test_one_group_in_a_class_is_refused():
    y = np.array([0, 0, 1, 1])
    groups = np.array(["a", "b", "c", "c"], dtype=object)
    with pytest.raises(TrainingDataError, match="fewer than 2"):
        grouped_stratified_folds(y, groups, n_splits=2, seed=0)
