"""The ``vidspark`` command line; ``jobs/*.py`` call :func:`main` with the same arguments.

Exit codes: 0 success, 1 unexpected failure (a bug: the traceback is logged), 2 bad arguments, conf,
layout or model, 3 storage unreachable, 4 error fraction over ``job.max_error_fraction``, 5 the
environment lacks something (Java 17+, the model weights). A known failure prints one line,
``vidspark: error: ...``, on stderr.
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--since", help="only objects whose {ts} (else {date}, else last-modified) is at or after this UTC date/time, e.g. 2026-11-20 or 2026-11-20T06:00")
    p.add_argument("--until", help="only objects before this UTC date/time (exclusive)")
    p.add_argument("--cameras", help="only these cameras, comma-separated")
    p.add_argument("--inventory", metavar="MANIFEST", help="list the input from this S3 Inventory report (s3://.../manifest.json) instead of listing the bucket")


def parse_when(flag: str, text: str | None) -> datetime | None:
    """``--since``/``--until`` value: ISO date or date-time, UTC unless it has an offset.

    Raises
    ------
    ConfigError
        Naming the flag and the accepted forms.
    """
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"{flag} {text!r}: expected an ISO date or date-time such as 2026-11-20 or 2026-11-20T06:00:00Z") from exc
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _selection(args: argparse.Namespace) -> Any:
    from vidspark.inventory import Selection

    since, until = parse_when("--since", getattr(args, "since", None)), parse_when("--until", getattr(args, "until", None))
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
    p.add_argument("--predictions", required=True, help="the folder `vidspark predict --output` wrote (frames/, videos/, predict.json)")
    p.add_argument("--video", required=True, help="video_id as in predictions/videos")
    p.add_argument("--camera", help="camera_id, when the video id exists in several cameras")
    p.add_argument("--out", required=True, help="PNG file to write (local path)")
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
    """The library call for a verb (it returns a summary: a dict, or a RunSummary or DemoSummary), and where its run record goes (None: no record)."""
    from vidspark import featurize, outputs, pipeline, predict, train

    v = args.verb
    dry = bool(getattr(args, "dry_run", False))
    if v == "featurize":
        kw = _incremental_kwargs(args, conf, run_id, dry_run=dry)
        return (lambda s: featurize.featurize(s, input_uri=args.input, output=args.output, errors_output=args.errors, **kw)), None if dry else outputs.sibling(args.output, "runs")
    if v == "train":
        return (lambda s: train.train(s, features=args.features, model_dir=args.model, conf=conf)), outputs.sibling(args.model, "runs")
    if v == "predict":
        return (lambda s: predict.predict(s, features=args.features, model_dir=args.model, output=args.output, conf=conf, run_id=run_id, dry_run=dry)), None if dry else outputs.join(
            args.output, "runs"
        )
    if v == "run":
        kw = _incremental_kwargs(args, conf, run_id, dry_run=dry)
        return (lambda s: pipeline.run(s, input_uri=args.input, model_dir=args.model, output=args.output, **kw)), None if dry else outputs.join(args.output, "runs")
    if v == "timeline":
        from vidspark import timeline

        return (lambda s: timeline.timeline(s, predictions=args.predictions, video_id=args.video, camera_id=args.camera, out=args.out)), None
    if v == "demo":
        return (lambda s: pipeline.demo(s, workdir=args.workdir, conf=conf, run_id=run_id)), outputs.join(args.workdir, "output", "runs")
    raise ConfigError(f"unknown verb {v!r}")  # pragma: no cover - argparse restricts verbs


def _incremental_kwargs(args: argparse.Namespace, conf: Conf, run_id: str, *, dry_run: bool) -> dict[str, Any]:
    """The arguments featurize and run (and check's plan) take from the incremental flags."""
    return {"conf": conf, "run_id": run_id, "full": args.full, "prune": args.prune, "selection": _selection(args), "inventory": args.inventory, "dry_run": dry_run}


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


def versions() -> dict[str, str | None]:
    """Versions of what made this run's outputs, from package metadata (nothing imported)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"vidspark": __version__, "python": sys.version.split()[0]}
    for name in ("pyspark", "tensorflow", "keras", "lightgbm", "numpy", "pyarrow", "av", "pillow", "boto3"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


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
        if args.verb == "check":
            return check(args, conf, run_id, spark=spark)
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
    if status == "ok" or code == 4:
        print(render_summary(summary) if args.verb == "demo" else json.dumps(record()["summary"], indent=2, default=str))
    if own_session and session is not None:
        session.stop()
    return code


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
