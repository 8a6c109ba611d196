"""``vidspark timeline``: one video's per-frame raw and smoothed class probabilities as a PNG.

A person looks at it to see what the rolling average did: the raw probability of each class jumps
from frame to frame (the flicker), the smoothed one settles on the video's label.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from vidspark.errors import ConfigError
from vidspark.outputs import join, path_exists, read_table
from vidspark.schemas import FRAME_PREDICTIONS_SCHEMA, PRESENTATION_ORDER, VIDEO_PREDICTIONS_SCHEMA

logger = logging.getLogger(__name__)


def decode_probabilities(pdf: pd.DataFrame, columns: tuple[str, ...] = ("probabilities", "smoothed_probabilities")) -> list[str]:
    """Turn the class-name -> probability maps of ``columns`` into arrays over one class list, in place; returns it.

    Rows of several models (a retrain that added a class) decode together: the class list is every
    class seen, in the order the models name them, and a class a row's model did not have is NaN.
    """
    classes: dict[str, None] = {}
    for col in columns:
        for m in pdf[col]:
            classes.update(dict.fromkeys(k for k, _ in _pairs(m)))
    names = list(classes)
    for col in columns:
        pdf[col] = [np.array([dict(_pairs(m)).get(c, np.nan) for c in names], dtype=np.float64) for m in pdf[col]]
    return names


def _pairs(m: Any) -> list[tuple[str, float]]:
    """A map value as Spark hands it to pandas (a dict, or a list of key/value pairs) as pairs."""
    return list(m.items()) if isinstance(m, dict) else [(k, v) for k, v in m]


def video_frames(spark: SparkSession, predictions: str, *, video_id: str, camera_id: str | None = None) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    """The frames of one video, in time order, and its ``predictions/videos`` row (None if absent).

    Raises
    ------
    ConfigError
        If no frame has this video id, or it exists in several cameras and ``camera_id`` is not given.
    """
    if not path_exists(spark, join(predictions, "frames")):
        raise ConfigError(f"no frames/ table in {predictions!r}: --predictions must be the folder `vidspark predict --output` wrote")
    frames_df = read_table(spark, join(predictions, "frames"), FRAME_PREDICTIONS_SCHEMA).where(F.col("video_id") == video_id)
    if camera_id is not None:
        frames_df = frames_df.where(F.col("camera_id") == camera_id)
    cols = ["camera_id", "video_id", "uri", "object_ts", "frame_ts", "frame_idx", "probabilities", "smoothed_probabilities", "predicted_label", "smoothed_label", "model_id"]
    pdf: pd.DataFrame = frames_df.select(*cols).toPandas()
    if pdf.empty:
        where = f" in camera {camera_id!r}" if camera_id else ""
        known = [r[0] for r in read_table(spark, join(predictions, "frames"), FRAME_PREDICTIONS_SCHEMA).select("video_id").where(F.col("video_id").isNotNull()).distinct().limit(10).collect()]
        raise ConfigError(f"no frames of video {video_id!r}{where} in {predictions!r}; some video ids there: {known}")
    cameras = sorted(pdf["camera_id"].unique())
    if len(cameras) > 1:
        raise ConfigError(f"video {video_id!r} exists in cameras {cameras}: pass --camera to choose one")
    pdf = pdf.sort_values(PRESENTATION_ORDER, kind="stable").reset_index(drop=True)
    summary = None
    videos_path = join(predictions, "videos")
    try:
        rows = read_table(spark, videos_path, VIDEO_PREDICTIONS_SCHEMA).where((F.col("video_id") == video_id) & (F.col("camera_id") == cameras[0])).collect()
        summary = rows[0].asDict() if rows else None
    except Exception as exc:  # the picture does not need the summary row; say why it is missing
        logger.warning("no video summary for %s from %s: %s", video_id, videos_path, exc)
    return pdf, summary


def plot_timeline(pdf: pd.DataFrame, classes: list[str], out: str | Path, *, summary: dict[str, Any] | None = None) -> Path:
    """Draw raw (thin) and smoothed (thick) probabilities per class over time, and the label strips below.

    ``pdf``'s probability columns are arrays over ``classes`` (see :func:`decode_probabilities`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    raw = np.stack(pdf["probabilities"].to_numpy())
    smooth = np.stack(pdf["smoothed_probabilities"].to_numpy())
    t = pd.to_datetime(pdf["frame_ts"])
    if t.dt.tz is not None:
        t = t.dt.tz_convert("UTC").dt.tz_localize(None)
    # A frame folder's frames share one time: there the x axis is the frame's place in the video.
    by_time = t.is_monotonic_increasing and t.nunique() == len(t)
    x_values: Any = t if by_time else np.arange(len(pdf))
    colors = [plt.get_cmap("tab10")(k) for k in range(10)]
    fig, (ax, strip) = plt.subplots(2, 1, figsize=(10, 5), sharex=True, gridspec_kw={"height_ratios": [4, 1]}, constrained_layout=True)
    for k, name in enumerate(classes):
        c = colors[k % len(colors)]
        ax.plot(x_values, raw[:, k], color=c, lw=0.8, alpha=0.45, marker=".", ms=3, label=f"{name} (raw)")
        ax.plot(x_values, smooth[:, k], color=c, lw=2.4, label=f"{name} (smoothed)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("probability")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    index = {name: k for k, name in enumerate(classes)}
    bands = np.array([[index[v] for v in pdf["predicted_label"]], [index[v] for v in pdf["smoothed_label"]]])
    edges = mdates.date2num(t.to_numpy()) if by_time else np.arange(len(pdf), dtype=float)
    step = np.median(np.diff(edges)) if len(edges) > 1 else (1 / 86400 if by_time else 1.0)
    x = np.append(edges - step / 2, edges[-1] + step / 2)
    strip.pcolormesh(x, [0, 1, 2], bands, cmap=ListedColormap([colors[k % len(colors)] for k in range(len(classes))]), vmin=-0.5, vmax=len(classes) - 0.5)
    strip.set_yticks([0.5, 1.5], ["raw label", "smoothed"])
    if by_time:
        strip.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        strip.set_xlabel(f"frame time (UTC, {t.iloc[0]:%Y-%m-%d})")
    else:
        strip.set_xlabel(f"frame in presentation order (the frames share one time, {t.iloc[0]:%Y-%m-%d %H:%M:%S} UTC)")
    camera, video = pdf["camera_id"].iloc[0], pdf["video_id"].iloc[0]
    if summary is not None:
        label, prob = summary["label"], summary["prob"]
        switches = f"label switches raw {summary['raw_label_switches']} -> smoothed {summary['smoothed_label_switches']}"
    else:
        mean = raw.mean(axis=0)
        label, prob = classes[int(mean.argmax())], float(mean.max())
        switches = ""
    ax.set_title(f"{camera} / {video}: final label {label} ({prob:.2f}), {len(pdf)} frames  {switches}", fontsize=10)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def timeline(spark: SparkSession, *, predictions: str, video_id: str, out: str, camera_id: str | None = None) -> dict[str, Any]:
    """Read one video's predictions and write its timeline PNG to ``out`` (a local path)."""
    pdf, summary = video_frames(spark, predictions, video_id=video_id, camera_id=camera_id)
    classes = decode_probabilities(pdf)
    path = plot_timeline(pdf, classes, out, summary=summary)
    logger.info("timeline of %s/%s (%d frames) written to %s", pdf["camera_id"].iloc[0], video_id, len(pdf), path)
    return {"video_id": video_id, "camera_id": pdf["camera_id"].iloc[0], "frames": len(pdf), "classes": classes, "label": summary["label"] if summary else None, "out": str(path)}
