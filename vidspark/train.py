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
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from vidspark import __version__
from vidspark.config import Conf, TrainConf
from vidspark.errors import TrainingDataError
from vidspark.model import CONFUSION_PNG, predict_proba, save_model_dir
from vidspark.outputs import read_table
from vidspark.schemas import FEATURES_SCHEMA

logger = logging.getLogger(__name__)

# Fast on 2048 dense, redundant CNN features (bench/train.py, bench/NOTES.md): each tree sees a tenth
# of the features and half the rows, float32 in, 63 bins, histograms column-wise.
DEFAULT_PARAMS: dict[str, Any] = {
    "learning_rate": 0.1,
    "num_leaves": 31,
    "min_data_in_leaf": 5,
    "feature_fraction": 0.1,
    "bagging_fraction": 0.5,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "max_bin": 63,
    "force_col_wise": True,
    "verbosity": -1,
}


@dataclass
class LabeledSet:
    """Labeled features gathered to the driver."""

    X: np.ndarray
    y: np.ndarray  # int class index
    groups: np.ndarray
    classes: list[str]
    featurizer: str
    sampled_from: int


def gather_labeled(features_df: DataFrame, *, max_rows: int, seed: int) -> LabeledSet:
    """Collect labeled rows through Arrow, stratified-sampled down to ``max_rows`` if needed.

    Raises
    ------
    TrainingDataError
        No labeled rows, one class only, features of several featurizers, or non-finite features.
    """
    labeled = features_df.where(F.col("label").isNotNull())
    counts = {r["label"]: int(r["count"]) for r in labeled.groupBy("label").count().collect()}
    total = sum(counts.values())
    if total == 0:
        raise TrainingDataError("no labeled rows in the features: featurize a labeled set (layout with {label}) first")
    if len(counts) < 2:
        raise TrainingDataError(f"training needs at least 2 classes, found only {sorted(counts)} ({total} rows)")
    if total > max_rows:
        fraction = max_rows / total
        logger.warning("sampling %d of %d labeled rows (train.max_rows), same fraction per class", max_rows, total)
        labeled = labeled.sampleBy("label", {k: fraction for k in counts}, seed=seed)
    pdf: Any = labeled.select(
        "label",
        F.when(F.col("video_id").isNotNull(), F.concat_ws("/", "camera_id", "video_id")).otherwise(F.col("uri")).alias("group"),
        "featurizer",
        "features",
        "uri",
    ).toPandas()
    pdf = pdf.sort_values("uri", kind="stable").reset_index(drop=True)  # collection order is not deterministic
    featurizers = sorted(pdf["featurizer"].unique())
    if len(featurizers) > 1:
        raise TrainingDataError(f"labeled features come from several featurizers {featurizers}: featurize them with one setting")
    X = np.stack(pdf["features"].to_numpy()).astype(np.float32, copy=False)
    if not np.isfinite(X).all():
        bad = int((~np.isfinite(X).all(axis=1)).sum())
        raise TrainingDataError(f"{bad} labeled rows have NaN or inf features; re-featurize them")
    classes = sorted(pdf["label"].unique())
    if len(classes) < 2:
        raise TrainingDataError(f"after sampling to train.max_rows only {classes} remain; raise train.max_rows")
    index = {c: i for i, c in enumerate(classes)}
    y = pdf["label"].map(index).to_numpy(dtype=np.int64)
    return LabeledSet(X=X, y=y, groups=pdf["group"].to_numpy(dtype=object), classes=classes, featurizer=featurizers[0], sampled_from=total)


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
        proba = predict_proba(booster, data.X[test_idx], n_classes)  # LightGBM predicts at best_iteration
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


def train(spark: SparkSession, *, features: str, model_dir: str, conf: Conf) -> dict[str, Any]:
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
    logger.info("gathered %d labeled rows x %d features, classes %s", len(data.y), data.X.shape[1], data.classes)
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
    logger.info("train done: CV accuracy %.4f, F1 %.4f, model at %s", overall["accuracy"], overall["f1"], path)
    return summary
