"""Training data that cannot make a model: a clear refusal (exit 2) naming the problem."""

from __future__ import annotations

from datetime import date, datetime, timezone

import numpy as np
import pytest

from vidspark.cli import main
from vidspark.outputs import write_partitioned
from vidspark.schemas import FEATURES_SCHEMA


def features_table(spark, path, labels, *, bad_rows=0, dim=8):
    rng = np.random.default_rng(0)
    rows = []
    for i, label in enumerate(labels):
        vec = rng.normal(size=dim).astype(np.float32)
        if i < bad_rows:
            vec[i % dim] = np.nan if i % 2 else np.inf
        ts = datetime(2026, 11, 20, tzinfo=timezone.utc)
        rows.append((f"s3://b/{label}/{i}.jpg", "e", "unknown", None, 0, ts, date(2026, 11, 20), label, [float(v) for v in vec], "resnet50/random-seed0@224", ts, None, None, None))
    write_partitioned(spark.createDataFrame(rows, schema=FEATURES_SCHEMA), str(path))


@pytest.mark.parametrize(
    "labels, bad_rows, needle",
    [
        (["car"] * 12, 0, "at least 2 classes"),
        (["car"] * 6 + ["person"] * 6, 2, "2 labeled rows have NaN or inf features"),
        (["car"] * 6 + ["person"], 0, "fewer than 2 videos/images"),
    ],
)
def test_training_data_refused_with_reason(spark, tmp_path, capsys, labels, bad_rows, needle):
    features_table(spark, tmp_path / "features", labels, bad_rows=bad_rows)
    assert main(["train", "--features", str(tmp_path / "features"), "--model", str(tmp_path / "model")], spark=spark) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "model").exists()
