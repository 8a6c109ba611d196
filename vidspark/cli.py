"""The ``vidspark`` command line; ``jobs/*.py`` call :func:`main` with the same arguments.

Exit codes: 0 success, 1 unexpected failure (a bug: the traceback is logged), 2 bad arguments, conf,
layout or model, 3 storage unreachable, 4 error fraction over ``job.max_error_fraction``, 5 the
environment lacks something (Java 17+, the model weights). A known failure prints one line,
``vidspark: error: ...``, on stderr.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import logging
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from vidspark import __version__
from vidspark.app import build_session, check_java, configure_logging, new_run_id, under_spark_submit
from vidspark.config import Conf, load_conf, log_effective, redacted
from vidspark.errors import EXIT_OK, ConfigError, EnvironmentProblem, VidsparkError, WeightsUnavailable, known_failure

if TYPE_CHECKING:
    from vidspark.pipeline import DemoSummary

logger = logging.getLogger("vidspark")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--conf", help="YAML conf file (see conf/); defaults built in")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a conf key, e.g. featurizer.batch_size=64 (repeatable)")
    p.add_argument("--master", help="Spark master (default local[*]; under spark-submit, spark-submit's)")
    p.add_argument("--run-id", help="id of this run in runs/<run_id>.json (default: time + random)")
    p.add_argument("--log-level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="DEBUG, INFO (default), WARNING or ERROR, any case")


def _dry_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="run the checks and say what the job would do (counts), without writing anything")


def _incremental(p: argparse.ArgumentParser) -> None:
    p.add_argument("--full", action="store_true", help="featurize every selected object again, even those unchanged since the last run")
    p.add_argument("--prune", action="store_true", help="remove rows of objects no longer listed under the prefixes this run lists (default: keep them)")
    p.add_argument(
        "--since",
        help="only objects whose {ts} (else {date}, else last-modified) is at or after this time: an ISO date or date-time, in input.timezone (default UTC) "
        "unless it has an offset (2026-11-20T22:00+01:00, 2026-11-20T21:00Z) or a zone (2026-11-20T22:00 Europe/Berlin, 2026-11-20T22:00[Europe/Berlin]); a date alone is its midnight",
    )
    p.add_argument("--until", help="only objects before this time (exclusive); the same forms as --since")
    p.add_argument("--cameras", help="only these cameras, comma-separated")
    p.add_argument("--inventory", metavar="MANIFEST", help="list the input from this S3 Inventory report (s3://.../manifest.json) instead of listing the bucket")


WHEN_FORMS = (
    "an ISO date or date-time: naive (in input.timezone) such as 2026-11-20 or 2026-11-20T22:00, with an offset such as 2026-11-20T22:00+01:00 or 2026-11-20T21:00Z, "
    "or with an IANA zone such as 2026-11-20T22:00 Europe/Berlin, 2026-11-20T22:00[Europe/Berlin] or 2026-11-20 Europe/Berlin"
)
_BRACKETED_ZONE = re.compile(r"(?P<when>[^\[\]]*?)\s*\[(?P<zone>[^\[\]]*)\]")


def _iso(text: str) -> datetime:
    """``datetime.fromisoformat``, with a trailing ``Z`` for UTC (Python 3.10 does not take it)."""
    return datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text)


def _is_iso(text: str) -> bool:
    try:
        _iso(text)
    except ValueError:
        return False
    return True


def parse_when(flag: str, text: str | None, *, default_zone: str = "UTC") -> datetime | None:
    """A ``--since``/``--until`` value as a UTC instant.

    Accepted: an ISO date or date-time with an offset (``2026-11-20T22:00+01:00``, ``...Z``), with
    an IANA zone after a space or in brackets (``2026-11-20T22:00 Europe/Berlin``,
    ``2026-11-20T22:00[Europe/Berlin]``), or naive, in ``default_zone``. A date alone is its local
    midnight. A local time that occurs twice (clocks going back) is its first occurrence, one that
    does not exist (clocks going forward) is read with the offset before the change; an offset
    together with a zone picks the occurrence and must be the zone's offset at that time.

    Parameters
    ----------
    flag
        The option, for messages (``--since``).
    text
        The value; None gives None.
    default_zone
        IANA zone of a value without offset or zone (``input.timezone``).

    Raises
    ------
    ConfigError
        Naming the option, the value and the accepted forms.
    """
    if text is None:
        return None
    from vidspark.layout import get_zone, local_datetime

    raw = text.strip()
    when, zone_name = raw, None
    bracketed = _BRACKETED_ZONE.fullmatch(raw)
    if bracketed:
        when, zone_name = bracketed["when"], bracketed["zone"].strip()
    if not bracketed and " " in when and not _is_iso(when):  # "2026-11-20T22:00 Europe/Berlin" (but "2026-11-20 22:00" is ISO)
        when, _, zone_name = when.rpartition(" ")
    try:
        value = _iso(when.strip())
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: not a date or time vidspark reads; expected {WHEN_FORMS}") from None
    name = zone_name if zone_name is not None else default_zone
    try:
        tz = get_zone(name)
    except ConfigError:
        raise ConfigError(f"{flag} {text!r}: {name!r} is not a known IANA time zone; expected {WHEN_FORMS}") from None
    if value.tzinfo is None:
        return local_datetime(value, tz)
    if zone_name is not None and value.astimezone(tz).utcoffset() != value.utcoffset():
        raise ConfigError(f"{flag} {text!r}: offset {value.strftime('%z')} is not {zone_name}'s at that time ({value.astimezone(tz).strftime('%z')}); give the offset or the zone alone")
    return value.astimezone(timezone.utc)


def _selection(args: argparse.Namespace, conf: Conf) -> Any:
    from vidspark.inventory import Selection

    zone = conf.input.timezone
    since, until = parse_when("--since", getattr(args, "since", None), default_zone=zone), parse_when("--until", getattr(args, "until", None), default_zone=zone)
    if since and until and since >= until:
        raise ConfigError(f"--since {args.since} is not before --until {args.until}")
    cameras = frozenset(c.strip() for c in args.cameras.split(",") if c.strip()) if getattr(args, "cameras", None) else None
    if getattr(args, "cameras", None) is not None and not cameras:
        raise ConfigError("--cameras is empty; expected camera ids separated by commas")
    return Selection(since=since, until=until, cameras=cameras) if (since or until or cameras) else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidspark", description="Classify images and video frames from camera archives on Spark.")
    parser.add_argument("--version", action="version", version=f"vidspark {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("featurize", help="image objects -> ResNet50 features/ (+ errors/)")
    p.add_argument("--input", required=True, help="s3://bucket/prefix, file:///path or a local folder")
    p.add_argument("--output", required=True, help="features table (Parquet, partitioned camera_id/date)")
    p.add_argument("--layout", help="key layout template (default conf input.layout, '{label}/**')")
    p.add_argument("--errors", help="errors table (default: 'errors' beside --output)")
    _incremental(p)
    _dry_run(p)
    _common(p)

    p = sub.add_parser("train", help="labeled features -> LightGBM model dir with grouped CV report")
    p.add_argument("--features", required=True)
    p.add_argument("--model", required=True, help="model directory to write (driver-local path)")
    p.add_argument("--folds", type=int, help="CV folds (default conf train.folds, 5)")
    _common(p)

    p = sub.add_parser("predict", help="features + model -> predictions/frames and predictions/videos")
    p.add_argument("--features", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--output", required=True, help="predictions folder (frames/ and videos/ inside)")
    p.add_argument("--window", type=int, help="rolling average over the last K frames (default 128; 1 = none)")
    _dry_run(p)
    _common(p)

    p = sub.add_parser("run", help="featurize + predict in one job (the nightly job)")
    p.add_argument("--input", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--output", required=True, help="output root: features/, errors/, predictions/, runs/")
    p.add_argument("--layout")
    p.add_argument("--window", type=int)
    p.add_argument("--report", metavar="HTML", help="at the end, write this run's report page (as `vidspark report`) to this local HTML file")
    _incremental(p)
    _dry_run(p)
    _common(p)

    p = sub.add_parser("check", help="preflight: conf, storage, weights, layout on the first keys, model, and what a run would do")
    p.add_argument("--input", help="input to check (as for featurize/run)")
    p.add_argument("--output", help="features table (as featurize's --output), or with --model the output root (as run's)")
    p.add_argument("--model", help="model directory to load and check against the conf's featurizer")
    p.add_argument("--layout")
    p.add_argument("--keys", type=int, default=20, help="try the layout on this many keys (default 20)")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    _incremental(p)
    _common(p)

    p = sub.add_parser("timeline", help="one video's raw and smoothed class probabilities over time, as a PNG")
    p.add_argument("--predictions", required=True, help="the folder `vidspark predict --output` wrote (frames/, videos/)")
    p.add_argument("--video", required=True, help="video_id as in predictions/videos")
    p.add_argument("--camera", help="camera_id, when the video id exists in several cameras")
    p.add_argument("--out", required=True, help="PNG file to write (local path)")
    _common(p)

    p = sub.add_parser("report", help="one self-contained HTML page about a run: counts, timings, errors, labels, flicker, outputs")
    p.add_argument("--output", required=True, help="the output root a run wrote (runs/, errors/, predictions/)")
    p.add_argument("--html", required=True, help="HTML file to write (local path)")
    p.add_argument("--run", dest="report_run", metavar="RUN_ID", help="the run to report (default: the latest `vidspark run` record in OUTPUT/runs)")
    p.add_argument("--top", type=int, default=5, help="show this many videos with the most label switches, with their timelines (default 5)")
    _common(p)

    p = sub.add_parser("ddl", help="CREATE statements for the output tables (Spark SQL, Trino, Athena with partition projection, DuckDB)")
    p.add_argument("--output", required=True, help="the output root a run wrote (features/, errors/, predictions/)")
    p.add_argument("--engine", default="spark", choices=["spark", "trino", "athena", "duckdb"], help="SQL dialect (default spark)")
    p.add_argument("--database", default="vidspark", help="database (schema) for the tables (default vidspark)")
    p.add_argument("--catalog", default="hive", help="Trino: the Hive catalog (default hive)")
    p.add_argument("--athena-cameras", choices=["found", "injected"], default="found", help="Athena: project the camera ids found now (default) or inject them from each query")
    _common(p)

    p = sub.add_parser("demo", help="synthetic archive -> featurize -> train -> predict, with a summary")
    p.add_argument("--workdir", default="demo-output", help="folder for the archive and outputs (default ./demo-output)")
    _common(p)
    return parser


def _load(args: argparse.Namespace) -> Conf:
    overrides = list(args.set)
    if getattr(args, "layout", None):
        overrides.append(f"input.layout={args.layout}")
    if getattr(args, "folds", None) is not None:
        overrides.append(f"train.folds={args.folds}")
    if getattr(args, "window", None) is not None:
        overrides.append(f"predict.window={args.window}")
    if args.verb == "demo" and not any(o.startswith("featurizer.weights=") for o in overrides):
        overrides.append("featurizer.weights=random")  # the demo must run without a model hub
    return load_conf(args.conf, overrides)


def _job_fn(args: argparse.Namespace, conf: Conf, run_id: str) -> tuple[Callable[[Any], Any], str | None]:
    """The library call for a verb (it returns a summary: a dict, or a RunSummary or DemoSummary), and where its run record goes (None: no record).

    Only the verb's own modules are imported (a ``predict`` never loads the featurizer's, a ``run`` never training's).
    """
    from vidspark.fs import join, sibling

    v = args.verb
    dry = bool(getattr(args, "dry_run", False))
    if v == "featurize":
        from vidspark.featurize import featurize

        kw = _incremental_kwargs(args, conf, run_id, dry_run=dry)
        return (lambda s: featurize(s, input_uri=args.input, output=args.output, errors_output=args.errors, **kw)), None if dry else sibling(args.output, "runs")
    if v == "train":
        from vidspark.train import train

        return (lambda s: train(s, features=args.features, model_dir=args.model, conf=conf, run_id=run_id)), sibling(args.model, "runs")
    if v == "predict":
        from vidspark.predict import predict

        return (lambda s: predict(s, features=args.features, model_dir=args.model, output=args.output, conf=conf, run_id=run_id, dry_run=dry)), None if dry else join(args.output, "runs")
    if v == "run":
        from vidspark.pipeline import run

        kw = _incremental_kwargs(args, conf, run_id, dry_run=dry)
        return (lambda s: run(s, input_uri=args.input, model_dir=args.model, output=args.output, **kw)), None if dry else join(args.output, "runs")
    if v == "timeline":
        from vidspark import timeline

        return (lambda s: timeline.timeline(s, predictions=args.predictions, video_id=args.video, camera_id=args.camera, out=args.out)), None
    if v == "report":
        from vidspark import report

        return (lambda s: report.report(s, output=args.output, html=args.html, run_id=args.report_run, top=args.top)), None
    if v == "demo":
        from vidspark.pipeline import demo

        return (lambda s: demo(s, workdir=args.workdir, conf=conf, run_id=run_id)), join(args.workdir, "output", "runs")
    raise ConfigError(f"unknown verb {v!r}")  # pragma: no cover - argparse restricts verbs


def _incremental_kwargs(args: argparse.Namespace, conf: Conf, run_id: str, *, dry_run: bool) -> dict[str, Any]:
    """The arguments featurize and run (and check's plan) take from the incremental flags."""
    return {"conf": conf, "run_id": run_id, "full": args.full, "prune": args.prune, "selection": _selection(args, conf), "inventory": args.inventory, "dry_run": dry_run}


def preflight(args: argparse.Namespace, conf: Conf) -> None:
    """The checks a job makes before Spark starts: input readable, weights resolvable, a local model loadable.

    Raises
    ------
    VidsparkError
        The first failure, with its exit code.
    """
    from vidspark import preflight as pf

    v = args.verb
    if v in ("featurize", "run"):
        logger.info("input: %s", pf.check_input(args.input, conf))
        layout = pf.sample_layout(args.input, conf, keys=LAYOUT_SAMPLE)
        if not layout.ok:
            raise ConfigError(f"{layout.detail}; for example {layout.lines[0]}" if layout.lines else layout.detail)
        logger.info("%s", layout.detail)
        try:
            logger.info("weights: %s", pf.check_weights(conf))
        except WeightsUnavailable as exc:
            if under_spark_submit() or not (args.master or "local").startswith("local"):
                logger.warning("%s (the executors may have them: going on)", exc)  # what the driver sees is not what the executors see
            else:
                raise
    if v in ("predict", "run"):
        from vidspark.fs import is_hadoop_uri
        from vidspark.model import load_model_dir

        if not is_hadoop_uri(args.model) or args.model.startswith("s3://"):  # other URIs are read once Spark is up
            load_model_dir(args.model, storage=conf.storage)


LAYOUT_SAMPLE = 20  # keys a job tries its layout on before Spark starts (none fitting: exit 2)


def fail_line(exc: BaseException | str) -> str:
    """The one line a known failure prints on stderr."""
    return f"vidspark: error: {exc}"


@functools.lru_cache(maxsize=1)
def _package_versions() -> tuple[tuple[str, str | None], ...]:
    from importlib.metadata import PackageNotFoundError, version

    out: list[tuple[str, str | None]] = []
    for name in ("pyspark", "tensorflow", "keras", "lightgbm", "numpy", "pyarrow", "av", "pillow", "boto3"):
        try:
            out.append((name, version(name)))
        except PackageNotFoundError:
            out.append((name, None))
    return tuple(out)


def versions() -> dict[str, str | None]:
    """Versions of what made this run's outputs, from package metadata (nothing imported; read once per process)."""
    return {"vidspark": __version__, "python": sys.version.split()[0], **dict(_package_versions())}


def spark_settings(session: Any) -> dict[str, str]:
    """The session's effective ``spark.*`` settings, secrets redacted (what the job really ran with)."""
    if session is None:
        return {}
    from vidspark.config import REDACTED, is_secret_key

    skip = ("spark.driver.extraClassPath", "spark.executor.extraClassPath", "spark.app.initial.jar.urls", "spark.repl.local.jars")
    items = session.sparkContext.getConf().getAll()
    return {k: (REDACTED if is_secret_key(k) else _mask_options(v)) for k, v in sorted(items) if k.startswith("spark.") and k not in skip}


def _mask_options(value: str) -> str:
    """``-Dfs.s3a.secret.key=abc`` inside a value (Java options) -> ``-Dfs.s3a.secret.key=***``."""
    from vidspark.config import REDACTED, is_secret_key

    return re.sub(r"(-D([^=\s]+)=)(\S+)", lambda m: m.group(1) + REDACTED if is_secret_key(m.group(2)) else m.group(0), value)


def main(argv: Sequence[str] | None = None, *, spark: Any | None = None) -> int:
    """Run one verb; returns the process exit code. ``spark`` reuses a session (tests)."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    run_id = args.run_id or new_run_id(args.verb)
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    try:
        conf = _load(args)
        configure_logging(args.log_level, framework_logs=conf.job.framework_logs)
        log_effective(conf)
        if args.verb in ("predict", "run", "check") and getattr(args, "model", None):
            from vidspark.tracking import resolve_model

            resolved = resolve_model(args.model)  # models:/NAME@ALIAS, runs:/RUN_ID/model: a local copy; anything else unchanged
            if resolved != args.model:
                args.model_uri, args.model = args.model, resolved  # the run record keeps both
        if args.verb == "check":
            return check(args, conf, run_id, spark=spark)
        if args.verb == "ddl":
            print(ddl_script(args, conf), end="")
            return EXIT_OK
        if spark is None and importlib.util.find_spec("pyspark") is None:
            raise EnvironmentProblem("pyspark is not installed: pip install 'vidspark[spark]' for local runs, or run the job with your Spark's spark-submit (submit.sh)")
        fn, runs_dir = _job_fn(args, conf, run_id)
        if spark is None and not under_spark_submit():
            check_java()
        preflight(args, conf)
    except VidsparkError as exc:
        print(fail_line(exc), file=sys.stderr)
        return exc.exit_code
    own_session = spark is None
    session = spark
    status, code, message = "running", EXIT_OK, None
    summary: Any = {}

    def record() -> dict[str, Any]:
        return {
            "run_id": run_id,
            "job": args.verb,
            "vidspark_version": __version__,
            "versions": versions(),
            "spark_version": session.version if session is not None else None,
            "spark_settings": spark_settings(session),
            "args": {k: v for k, v in vars(args).items() if k not in ("set",)},
            "overrides": [o.split("=", 1)[0] + "=…" for o in args.set],
            "conf": redacted(conf),
            "started": started.isoformat(timespec="seconds"),
            "ended": None if status == "running" else datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "duration_s": None if status == "running" else round(time.perf_counter() - t0, 3),
            "status": status,
            "exit_code": None if status == "running" else code,
            "message": message,
            "summary": summary.record() if hasattr(summary, "record") else summary,
        }

    def write_record() -> None:
        if session is None or runs_dir is None:
            return
        try:
            from vidspark.outputs import join, write_json

            path = join(runs_dir, f"{run_id}.json")
            if path.startswith("s3://"):  # beside an s3:// model directory: vidspark's own S3 client, as the model
                from vidspark.storage import cached_s3_client, split_s3_uri

                bucket, key = split_s3_uri(path)
                cached_s3_client(conf.storage).put_object(Bucket=bucket, Key=key, Body=json.dumps(record(), indent=2, sort_keys=True, default=str).encode("utf-8"))
            else:
                write_json(session, path, record())
        except Exception as exc:  # a run record that cannot be written must not hide the job's own result
            logger.warning("could not write the run record to %s: %s", runs_dir, exc)

    try:
        session = session or build_session(f"vidspark-{args.verb}", master=args.master, spark_conf=conf.spark)
        write_record()  # status "running": a driver killed from here on still leaves a trace
        logger.info("run %s: %s started%s", run_id, args.verb, " (dry run: nothing is written)" if getattr(args, "dry_run", False) else "")
        summary = fn(session)
        status = "ok"
        if args.verb in ("featurize", "run", "demo") and not getattr(args, "dry_run", False):
            from vidspark.pipeline import DemoSummary, ErrorTally, RunSummary, check_error_fraction

            tally = summary.run.tally if isinstance(summary, DemoSummary) else summary.tally if isinstance(summary, RunSummary) else ErrorTally.of(summary)
            check_error_fraction(tally, conf)
    except Exception as exc:  # the run record must say how the job ended, whatever happened
        known = known_failure(exc)
        if known is not None:
            status, code, message = "failed", known.exit_code, str(known)
            logger.debug("%s failed:\n%s", args.verb, traceback.format_exc())
            print(fail_line(known), file=sys.stderr)
        else:
            status, code, message = "failed", 1, f"{type(exc).__name__}: {exc}"
            logger.error("%s failed (a bug or an unforeseen failure; exit 1):\n%s", args.verb, traceback.format_exc())
    write_record()
    if getattr(args, "report", None) and session is not None and not getattr(args, "dry_run", False):
        write_report(session, args, run_id)
    if status == "ok" or code == 4:
        print(render_summary(summary) if args.verb == "demo" else json.dumps(record()["summary"], indent=2, default=str))
    if own_session and session is not None:
        session.stop()
    return code


def write_report(session: Any, args: argparse.Namespace, run_id: str) -> None:
    """``run --report``: this run's report page, from the record just written; a page that cannot be made is a warning, not the run's exit code."""
    try:
        from vidspark.report import report

        logger.info("report of run %s: %s", run_id, report(session, output=args.output, html=args.report, run_id=run_id)["html"])
    except Exception as exc:  # the run's outputs and exit code stand; only the page is missing
        logger.warning("could not write the report %s: %s", args.report, exc)


def check(args: argparse.Namespace, conf: Conf, run_id: str, *, spark: Any | None = None) -> int:
    """``vidspark check``: every preflight check, then (all passing, Spark needed) the model and the counts a run would have."""
    from vidspark import preflight as pf
    from vidspark.storage import parse_uri

    findings = [pf.Finding("conf", True, f"{args.conf or 'built-in defaults'}{f' + {len(args.set)} --set' if args.set else ''}: valid")]
    client = None
    if spark is None and not under_spark_submit():
        findings.append(pf.run_check("java", _java_line))
    if args.input:
        location = parse_uri(args.input)
        client = pf.input_client(location, conf)
        findings.append(pf.run_check("input", pf.check_input, args.input, conf, client))
    findings.append(pf.run_check("weights", pf.check_weights, conf, client))
    if args.input and findings[-2].ok:
        findings.append(pf.run_check("layout", pf.sample_layout, args.input, conf, keys=args.keys, client=client))
    session = spark
    if all(f.ok for f in findings) and (args.model or (args.input and args.output)):
        try:
            session = session or build_session("vidspark-check", master=args.master, spark_conf=conf.spark)
            if args.model:
                findings.append(pf.run_check("model", _model_line, session, args.model, conf))
            if args.input and args.output and all(f.ok for f in findings):
                findings.append(_plan(session, args, conf, run_id))
        except Exception as exc:
            known = known_failure(exc)
            first = next((ln for ln in str(exc).splitlines() if ln.strip()), "")
            findings.append(pf.Finding("spark", False, str(known) if known else f"{type(exc).__name__}: {first[:300]}", known.exit_code if known else 1))
        finally:
            if spark is None and session is not None:
                session.stop()
    failed = [f for f in findings if not f.ok]
    if args.json:
        print(json.dumps({"ok": not failed, "findings": [f.record() for f in findings]}, indent=2, default=str))
    else:
        print(f"vidspark check: {'ok' if not failed else f'{len(failed)} problem(s)'}\n" + pf.render(findings))
    if failed:
        print(fail_line(failed[0].detail), file=sys.stderr)
        return failed[0].exit_code
    return EXIT_OK


def _java_line() -> str:
    check_java()
    return "Java 17+ found"


def _model_line(session: Any, model_dir: str, conf: Conf) -> str:
    from vidspark.backbone import featurizer_id
    from vidspark.model import check_compatible, load_model_dir

    model = load_model_dir(model_dir, spark=session, storage=conf.storage)
    check_compatible(model, featurizers=[featurizer_id(conf.featurizer, conf.storage)], feature_dim=None)
    return f"{model_dir}: classes {', '.join(model.classes)}; featurizer {model.featurizer} (matches the conf)"


def _plan(session: Any, args: argparse.Namespace, conf: Conf, run_id: str) -> Any:
    from vidspark import preflight as pf
    from vidspark.featurize import featurize
    from vidspark.outputs import join

    features = join(args.output, "features") if args.model else args.output
    s = featurize(session, input_uri=args.input, output=features, **_incremental_kwargs(args, conf, run_id, dry_run=True))
    prune_note = "" if args.prune else " with --prune"
    return pf.Finding(
        "plan",
        True,
        f"would featurize {s['would_featurize']} objects ({s['would_featurize_again']} of them again: changed), skip {s['would_skip_unchanged']} unchanged, prune {s['would_prune']}{prune_note}",
        0,
        [f"{s['listed']} objects listed, {s['selected']} selected, {s['videos']} videos, {s['layout_errors']} do not fit the layout; features {features}"],
    )


def ddl_script(args: argparse.Namespace, conf: Conf) -> str:
    """``vidspark ddl``: the statements, with Athena's cameras and first date from the output's partition folders (no Spark)."""
    from vidspark import ddl

    cameras, first = None, None
    if args.engine == "athena" and args.athena_cameras == "found":
        cameras, first = ddl.found_partitions(_names_lister(args.output, conf))
    return ddl.ddl(args.output, engine=args.engine, database=args.database, catalog=args.catalog, cameras=cameras or None, first_date=first)


def _names_lister(output: str, conf: Conf) -> Callable[[str], list[str]]:
    """Sub-folder names of a folder of a local or ``s3://``/``s3a://`` output, relative to it (other schemes: none, so Athena injects the camera)."""
    from vidspark.errors import StorageError
    from vidspark.listing import make_children
    from vidspark.storage import make_s3_client, parse_uri

    try:
        location = parse_uri(output)
    except StorageError:  # hdfs://, gs://: no client of vidspark's own lists them
        return lambda rel: []
    children = make_children(location, make_s3_client(conf.storage) if location.scheme == "s3" else None, limit=conf.input.max_list_children)
    return lambda rel: sorted((children(rel + "/") or ([], []))[0])


def render_summary(s: DemoSummary) -> str:
    """The demo's human-readable summary."""
    labeled, t, fc, pc, output = s.featurize_labeled, s.train, s.run.featurize, s.run.predict, s.output
    lines = [
        "vidspark demo summary",
        f"  labeled set:   {labeled['featurized']} frames featurized ({labeled['error_count']} errors), classes {t['classes']}",
        f"  cross-val:     {t['n_splits']}-fold grouped, accuracy {t['cv_accuracy']:.3f}, F1 {t['cv_f1']:.3f}, ROC AUC {t['cv_roc_auc']:.3f}",
        f"  cameras:       {fc['featurized']} frames featurized ({fc['videos']} video files among {fc['listed']} objects), {fc['error_count']} errors {fc['errors_by_stage']}",
        f"  videos:        {pc.get('videos', 0)} classified, label switches raw {pc.get('raw_label_switches', 0)} -> smoothed {pc.get('smoothed_label_switches', 0)} (window {pc.get('window')})",
        f"  featurizer:    {fc['featurizer']}",
        "  outputs:",
        f"    features     {output}/features",
        f"    errors       {output}/errors",
        f"    frames       {pc.get('frames_output')}",
        f"    videos       {pc.get('videos_output')}",
        f"    model        {t['model']}",
        f"    run records  {output}/runs",
        "  look at one video:",
        f"    vidspark timeline --predictions {output}/predictions --video cam3/20261120T150000 --out timeline.png",
    ]
    return "\n".join(lines)


def entrypoint() -> None:
    sys.exit(main())
