"""Train: gather labeled features, grouped stratified k-fold CV of LightGBM, final fit, model dir.

Folds are grouped by video (``camera_id/video_id``; an image with no video is its own group) so
that near-identical frames of one video never sit on both sides of a fold, which would inflate
the scores. Early stopping inside each fold uses an inner grouped split of the *training* part,
so the held-out fold stays unseen; the final model is fit on all rows for the median best
iteration of the folds.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from vidspark import __version__
from vidspark.config import Conf, TrainConf
from vidspark.errors import TrainingDataError
from vidspark.model import CONFUSION_PNG, predict_proba, save_model_dir
from vidspark.outputs import read_table
from vidspark.schemas import FEATURES_SCHEMA, PRESENTATION_ORDER

logger = logging.getLogger(__name__)

# Fast on 2048 dense, redundant CNN features (bench/train.py, bench/NOTES.md): each tree sees a tenth
# of the features and half the rows, float32 in, 63 bins, histograms column-wise. Bin edges come from
# 20 000 sampled rows, not LightGBM's 200 000: while it bins, LightGBM keeps every sampled non-zero value
# as a double plus an int index in growing vectors (~18 bytes each, 4.5× the float32 rows: at the default
# that is more than the driver's whole float32 matrix of 200 000 rows); 20 000 still give each of the 63
# bins ~300 samples (bench/train_memory.py).
DEFAULT_PARAMS: dict[str, Any] = {
    "learning_rate": 0.1,
    "num_leaves": 31,
    "min_data_in_leaf": 5,
    "feature_fraction": 0.1,
    "bagging_fraction": 0.5,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "max_bin": 63,
    "bin_construct_sample_cnt": 20_000,
    "force_col_wise": True,
    "verbosity": -1,
}

PREDICT_ROWS = 8192  # rows per out-of-fold prediction call: 64 MB of 2048 float32 features


@dataclass
class LabeledSet:
    """Labeled features gathered to the driver: row ``i`` of ``X``, ``y`` and ``groups`` is one frame, rows in (uri, frame_idx) order."""

    X: np.ndarray  # float32, C-contiguous, (rows, feature dim)
    y: np.ndarray  # int class index
    groups: np.ndarray
    classes: list[str]
    featurizer: str
    sampled_from: int
    sample: dict[str, Any] | None = None  # how the rows were sampled (train.max_rows), None when all were kept


def _group() -> Column:
    """A frame's group for sampling and CV: its video (camera_id/video_id), or the object itself (an image, a video file without a video id)."""
    return F.when(F.col("video_id").isNotNull(), F.concat_ws("/", "camera_id", "video_id")).otherwise(F.col("uri"))


def class_quotas(counts: dict[str, int], max_rows: int) -> dict[str, int]:
    """Rows per class for a sample of ``max_rows``: proportional to ``counts``, largest remainders rounded up (ties by name)."""
    total = sum(counts.values())
    if total <= max_rows:
        return dict(counts)
    exact = {c: max_rows * n / total for c, n in counts.items()}
    quotas = {c: int(q) for c, q in exact.items()}
    for c in sorted(exact, key=lambda c: (quotas[c] - exact[c], c))[: max_rows - sum(quotas.values())]:
        quotas[c] += 1
    return quotas


def frames_per_group_cap(sizes: dict[int, int], quota: int) -> int:
    """Largest k with sum(n_groups * min(size, k)) <= ``quota`` (``sizes``: group size -> number of groups); 0 if even k=1 exceeds it."""
    if sum(sizes.values()) > quota:
        return 0
    lo, hi = 1, max(sizes)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(n * min(s, mid) for s, n in sizes.items()) <= quota:
            lo = mid
        else:
            hi = mid - 1
    return lo


def filter_group_sample(labeled_df: DataFrame, *, caps: dict[str, int], quotas: dict[str, int], seed: int) -> DataFrame:
    """``(uri, frame_idx)`` of the sampled frames of ``labeled_df`` (which has a ``group`` column).

    A label with a cap k keeps every group, each with min(size, k) frames evenly spaced in
    presentation order from a seeded phase; a label with cap 0 (more groups than its quota) keeps
    one such frame in each of ``quotas[label]`` groups, the groups with the smallest seeded hash.
    Every choice is a function of the rows and the seed, never of partitioning or task order.
    """
    group_hash = F.xxhash64(F.lit(seed), F.col("group"))
    keys = labeled_df.select("label", "group", "uri", "frame_idx", *[c for c in PRESENTATION_ORDER if c not in ("uri", "frame_idx")])
    few = [label for label, k in caps.items() if k == 0]
    if few:
        ranked = (
            keys.where(F.col("label").isin(few))
            .select("label", "group")
            .distinct()
            .withColumn("_grank", F.row_number().over(Window.partitionBy("label").orderBy(group_hash, "group")))
            .where(F.col("_grank") <= _by_label({c: quotas[c] for c in few}))
        )
        keys = keys.where(~F.col("label").isin(few)).unionByName(keys.where(F.col("label").isin(few)).join(ranked.select("label", "group"), ["label", "group"], "left_semi"))
    in_group = Window.partitionBy("label", "group")
    keys = (
        keys.withColumn("_k", _by_label({c: max(k, 1) for c, k in caps.items()}))
        .withColumn("_s", F.count(F.lit(1)).over(in_group))
        .withColumn("_r", F.row_number().over(in_group.orderBy(*PRESENTATION_ORDER)) - 1)
        .withColumn("_u", F.pmod(group_hash, F.col("_s")))
    )
    # Ranks floor((j*s + u) / k), j < k: k frames evenly spaced over s. Row r holds one iff
    # ceil(((r+1)k - u) / s) - ceil((r*k - u) / s) = 1; ceil(a / s) = (a + pmod(-a, s)) div s, exact in integers.
    ceil_div = "((({a}) + pmod(-({a}), _s)) div _s)"
    picked = F.expr(f"{ceil_div.format(a='(_r + 1) * _k - _u')} - {ceil_div.format(a='_r * _k - _u')} = 1")
    return keys.where((F.col("_s") <= F.col("_k")) | picked).select("uri", "frame_idx")


def _by_label(values: dict[str, int]) -> Column:
    """A per-label constant: ``values[label]`` of each row's label."""
    return F.create_map(*[F.lit(x) for item in sorted(values.items()) for x in item])[F.col("label")]


def _arrow_partitions(df: DataFrame) -> Iterator[Any]:
    """``df`` as Arrow record batches made on the executors, fetched one partition at a time (the next one prefetched).

    Unlike ``toPandas``/``_collect_as_arrow``, which gather every partition's batches at once, the
    driver holds at most two partitions (``toLocalIteratorAndServe``, one Spark job per partition,
    each within ``spark.driver.maxResultSize``), and no Python worker or pickling sits in the way.
    """
    import pyarrow as pa
    from pyspark.serializers import NoOpSerializer
    from pyspark.sql.pandas.types import to_arrow_schema

    try:
        from pyspark.util import _local_iterator_from_socket
    except ImportError:  # PySpark 3.5 keeps it in pyspark.rdd
        from pyspark.rdd import _local_iterator_from_socket  # type: ignore[attr-defined,no-redef]

    spark: Any = df.sparkSession
    # The messages carry no schema: read them with the one the JVM wrote them for (Spark types mapped as toPandas maps them).
    large = str(spark.conf.get("spark.sql.execution.arrow.useLargeVarTypes", "false")).lower() == "true"
    try:
        schema = to_arrow_schema(df.schema, timezone=spark.conf.get("spark.sql.session.timeZone"), prefers_large_types=large)
    except TypeError:  # PySpark 3.5: no time zone or large-type options (the columns read here have no timestamps)
        schema = to_arrow_schema(df.schema)
    sock_info = spark.sparkContext._jvm.PythonRDD.toLocalIteratorAndServe(df._jdf.toArrowBatchRdd(), True)
    for message in _local_iterator_from_socket(sock_info, NoOpSerializer()):
        yield pa.ipc.read_record_batch(pa.py_buffer(message), schema)


def _reorder_rows(X: np.ndarray, order: list[int]) -> None:
    """``X[:] = X[order]`` without a second copy of ``X``: follow the permutation's cycles with one spare row."""
    done = bytearray(len(order))
    spare = np.empty(X.shape[1], X.dtype)
    for start in range(len(order)):
        if done[start] or order[start] == start:
            continue
        spare[:] = X[start]
        i = start
        while True:
            done[i] = 1
            j = order[i]
            if j == start:
                X[i] = spare
                break
            X[i] = X[j]
            i = j


def gather_labeled(features_df: DataFrame, *, max_rows: int, seed: int) -> LabeledSet:
    """Stream the labeled rows into one float32 matrix on the driver, sampled to ``max_rows`` when there are more.

    Executors turn each partition into Arrow batches; the driver fetches them a partition at a time
    and copies each batch's values into a preallocated float32 ``X``, so its memory is ``X`` plus a
    partition or two, never a float64 or pandas copy of the set. Above ``max_rows``, the sample is
    stratified by label (classes keep their shares) and group-aware: see :func:`filter_group_sample`.
    Rows are ordered by (uri, frame_idx), so the set depends on the store and the seed alone.

    Raises
    ------
    TrainingDataError
        No labeled rows, one class only (before or after sampling), features of several featurizers
        or of several lengths, non-finite features, or a store that changed while it was read.
    """
    labeled = features_df.where(F.col("label").isNotNull()).withColumn("group", _group())
    stats = labeled.groupBy("label", "featurizer").count().collect()
    counts: dict[str, int] = {}
    for r in stats:
        counts[r["label"]] = counts.get(r["label"], 0) + int(r["count"])
    total = sum(counts.values())
    if total == 0:
        raise TrainingDataError("no labeled rows in the features: featurize a labeled set (layout with {label}) first")
    if len(counts) < 2:
        raise TrainingDataError(f"training needs at least 2 classes, found only {sorted(counts)} ({total} rows)")
    featurizers = sorted({r["featurizer"] for r in stats})
    if len(featurizers) > 1:
        raise TrainingDataError(f"labeled features come from several featurizers {featurizers}: featurize them with one setting")
    sample = None
    n_rows = total
    if total > max_rows:
        quotas = class_quotas(counts, max_rows)
        classes = sorted(c for c, q in quotas.items() if q > 0)
        if len(classes) < 2:
            raise TrainingDataError(f"after sampling to train.max_rows only {classes} remain; raise train.max_rows")
        hist: dict[str, dict[int, int]] = {c: {} for c in classes}
        for r in labeled.where(F.col("label").isin(classes)).groupBy("label", "group").count().groupBy("label", F.col("count").alias("size")).count().collect():
            hist[r["label"]][int(r["size"])] = int(r["count"])
        caps = {c: frames_per_group_cap(hist[c], quotas[c]) for c in classes}
        per_class = {c: sum(n * min(s, caps[c]) for s, n in hist[c].items()) if caps[c] else quotas[c] for c in classes}
        n_rows = sum(per_class.values())
        sample = {"seed": seed, "per_class": per_class, "frames_per_group": {c: caps[c] or 1 for c in classes}, "groups_sampled": {c: caps[c] == 0 for c in classes}}
        logger.warning("sampling %d of %d labeled rows (train.max_rows) by class and video: %s", n_rows, total, sample)
        if len(classes) < len(counts):
            logger.warning("classes with too few rows for a share of train.max_rows are left out: %s", sorted(set(counts) - set(classes)))
        kept = filter_group_sample(labeled.where(F.col("label").isin(classes)), caps=caps, quotas=quotas, seed=seed)
        labeled = labeled.join(F.broadcast(kept), ["uri", "frame_idx"], "left_semi")  # at most max_rows keys on the driver
    else:
        classes = sorted(counts)
    index = {c: i for i, c in enumerate(classes)}
    y = np.empty(n_rows, np.int64)
    frame_idx = np.empty(n_rows, np.int64)
    uris: list[str] = []
    groups: list[str] = []
    X: np.ndarray | None = None
    pos = bad = 0
    for batch in _arrow_partitions(labeled.select("label", "group", "uri", "frame_idx", "features")):
        m = batch.num_rows
        if m == 0:
            continue
        features = batch.column("features")
        lengths = features.value_lengths().fill_null(0).to_numpy()
        if X is None:
            X = np.empty((n_rows, int(lengths[0])), np.float32)  # pages are touched as rows arrive
        if (lengths != X.shape[1]).any():
            raise TrainingDataError(f"labeled features have {sorted({X.shape[1], *lengths.tolist()})} values per row: re-featurize them with one setting")
        if pos + m > n_rows:
            raise TrainingDataError(f"more than the {n_rows} labeled rows counted: the features changed while train read them, or rows repeat a (uri, frame_idx); run train again")
        block = X[pos : pos + m]
        block.reshape(-1)[:] = features.flatten().to_numpy(zero_copy_only=False)  # the only copy: Arrow buffer -> X
        bad += int((~np.isfinite(block)).any(axis=1).sum())
        y[pos : pos + m] = [index[c] for c in batch.column("label").to_pylist()]
        frame_idx[pos : pos + m] = batch.column("frame_idx").to_numpy()
        uris += batch.column("uri").to_pylist()
        groups += batch.column("group").to_pylist()
        pos += m
    if X is None or pos != n_rows:
        raise TrainingDataError(f"{pos} labeled rows read where {n_rows} were counted: the features changed while train read them; run train again")
    if bad:
        raise TrainingDataError(f"{bad} labeled rows have NaN or inf features; re-featurize them")
    frames = frame_idx.tolist()
    order = sorted(range(n_rows), key=lambda i: (uris[i], frames[i]))  # arrival order depends on partitioning
    _reorder_rows(X, order)
    return LabeledSet(X=X, y=y[order], groups=np.array(groups, dtype=object)[order], classes=classes, featurizer=featurizers[0], sampled_from=total, sample=sample)


def grouped_stratified_folds(y: np.ndarray, groups: np.ndarray, *, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold where every group lies wholly in one fold.

    With one row per group this is exact stratification (each class within 1 row of even per fold).
    ``n_splits`` is lowered, with a warning, when a class has fewer groups than folds.

    Raises
    ------
    TrainingDataError
        If some class has fewer than 2 groups (no fold could hold it out and still train on it).
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    groups_per_class = {int(c): len(set(groups[y == c])) for c in np.unique(y)}
    fewest = min(groups_per_class.values())
    if fewest < 2:
        raise TrainingDataError(f"a class has fewer than 2 videos/images (groups per class index: {groups_per_class}); cross-validation needs at least 2")
    if fewest < n_splits:
        warnings.warn(f"a class has only {fewest} groups; using {fewest} folds instead of {n_splits}", stacklevel=2)
        logger.warning("a class has only %d groups; using %d folds instead of %d", fewest, fewest, n_splits)
        n_splits = fewest
    if len(set(groups)) == len(groups):
        splitter: Any = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return [(tr, te) for tr, te in splitter.split(np.zeros(len(y)), y)]
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in splitter.split(np.zeros(len(y)), y, groups)]


def lgb_params(tconf: TrainConf, n_classes: int, *, threads: int = 0) -> dict[str, Any]:
    """LightGBM parameters: defaults, then the conf's ``train.params``; the caller's dict is not touched."""
    params = dict(DEFAULT_PARAMS)
    params.update(dict(tconf.params))
    params["seed"] = tconf.seed
    params["deterministic"] = True
    if threads:
        params.setdefault("num_threads", threads)
    if n_classes == 2:
        params.update(objective="binary")
        params.pop("num_class", None)
    else:
        params.update(objective="multiclass", num_class=n_classes)
    return params


def binned(params: dict[str, Any], X: np.ndarray, y: np.ndarray) -> Any:
    """A constructed LightGBM Dataset: features binned once, then shared by every fold's subset."""
    import lightgbm as lgb

    # All params: a later train must not change a dataset setting. Raw data freed: subsets are cut
    # from the binned data, not from copies of X's rows.
    return lgb.Dataset(X, label=y, free_raw_data=True, params={**params, "verbosity": -1}).construct()


def fit_booster(
    params: dict[str, Any],
    X: np.ndarray | None,
    y: np.ndarray | None,
    *,
    num_boost_round: int,
    valid: tuple[np.ndarray, np.ndarray] | None = None,
    early_stopping_rounds: int = 0,
    train_set: Any | None = None,
    valid_set: Any | None = None,
) -> Any:
    """Train one booster on arrays (or a prebuilt ``train_set``), with early stopping on ``valid``/``valid_set`` when given."""
    import lightgbm as lgb

    params = dict(params)
    if train_set is None:
        train_set = lgb.Dataset(X, label=y, free_raw_data=True, params={"max_bin": params.get("max_bin", 255)})
    callbacks: list[Any] = []
    valid_sets = []
    if valid is not None:
        valid_set = lgb.Dataset(valid[0], label=valid[1], reference=train_set)
    if valid_set is not None and early_stopping_rounds > 0:
        valid_sets = [valid_set]
        callbacks.append(lgb.early_stopping(early_stopping_rounds, verbose=False))
    return lgb.train(params, train_set, num_boost_round=num_boost_round, valid_sets=valid_sets, callbacks=callbacks)


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 (binary on the second class, else macro), ROC AUC, confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score

    y_pred = proba.argmax(axis=1)
    average = "binary" if n_classes == 2 else "macro"
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0, labels=None if n_classes == 2 else list(range(n_classes)))
    auc: float | None
    try:
        if n_classes == 2:
            auc = float(roc_auc_score(y_true, proba[:, 1]))
        else:
            auc = float(roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=list(range(n_classes))))
    except ValueError:  # a fold without every class has no defined AUC
        auc = None
    return {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "roc_auc": auc,
        "average": average,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=list(range(n_classes))).tolist(),
    }


def cross_validate(data: LabeledSet, tconf: TrainConf, *, threads: int = 0) -> dict[str, Any]:
    """Grouped stratified k-fold CV; returns per-fold and pooled out-of-fold metrics."""
    n_classes = len(data.classes)
    params = lgb_params(tconf, n_classes, threads=threads)
    folds = grouped_stratified_folds(data.y, data.groups, n_splits=tconf.folds, seed=tconf.seed)
    # Bin the features once (bin edges use no labels), as lightgbm.cv does: each fold trains on a
    # subset of this Dataset, with no copy of X and no re-binning of 2048 columns.
    full = binned(params, data.X, data.y)
    oof = np.zeros((len(data.y), n_classes))
    fold_reports = []
    best_iterations = []
    for k, (train_idx, test_idx) in enumerate(folds):
        valid_set = None
        inner_train = train_idx
        if tconf.early_stopping_rounds > 0:
            try:
                inner = grouped_stratified_folds(data.y[train_idx], data.groups[train_idx], n_splits=max(2, min(5, tconf.folds)), seed=tconf.seed + k + 1)
                fit_i, stop_i = inner[0]
                inner_train = train_idx[fit_i]
                valid_set = full.subset(np.sort(train_idx[stop_i]))
            except TrainingDataError:
                valid_set = None  # too few groups for an inner split: fixed rounds
        booster = fit_booster(
            params,
            None,
            None,
            num_boost_round=tconf.num_boost_round,
            train_set=full.subset(np.sort(inner_train)),
            valid_set=valid_set,
            early_stopping_rounds=tconf.early_stopping_rounds,
        )
        best = int(booster.best_iteration or booster.current_iteration())
        best_iterations.append(best)
        # At best_iteration; in slices, so the fold's rows are never copied out of X at once (a fifth of X).
        proba = np.concatenate([predict_proba(booster, data.X[part], n_classes) for part in np.array_split(test_idx, max(1, -(-len(test_idx) // PREDICT_ROWS)))])
        oof[test_idx] = proba
        report = classification_metrics(data.y[test_idx], proba, n_classes)
        test_groups = sorted(set(data.groups[test_idx]))
        report.update(fold=k, train_rows=len(train_idx), best_iteration=best, test_groups=len(test_groups), test_group_ids=[str(g) for g in test_groups])
        fold_reports.append(report)
        logger.info("fold %d: accuracy %.4f f1 %.4f auc %s (best iteration %d)", k, report["accuracy"], report["f1"], report["roc_auc"], best)
    overall = classification_metrics(data.y, oof, n_classes)
    mean = {m: float(np.mean([f[m] for f in fold_reports])) for m in ("accuracy", "precision", "recall", "f1")}
    aucs = [f["roc_auc"] for f in fold_reports if f["roc_auc"] is not None]
    mean["roc_auc"] = float(np.mean(aucs)) if aucs else None  # type: ignore[assignment]
    std = {m: float(np.std([f[m] for f in fold_reports])) for m in ("accuracy", "f1")}
    return {
        "dataset": full,
        "classes": data.classes,
        "n_splits": len(folds),
        "grouped_by": "camera_id/video_id (image uri where no video)",
        "folds": fold_reports,
        "overall_out_of_fold": overall,
        "mean_over_folds": mean,
        "std_over_folds": std,
        "best_iterations": best_iterations,
        "params": params,
    }


def plot_confusion(matrix: list[list[int]], classes: list[str], path: Path) -> None:
    """Save the pooled out-of-fold confusion matrix as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(matrix)
    side = max(3.5, 0.7 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("out-of-fold confusion matrix")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train(spark: SparkSession, *, features: str, model_dir: str, conf: Conf, run_id: str | None = None) -> dict[str, Any]:
    """Train and cross-validate a classifier on the labeled rows of ``features``; write ``model_dir``.

    Returns
    -------
    dict
        Summary with rows, classes, CV metrics and the model path.

    Raises
    ------
    TrainingDataError
        See :func:`gather_labeled` and :func:`grouped_stratified_folds`.
    """
    tconf = conf.train
    t0 = time.perf_counter()
    features_df = read_table(spark, features, FEATURES_SCHEMA)
    data = gather_labeled(features_df, max_rows=tconf.max_rows, seed=tconf.seed)
    t_gather = time.perf_counter() - t0
    logger.info("gathered %d labeled rows x %d features (%.0f MB float32) in %.1f s, classes %s", len(data.y), data.X.shape[1], data.X.nbytes / 2**20, t_gather, data.classes)
    threads = int(spark.sparkContext.getConf().get("spark.driver.cores", "0") or 0)
    t1 = time.perf_counter()
    cv = cross_validate(data, tconf, threads=threads)
    t_cv = time.perf_counter() - t1
    t2 = time.perf_counter()
    final_rounds = max(1, int(np.median(cv["best_iterations"])))
    booster = fit_booster(cv["params"], None, None, num_boost_round=final_rounds, train_set=cv.pop("dataset"))
    t_fit = time.perf_counter() - t2
    model_str = booster.model_to_string(num_iteration=final_rounds)
    class_counts = Counter(data.classes[i] for i in data.y)
    overall = cv["overall_out_of_fold"]
    meta = {
        "classes": data.classes,
        "feature_dim": int(data.X.shape[1]),
        "featurizer": data.featurizer,
        "objective": cv["params"]["objective"],
        "params": cv["params"],
        "best_iteration": final_rounds,
        "cv": {
            "n_splits": cv["n_splits"],
            "out_of_fold": {k: overall[k] for k in ("accuracy", "precision", "recall", "f1", "roc_auc")},
            "mean_over_folds": cv["mean_over_folds"],
        },
        "training_set": {
            "rows": len(data.y),
            "labeled_rows_available": data.sampled_from,
            "groups": len(set(data.groups)),
            "per_class": dict(sorted(class_counts.items())),
            "sample": data.sample,
        },
        "features": features,
        "vidspark_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    path = save_model_dir(
        model_dir,
        model_str=model_str,
        meta=meta,
        cv_report=cv,
        write_extra=lambda d: plot_confusion(overall["confusion_matrix"], data.classes, d / CONFUSION_PNG),
        spark=spark,
        storage=conf.storage,
    )
    summary = {
        "features": features,
        "model": str(path),
        "rows": len(data.y),
        "classes": data.classes,
        "per_class": dict(sorted(class_counts.items())),
        "n_splits": cv["n_splits"],
        "cv_accuracy": overall["accuracy"],
        "cv_f1": overall["f1"],
        "cv_roc_auc": overall["roc_auc"],
        "best_iteration": final_rounds,
        "timings": {"gather_s": round(t_gather, 3), "cv_s": round(t_cv, 3), "final_fit_s": round(t_fit, 3)},
    }
    from vidspark.tracking import log_training  # imports mlflow only when MLFLOW_TRACKING_URI is set

    mlflow_run_id = log_training(str(path), summary, conf=conf, run_id=run_id, register=conf.train.register_model, spark=spark)  # after the model is written: a tracking failure is a warning
    if mlflow_run_id is not None:
        summary["mlflow_run_id"] = mlflow_run_id
    logger.info("train done: CV accuracy %.4f, F1 %.4f, model at %s", overall["accuracy"], overall["f1"], path)
    return summary
