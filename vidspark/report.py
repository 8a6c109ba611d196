"""``vidspark report``: one self-contained HTML page about one run, the page people look at after a night.

It shows the run's counts and timings (from its run record), its errors by camera and stage (the
``errors`` history filtered to the run id), the label distribution per camera and the videos that
flickered most (the ``predictions/videos`` rows the run wrote), with their timeline pictures
(:mod:`vidspark.timeline`), and links to the outputs.

Everything is read through Spark: the run record through Hadoop's FileSystem, the tables with their
contract schemas, so ``output`` may be ``s3a://`` on a cluster; only the HTML file is written, and
locally. The page has no external resources (CSS in the page, pictures as ``data:`` URIs) and no
JavaScript, so it opens the same from a mail attachment, a CI artifact or a file share.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import tempfile
from datetime import date, datetime, timedelta, timezone
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from vidspark import __version__
from vidspark.errors import ConfigError, StorageError, error_message
from vidspark.fs import is_hadoop_uri, join
from vidspark.outputs import list_names, read_partitions, read_table, read_text, table_exists
from vidspark.schemas import ERRORS_SCHEMA, FRAME_PREDICTIONS_SCHEMA, PRESENTATION_ORDER, VIDEO_PREDICTIONS_SCHEMA
from vidspark.timeline import decode_probabilities, plot_timeline

logger = logging.getLogger(__name__)

# Jobs whose run record describes a night: featurize + predict (``run``), and the demo, which ends with one.
REPORTED_JOBS = ("run", "demo")
# How the CLI names a run id it makes (vidspark.app.new_run_id): its start time, its job, a random suffix.
_DEFAULT_RUN_ID = re.compile(r"^(\d{8}T\d{6}Z)-([a-z]+)-[0-9a-f]{6}$")
# The counts the page shows, in order: (key, label, where in the run record: "featurize"/"predict" summary and key).
COUNTS = (
    ("listed", "objects listed", "featurize", "listed"),
    ("selected", "objects selected", "featurize", "selected"),
    ("featurized_objects", "objects featurized", "featurize", "featurized_objects"),
    ("featurized", "frames featurized", "featurize", "featurized"),
    ("skipped_unchanged", "objects skipped (unchanged)", "featurize", "skipped_unchanged"),
    ("replaced_objects", "objects featurized again (changed)", "featurize", "replaced_objects"),
    ("pruned_objects", "objects pruned", "featurize", "pruned_objects"),
    ("errors", "objects failed (errors rows)", "featurize", "error_count"),
    ("video_files", "video files listed", "featurize", "videos"),
    ("videos", "videos classified", "predict", "videos"),
    ("frames_predicted", "frames predicted", "predict", "frames"),
    ("raw_label_switches", "label switches, raw", "predict", "raw_label_switches"),
    ("smoothed_label_switches", "label switches, smoothed", "predict", "smoothed_label_switches"),
)
_ERROR_EXAMPLES = 20
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def report(spark: SparkSession, *, output: str, html: str, run_id: str | None = None, top: int = 5) -> dict[str, Any]:
    """Write the HTML report of one run of ``vidspark run`` (or the demo) over the output root ``output``.

    Parameters
    ----------
    spark
        The session that reads the run record and the tables.
    output
        The output root the run wrote (``features/``, ``errors/``, ``predictions/``, ``runs/``); any
        Hadoop URI (``s3a://...``) or a local path.
    html
        The HTML file to write (a local path).
    run_id
        The run to report; default the latest ``run`` (or ``demo``) record in ``output/runs``.
    top
        How many of the videos with the most raw label switches to show, with their timelines.

    Returns
    -------
    dict
        ``html`` (path), ``run_id``, ``status``, ``counts`` (as shown), ``errors`` (rows of the run),
        ``errors_by_camera``, ``videos`` (rows of the run), ``labels_by_camera``, ``flicker`` (the
        videos shown, in order), ``images``, ``bytes`` (size of the page).

    Raises
    ------
    ConfigError
        If ``top`` is negative, or there is no such run record (the message lists the runs there are).
    StorageError
        If ``output/runs`` cannot be read.
    """
    if top < 0:
        raise ConfigError(f"--top must be 0 or more, got {top}")
    record = find_run_record(spark, output, run_id=run_id)
    rid = str(record["run_id"])
    run_summary = run_summary_of(record)
    notes: list[str] = []
    if record.get("status") == "running":
        notes.append("The run record still says 'running': the run had not finished when this report was made, or its driver was killed.")
    if record.get("message"):
        notes.append(f"The run ended with: {record['message']}")

    errors_by_camera, error_examples = _errors(spark, join(output, "errors"), rid, notes)
    videos_df = _run_videos(spark, join(output, "predictions", "videos"), rid, run_summary.get("predict") or {}, notes)
    labels_by_camera: dict[str, dict[str, int]] = {}
    flicker: list[dict[str, Any]] = []
    if videos_df is not None:
        for r in videos_df.groupBy("camera_id", "label").count().collect():
            labels_by_camera.setdefault(r["camera_id"], {})[r["label"]] = int(r["count"])
        if top:
            order = [F.col("raw_label_switches").desc(), F.col("smoothed_label_switches").desc(), F.col("camera_id"), F.col("video_id")]
            flicker = [r.asDict() for r in videos_df.orderBy(*order).limit(top).collect()]
    images = _timelines(spark, join(output, "predictions", "frames"), flicker, notes)

    counts = {key: _pick(run_summary, part, field) for key, _, part, field in COUNTS}
    page = render(
        record,
        run_summary=run_summary,
        counts=counts,
        timings=_timings(record, run_summary),
        errors_by_camera=errors_by_camera,
        error_examples=error_examples,
        labels_by_camera=labels_by_camera,
        flicker=flicker,
        images=images,
        links=_links(output, record, run_summary),
        notes=notes,
    )
    out = Path(html)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    size = out.stat().st_size
    n_errors = sum(sum(v.values()) for v in errors_by_camera.values())
    n_videos = sum(sum(v.values()) for v in labels_by_camera.values())
    logger.info("report of run %s written to %s (%d KB): %d errors, %d videos, %d timelines", rid, out, size // 1024, n_errors, n_videos, len(images))
    return {
        "html": str(out),
        "run_id": rid,
        "job": record.get("job"),
        "status": record.get("status"),
        "counts": counts,
        "errors": n_errors,
        "errors_by_camera": errors_by_camera,
        "videos": n_videos,
        "labels_by_camera": labels_by_camera,
        "flicker": [{"camera_id": v["camera_id"], "video_id": v["video_id"], "raw_label_switches": v["raw_label_switches"]} for v in flicker],
        "images": len(images),
        "bytes": size,
    }


def find_run_record(spark: SparkSession, output: str, *, run_id: str | None = None) -> dict[str, Any]:
    """The run record ``output/runs/<run_id>.json``, or the latest record of a ``run`` (or ``demo``) there.

    "Latest" is by the record's ``started`` time. Records named as the CLI names run ids
    (``<start>-<job>-<suffix>``) are told apart by name, so only the newest of those is read; records
    with ids given by ``--run-id`` are read to learn their job and start.

    Raises
    ------
    ConfigError
        If the record does not exist, or ``output/runs`` holds no run record; the message lists what is there.
    """
    runs = join(output, "runs")
    names = [n[: -len(".json")] for n in list_names(spark, runs) if n.endswith(".json")]
    if run_id is not None:
        if run_id not in names:
            raise ConfigError(f"no run record {run_id!r} in {runs!r}; the latest there: {sorted(names, reverse=True)[:5] or 'none'}")
        return _read_record(spark, join(runs, f"{run_id}.json"))
    named = sorted((m.group(1), n) for n in names if (m := _DEFAULT_RUN_ID.match(n)) and m.group(2) in REPORTED_JOBS)
    candidates = [_read_record(spark, join(runs, f"{named[-1][1]}.json"))] if named else []
    candidates += [r for n in names if not _DEFAULT_RUN_ID.match(n) and (r := _read_record(spark, join(runs, f"{n}.json"))).get("job") in REPORTED_JOBS]
    if not candidates:
        raise ConfigError(f"no record of `vidspark run` in {runs!r} ({len(names)} other records): pass the output root a run wrote, or --run RUN_ID")
    return max(candidates, key=lambda r: (str(r.get("started") or ""), str(r.get("run_id"))))


def _read_record(spark: SparkSession, path: str) -> dict[str, Any]:
    """One run record (JSON)."""
    try:
        text = read_text(spark, path)
    except Exception as exc:  # the listing named it: the storage failed, not the argument
        raise StorageError(f"{path!r} cannot be read: {type(exc).__name__}: {error_message(exc)}") from exc
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{path!r} is not a run record (expected JSON): {exc}") from exc
    if not isinstance(record, dict) or "run_id" not in record:
        raise ConfigError(f"{path!r} is not a run record (expected a JSON object with a 'run_id')")
    return record


def run_summary_of(record: dict[str, Any]) -> dict[str, Any]:
    """The ``featurize``/``predict`` summary of a run record: its ``summary``, or for the demo ``summary.run``."""
    summary = record.get("summary") or {}
    if record.get("job") == "demo":
        summary = summary.get("run") or {}
    return summary if isinstance(summary, dict) else {}


def _pick(run_summary: dict[str, Any], part: str, key: str) -> Any:
    value = (run_summary.get(part) or {}).get(key)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _timings(record: dict[str, Any], run_summary: dict[str, Any]) -> list[tuple[str, float]]:
    """(stage, seconds) from the featurize and predict timings, then the whole job."""
    rows = []
    for part in ("featurize", "predict"):
        for key, seconds in ((run_summary.get(part) or {}).get("timings") or {}).items():
            if isinstance(seconds, (int, float)):
                rows.append((f"{part}: {key.removesuffix('_s').replace('_', ' ')}", float(seconds)))
    if isinstance(record.get("duration_s"), (int, float)):
        rows.append((f"whole job ({record.get('job')})", float(record["duration_s"])))
    return rows


def _errors(spark: SparkSession, path: str, run_id: str, notes: list[str]) -> tuple[dict[str, dict[str, int]], list[dict[str, Any]]]:
    """Errors of the run by camera and stage, and the first rows (by camera, stage, uri)."""
    if not table_exists(spark, path):
        notes.append(f"No errors table at {path}.")
        return {}, []
    errors_df = read_table(spark, path, ERRORS_SCHEMA).where(F.col("run_id") == run_id).withColumn("camera_id", F.coalesce("camera_id", F.lit("(none)")))
    by_camera: dict[str, dict[str, int]] = {}
    for r in errors_df.groupBy("camera_id", "stage").count().collect():
        by_camera.setdefault(r["camera_id"], {})[r["stage"]] = int(r["count"])
    examples = [r.asDict() for r in errors_df.orderBy("camera_id", "stage", "uri").limit(_ERROR_EXAMPLES).collect()] if by_camera else []
    return by_camera, examples


def _run_videos(spark: SparkSession, path: str, run_id: str, predict_summary: dict[str, Any], notes: list[str]) -> DataFrame | None:
    """The ``predictions/videos`` rows the run wrote (None if there is no such table).

    A run records the partitions it predicted: then only the folders of those cameras from the day
    before the earliest on are listed and read (a video that started before midnight has its row on
    its start day), not years of them. If fewer rows are found than the run counted, the whole table
    is read: a later run may have rewritten some, or a row lies further back.
    """
    if not table_exists(spark, path):
        notes.append(f"No videos table at {path}: the run predicted nothing, or did not get that far.")
        return None
    expected = predict_summary.get("videos")
    parts = predict_summary.get("partitions")
    if isinstance(parts, list) and parts:
        cameras = sorted({str(p["camera_id"]) for p in parts})
        from_date = (min(date.fromisoformat(str(p["date"])) for p in parts) - timedelta(days=1)).isoformat()
        narrow_df = read_partitions(spark, path, VIDEO_PREDICTIONS_SCHEMA, cameras=cameras, from_date=from_date)
        if narrow_df is not None:
            narrow_df = narrow_df.where(F.col("run_id") == run_id)
            if not isinstance(expected, int) or narrow_df.count() >= expected:
                return narrow_df
    videos_df = read_table(spark, path, VIDEO_PREDICTIONS_SCHEMA).where(F.col("run_id") == run_id)
    if isinstance(expected, int):
        found = videos_df.count()
        if found < expected:
            notes.append(f"The run classified {expected} videos; {found} of its rows are still in {path} (a later run predicted the others again).")
    return videos_df


def _timelines(spark: SparkSession, frames_path: str, videos: list[dict[str, Any]], notes: list[str]) -> dict[tuple[str, str], bytes]:
    """Timeline PNGs of ``videos`` (rows of ``predictions/videos``), keyed by (camera_id, video_id).

    All their frames are read in one pass over only the partitions they can lie in: their camera,
    from their start date to the day after their end. The frames are the video's as the table holds
    them now (a frame of an earlier day keeps the run id of the run that wrote its partition).
    """
    if not videos:
        return {}
    parts = sorted({(v["camera_id"], (v["date"] + timedelta(days=k)).isoformat()) for v in videos for k in range((_utc_date(v["end_ts"]) - v["date"]).days + 2)})
    frames_df = read_partitions(spark, frames_path, FRAME_PREDICTIONS_SCHEMA, partitions=parts) if table_exists(spark, frames_path) else None
    if frames_df is None:
        notes.append(f"No frames of the flickering videos in {frames_path}: no timelines.")
        return {}
    wanted = F.lit(False)
    for v in videos:
        wanted = wanted | ((F.col("camera_id") == v["camera_id"]) & (F.col("video_id") == v["video_id"]))
    cols = ["camera_id", "video_id", "uri", "object_ts", "frame_ts", "frame_idx", "probabilities", "smoothed_probabilities", "predicted_label", "smoothed_label"]
    pdf: pd.DataFrame = frames_df.where(wanted).select(*cols).toPandas()
    images: dict[tuple[str, str], bytes] = {}
    with tempfile.TemporaryDirectory(prefix="vidspark-report-") as tmp:
        for n, v in enumerate(videos):
            one = pdf[(pdf["camera_id"] == v["camera_id"]) & (pdf["video_id"] == v["video_id"])].sort_values(PRESENTATION_ORDER, kind="stable").reset_index(drop=True)
            if one.empty:
                notes.append(f"No frames of {v['camera_id']} / {v['video_id']} in {frames_path}: no timeline.")
                continue
            classes = decode_probabilities(one)
            png = plot_timeline(one, classes, Path(tmp) / f"{n}.png", summary=v)
            images[(v["camera_id"], v["video_id"])] = compact_png(png.read_bytes())
    return images


def compact_png(png: bytes, *, colors: int = 256) -> bytes:
    """``png`` re-encoded with a palette of at most ``colors`` colours (a chart of flat colours and thin lines looks the same at a third of the bytes)."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        small = img.convert("RGB").quantize(colors=colors, method=Image.Quantize.FASTOCTREE)
    buf = io.BytesIO()
    small.save(buf, format="PNG", optimize=True)
    return buf.getvalue() if buf.tell() < len(png) else png


def _utc_date(ts: datetime) -> date:
    """The UTC date of a timestamp as Spark collects it (naive in the driver's local time, or aware)."""
    return ts.astimezone(timezone.utc).date()


def _links(output: str, record: dict[str, Any], run_summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, location) of the outputs of the run."""
    model = (run_summary.get("predict") or {}).get("model") or (record.get("args") or {}).get("model")
    rows = [
        ("features", join(output, "features")),
        ("errors", join(output, "errors")),
        ("frame predictions", join(output, "predictions", "frames")),
        ("video predictions", join(output, "predictions", "videos")),
    ]
    if model:
        rows.append(("model", str(model)))
    rows.append(("run record", join(output, "runs", f"{record['run_id']}.json")))
    return rows


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d232a; margin: 0; background: #f4f6f8; }
main { max-width: 1180px; margin: 0 auto; padding: 20px 28px 40px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid #d5dbe1; }
.sub { color: #56606b; margin: 0 0 12px; }
.badge { display: inline-block; padding: 1px 10px; border-radius: 10px; font-weight: 600; font-size: 13px; vertical-align: middle; }
.ok { background: #d8f3dc; color: #1b5e20; } .failed { background: #fddede; color: #8e1b1b; } .running { background: #fff1c2; color: #7a5a00; }
.notes { background: #fff8e1; border-left: 4px solid #f2b600; padding: 6px 12px; margin: 12px 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 8px; }
.card { background: #fff; border: 1px solid #dde3e8; border-radius: 6px; padding: 8px 10px; }
.card .v { font-size: 22px; font-weight: 600; } .card .k { color: #56606b; font-size: 12px; }
table { border-collapse: collapse; background: #fff; margin: 4px 0 8px; }
th, td { border: 1px solid #dde3e8; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #eef2f5; font-weight: 600; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.bar { height: 12px; background: #5b8fd6; border-radius: 2px; min-width: 1px; }
.stack { display: flex; width: 320px; height: 14px; border-radius: 2px; overflow: hidden; background: #eee; }
.key span { display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 12px; border-radius: 2px; }
figure { background: #fff; border: 1px solid #dde3e8; border-radius: 6px; margin: 10px 0; padding: 8px; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: #56606b; font-size: 13px; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12.5px; }
.msg { max-width: 520px; overflow-wrap: anywhere; }
footer { color: #7a848e; font-size: 12px; margin-top: 30px; }
"""


def _e(value: Any) -> str:
    return escape("" if value is None else str(value))


def _num(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.3f}"
    return f"{int(value):,}"


def _href(location: str) -> str | None:
    """A link to an output: ``file://`` for a local path, the URI as given for a Hadoop URI, none otherwise (``models:/...``)."""
    if is_hadoop_uri(location):
        return location
    if ":" in location.split("/", 1)[0]:
        return None
    return Path(location).resolve().as_uri()


def render(
    record: dict[str, Any],
    *,
    run_summary: dict[str, Any],
    counts: dict[str, Any],
    timings: list[tuple[str, float]],
    errors_by_camera: dict[str, dict[str, int]],
    error_examples: list[dict[str, Any]],
    labels_by_camera: dict[str, dict[str, int]],
    flicker: list[dict[str, Any]],
    images: dict[tuple[str, str], bytes],
    links: list[tuple[str, str]],
    notes: list[str],
) -> str:
    """The report page (HTML text) from what :func:`report` gathered; pure, no Spark."""
    rid, status = str(record["run_id"]), str(record.get("status") or "unknown")
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>vidspark report: {_e(rid)}</title><style>{_CSS}</style></head><body><main>",
        f'<h1>vidspark nightly report <span class="badge {_e(status) if status in ("ok", "failed", "running") else "running"}" id="status">{_e(status)}</span></h1>',
        f'<p class="sub">run <code id="run-id">{_e(rid)}</code> · job {_e(record.get("job"))} · started {_e(record.get("started"))} · '
        f"ended {_e(record.get('ended') or '—')} · exit code {_e(record.get('exit_code'))}</p>",
    ]
    fz, pr = run_summary.get("featurize") or {}, run_summary.get("predict") or {}
    facts = [
        f'model <code title="{_e(pr["model_id"])}">{_e(str(pr["model_id"])[:12])}</code>' if pr.get("model_id") else "",
        f"classes {_e(', '.join(map(str, pr['classes'])))}" if pr.get("classes") else "",
        f"window {_e(pr['window'])}" if pr.get("window") else "",
        f"featurizer <code>{_e(fz['featurizer'])}</code>" if fz.get("featurizer") else "",
        f"input <code>{_e(fz['input'])}</code>" if fz.get("input") else "",
    ]
    if any(facts):
        out.append(f'<p class="sub">{" · ".join(f for f in facts if f)}</p>')
    if notes:
        out.append('<div class="notes" id="notes">' + "".join(f"<p>{_e(n)}</p>" for n in notes) + "</div>")

    out.append('<h2 id="counts">Counts</h2><div class="grid">')
    for key, label, _, _ in COUNTS:
        out.append(f'<div class="card"><div class="v" id="count-{key}" data-value="{_e(counts.get(key))}">{_num(counts.get(key))}</div><div class="k">{_e(label)}</div></div>')
    out.append("</div>")

    out.append('<h2 id="timings">Timings</h2>')
    if timings:
        longest = max(s for _, s in timings) or 1.0
        out.append('<table id="timings-table"><tr><th>stage</th><th>seconds</th><th></th></tr>')
        for stage, seconds in timings:
            out.append(f'<tr><td>{_e(stage)}</td><td class="n">{seconds:,.1f}</td><td style="width:340px"><div class="bar" style="width:{100 * seconds / longest:.1f}%"></div></td></tr>')
        out.append("</table>")
    else:
        out.append("<p>The run record has no timings.</p>")

    out.append('<h2 id="errors">Errors by camera and stage</h2>')
    stages = sorted({s for by_stage in errors_by_camera.values() for s in by_stage})
    if isinstance(fz.get("error_count"), int) and fz.get("listed"):
        out.append(f"<p>{fz['error_count']} of {fz['listed']} listed objects failed ({fz['error_count'] / fz['listed']:.1%}); each is a row of the errors table.</p>")
    if errors_by_camera:
        out.append('<table id="errors-table"><tr><th>camera</th>' + "".join(f"<th>{_e(s)}</th>" for s in stages) + "<th>total</th></tr>")
        for camera in sorted(errors_by_camera):
            row = errors_by_camera[camera]
            cells = "".join(f'<td class="n" data-stage="{_e(s)}">{row.get(s, 0)}</td>' for s in stages)
            out.append(f'<tr data-camera="{_e(camera)}"><td>{_e(camera)}</td>{cells}<td class="n">{sum(row.values())}</td></tr>')
        out.append("</table>")
        out.append(f"<p>First {len(error_examples)} of them:</p>")
        out.append('<table id="error-rows"><tr><th>camera</th><th>stage</th><th>type</th><th>object</th><th>message</th></tr>')
        for r in error_examples:
            message = str(r.get("message") or "")
            message = message if len(message) <= 300 else message[:300] + "…"
            out.append(f'<tr><td>{_e(r["camera_id"])}</td><td>{_e(r["stage"])}</td><td>{_e(r["error_type"])}</td><td class="mono msg">{_e(r["uri"])}</td><td class="msg">{_e(message)}</td></tr>')
        out.append("</table>")
    else:
        out.append('<p id="no-errors">No errors in this run.</p>')

    out.append('<h2 id="labels">Label distribution per camera</h2>')
    labels = sorted({lb for by_label in labels_by_camera.values() for lb in by_label})
    color = {lb: _PALETTE[k % len(_PALETTE)] for k, lb in enumerate(labels)}
    if labels_by_camera:
        out.append('<p class="key">' + "".join(f'<span style="background:{color[lb]}"></span>{_e(lb)}' for lb in labels) + "</p>")
        out.append('<table id="labels-table"><tr><th>camera</th>' + "".join(f"<th>{_e(lb)}</th>" for lb in labels) + "<th>videos</th><th></th></tr>")
        for camera in sorted(labels_by_camera):
            row = labels_by_camera[camera]
            total = sum(row.values())
            cells = "".join(f'<td class="n" data-label="{_e(lb)}">{row.get(lb, 0)}</td>' for lb in labels)
            stack = "".join(f'<div style="width:{100 * row[lb] / total:.2f}%;background:{color[lb]}" title="{_e(lb)}: {row[lb]}"></div>' for lb in labels if row.get(lb))
            out.append(f'<tr data-camera="{_e(camera)}"><td>{_e(camera)}</td>{cells}<td class="n total">{total}</td><td><div class="stack">{stack}</div></td></tr>')
        out.append("</table>")
    else:
        why = " It predicted nothing: no partition changed." if not pr and fz else ""
        out.append(f"<p>No videos of this run in the predictions.{why}</p>")

    out.append(f'<h2 id="flicker">The {f"{len(flicker)} " if flicker else ""}videos with the most flicker</h2>')
    if flicker:
        out.append(
            "<p>Ranked by how often the frame-by-frame label switched (raw); the rolling average should remove most of it (smoothed). "
            "Thin lines: raw probabilities; thick: smoothed; the strips below: the label of each frame.</p>"
        )
        out.append(
            '<table id="flicker-table"><tr><th>#</th><th>camera</th><th>video</th><th>start (UTC)</th><th>frames</th><th>raw switches</th><th>smoothed switches</th><th>label</th><th>prob</th></tr>'
        )
        for n, v in enumerate(flicker, 1):
            out.append(
                f'<tr><td class="n">{n}</td><td>{_e(v["camera_id"])}</td><td class="mono">{_e(v["video_id"])}</td><td>{_e(_ts(v["start_ts"]))}</td>'
                f'<td class="n">{v["n_frames"]}</td><td class="n raw">{v["raw_label_switches"]}</td><td class="n">{v["smoothed_label_switches"]}</td>'
                f'<td>{_e(v["label"])}</td><td class="n">{v["prob"]:.2f}</td></tr>'
            )
        out.append("</table>")
        for n, v in enumerate(flicker, 1):
            png = images.get((v["camera_id"], v["video_id"]))
            if png is None:
                continue
            src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
            caption = f"{n}. {v['camera_id']} / {v['video_id']}: {v['raw_label_switches']} raw label switches, {v['smoothed_label_switches']} smoothed"
            out.append(f'<figure><img src="{src}" alt="timeline of {_e(v["video_id"])}"><figcaption>{_e(caption)}</figcaption></figure>')
    else:
        out.append("<p>No videos to show.</p>")

    out.append('<h2 id="outputs">Outputs</h2><ul id="links">')
    for what, location in links:
        href = _href(location)
        target = f'<a href="{_e(href)}"><code>{_e(location)}</code></a>' if href else f"<code>{_e(location)}</code>"
        out.append(f"<li>{_e(what)}: {target}</li>")
    out.append("</ul>")

    versions = record.get("versions") or {}
    if versions:
        out.append('<h2 id="versions">Versions</h2><table id="versions-table"><tr><th>package</th><th>version</th></tr>')
        out.extend(f"<tr><td>{_e(k)}</td><td>{_e(v or '—')}</td></tr>" for k, v in versions.items())
        if record.get("spark_version"):
            out.append(f"<tr><td>Spark (session)</td><td>{_e(record['spark_version'])}</td></tr>")
        out.append("</table>")
    made = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out.append(f"<footer>Made by vidspark {_e(__version__)} `vidspark report` at {_e(made)}.</footer></main></body></html>")
    return "\n".join(out) + "\n"


def _ts(value: Any) -> str:
    if isinstance(value, datetime):  # naive: the driver's local time, as Spark collects timestamps
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)
