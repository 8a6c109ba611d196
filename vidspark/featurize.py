"""Featurize: listing and inventory -> diff with the store -> frames and features -> features/ and errors/, all on the executors.

This module only wires the stages: :mod:`vidspark.listing` plans and lists the input (narrowed by
the layout and the selection), :mod:`vidspark.inventory` parses it, :mod:`vidspark.feature_store`
says what is already featurized, :mod:`vidspark.frames` is the executor task, :mod:`vidspark.warmup`
builds the model while videos are probed, and the merged partitions are swapped in by
:mod:`vidspark.outputs`. The driver holds counts and partition lists, never a row per object.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from vidspark import __version__
from vidspark.backbone import featurizer_id
from vidspark.config import Conf
from vidspark.errors import ConfigError
from vidspark.feature_store import URI_SCHEMA, StoreDiff, diff_with_store, merged_features, stored_objects, write_errors
from vidspark.frames import GPU_KEY, MODEL_KEY, VERSIONS_KEY, TaskStats, with_features, with_segments
from vidspark.gpus import executor_gpus, stage_request
from vidspark.inventory import Selection, build_inventory
from vidspark.layout import Layout, TimeZones
from vidspark.listing import Listed, ListingPlan, epoch_micros, list_on_driver, listing_frame, listing_pandas, make_children, pattern_text, plan_listing, resolve
from vidspark.outputs import ROW_BYTES_FEATURES, basename, delete_path, join, partition_path, path_exists, read_text, recover_table, replace_partitions, rows_per_file, sibling, write_json
from vidspark.progress import Progress
from vidspark.s3_inventory import inventory_listing, read_manifest
from vidspark.schemas import FEATURES_SCHEMA, WORK_SCHEMA
from vidspark.storage import Location, check_readable, make_s3_client, parse_uri
from vidspark.warmup import WarmUp, task_slots

logger = logging.getLogger(__name__)

_WORK_COLUMNS = WORK_SCHEMA.fieldNames()


def pin_driver_endpoint(conf: Conf) -> Conf:
    """Pin the endpoint the driver found in its environment into the conf shipped to executors.

    ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``/``AWS_DEFAULT_REGION`` set where the driver runs are
    not in a YARN or Kubernetes executor's environment; credentials still come from each executor's
    own chain (instance or pod role).
    """
    s = conf.storage
    endpoint = s.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = s.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if endpoint == s.endpoint_url and region == s.region:
        return conf
    return conf.replace("storage", endpoint_url=endpoint, region=region)


def featurize(
    spark: SparkSession,
    *,
    input_uri: str,
    output: str,
    conf: Conf,
    run_id: str,
    errors_output: str | None = None,
    s3_client: Any | None = None,
    full: bool = False,
    prune: bool = False,
    selection: Selection | None = None,
    inventory: str | None = None,
    on_partitions: Callable[[list[tuple[str, str]]], None] | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Featurize the objects under ``input_uri`` into the feature store ``output`` and errors/.

    Incremental: an object already in ``output`` with the same ETag, featurizer id and identity is skipped
    (unless ``full``); an object featurized again has its old rows replaced; with ``prune``, rows of
    objects no longer listed (within what this run lists) are removed. Each affected
    ``(camera_id, date)`` partition is rewritten whole, crash-safely (staged, then swapped).
    The listing, the diff with the store and the counts all run on the executors.

    Parameters
    ----------
    selection
        Only objects whose ``{ts}`` (else ``{date}``, else last-modified) and camera fall in it are
        considered; the listing is narrowed to the prefixes that can hold them where the layout allows.
    inventory
        The ``manifest.json`` of an S3 Inventory report of the input's bucket, listed in place of a live listing.
    on_partitions
        Called with the affected partitions before the feature store changes (``run`` records them,
        so that a run killed after the swap still recomputes their predictions).
    dry_run
        List, parse and diff with the store, then stop: the summary says what a run would featurize,
        featurize again, skip and prune (``would_prune`` previews ``--prune`` whether or not it is given).

    Returns
    -------
    dict
        Summary: counts (listed, selected, skipped as unchanged, featurized objects and frames,
        pruned, errors by stage), error fraction, partitions with their counts, the listing, paths, timings.

    Raises
    ------
    StorageError
        If the input cannot be read (before any Spark work).
    """
    t0 = time.perf_counter()
    conf = pin_driver_endpoint(conf)
    location = parse_uri(input_uri)
    client = (s3_client or make_s3_client(conf.storage)) if location.scheme == "s3" else None
    check_readable(location, client)  # fails fast, before any Spark work
    if inventory and prune:
        raise ConfigError("--prune needs a live listing: an inventory report is up to a day old, and objects uploaded since it would lose their rows")
    stats = spark.sparkContext.accumulator({}, TaskStats())
    layout = Layout.from_conf(conf.input)
    sel = selection or Selection()
    plan = plan_listing(layout, since=sel.since, until=sel.until, cameras=sel.cameras, gap_seconds=conf.events.gap_seconds)
    listed, listing = _listing(spark, location, client, plan, conf, inventory=inventory)
    feat_id = featurizer_id(conf.featurizer, conf.storage, s3_client=s3_client)
    mark = None if dry_run else ListingMark.of(spark, output, listed.local, key=_run_key(input_uri, conf, feat_id, sel, plan, prune))
    if mark is not None and mark.unchanged and not full:
        return _unchanged_summary(spark, mark, input_uri=input_uri, output=output, errors_output=errors_output or sibling(output, "errors"), featurizer=feat_id, listing=listing, t0=t0)
    if mark is not None:
        mark.forget()  # before the store changes: the mark is only ever there for a store that a run finished with that listing
    inv = build_inventory(listed.df, layout, gap_seconds=conf.events.gap_seconds, selection=selection, local=listed.local, spark=spark)
    with contextlib.ExitStack() as stack:
        stack.callback(inv.unpersist)
        counts = inv.counts()
        if not dry_run:  # a dry run changes nothing
            recover_table(spark, output)  # finish a swap that a killed run left half done, before reading the store
        timings = {"list_s": time.perf_counter() - t0}
        c = counts
        logger.info("listed %d objects under %s (%d selected, %d videos, %d do not fit the layout); featurizer %s", c["listed"], input_uri, c["selected"], c["videos"], c["layout_errors"], feat_id)

        t_inc = time.perf_counter()
        from_date = plan.time_window[0] - timedelta(days=1) if plan.time_window and not inventory else None
        stored = stored_objects(spark, output, feat_id, cameras=sel.cameras, from_date=from_date)
        scope = _prune_scope(location, plan) if prune or (dry_run and not inventory) else None
        diff = diff_with_store(inv.rows, inv.parsed.select("uri"), stored, full=full, prune_scope=scope)
        stack.callback(diff.unpersist)
        timings["incremental_s"] = time.perf_counter() - t_inc
        d = diff.counts
        if dry_run:
            logger.info(
                "dry run: would featurize %d objects (%d of them again, changed), skip %d unchanged, prune %d%s", d["todo"], d["changed"], d["skipped"], d["pruned"], "" if prune else " with --prune"
            )
            return {
                "dry_run": True,
                "input": input_uri,
                "features": output,
                "featurizer": feat_id,
                "listing": listing,
                "listed": c["listed"],
                "selected": c["selected"] + c["layout_errors"],
                "videos": c["videos"],
                "layout_errors": c["layout_errors"],
                "would_featurize": d["todo"],
                "would_featurize_again": d["changed"],
                "would_skip_unchanged": d["skipped"],
                "would_prune": d["pruned"],
                "prune": prune,
                "timings": {k: round(v, 3) for k, v in timings.items()},
            }
        logger.info("%d objects unchanged since the last run (skipped), %d to featurize (%d changed), %d pruned", d["skipped"], d["todo"], d["changed"], d["pruned"])
        if diff.counts["todo"] and conf.featurizer.warm_up:  # the model builds in every worker while the videos are probed
            request = stage_request(spark, conf.featurizer.task_gpus, conf.featurizer.task_cpus)
            stack.enter_context(WarmUp(spark, conf.featurizer, conf.storage, run_id, stats, executor_gpus=executor_gpus(spark.conf), profile=request.profile))

        work, plan_errors, n_work = _split_long_videos(spark, diff.todo, d["todo"], conf, timings, stack)
        errors_output = errors_output or sibling(output, "errors")
        layout_errors = inv.errors.withColumn("camera_id", F.lit(None).cast("string")).withColumn("date", F.lit(None).cast("date"))  # the key did not say
        driver_errors = layout_errors.unionByName(plan_errors) if plan_errors is not None else layout_errors
        n_driver_errors = counts["layout_errors"] + (plan_errors.count() if plan_errors is not None else 0)
        outcome = _featurize_and_write(spark, work, n_work, conf, feat_id=feat_id, output=output, errors_output=errors_output, run_id=run_id, driver_errors=driver_errors,
                                       n_driver_errors=n_driver_errors, diff=diff, on_partitions=on_partitions, stats=stats, timings=timings, objects=inv.parsed)  # fmt: skip
    n_errors = sum(outcome.errors_by_stage.values())
    if mark is not None and not n_errors:
        mark.remember(run_id, {k: counts[k] for k in ("listed", "selected", "videos", "layout_errors")})
    summary = {
        "input": input_uri,
        "features": output,
        "errors": errors_output,
        "featurizer": feat_id,
        "listing": listing,
        "listed": counts["listed"],
        "selected": counts["selected"] + counts["layout_errors"],
        "skipped_unchanged": diff.counts["skipped"],
        "videos": counts["videos"],
        "work_units": n_work,
        "featurized_objects": outcome.ok_objects,
        "featurized": outcome.frames,
        "replaced_objects": outcome.replaced,
        "pruned_objects": diff.counts["pruned"],
        "errors_by_stage": dict(sorted(outcome.errors_by_stage.items())),
        "error_count": n_errors,
        "error_fraction": (n_errors / counts["listed"]) if counts["listed"] else 0.0,
        "partitions": [{"camera_id": c, "date": d, **outcome.partition_counts.get((c, d), {"frames": 0, "objects": 0})} for c, d in outcome.partitions],
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "tasks": {k: round(v, 3) for k, v in sorted(dict(stats.value).items()) if not k.startswith((VERSIONS_KEY, MODEL_KEY, GPU_KEY))},
        "executor_versions": {k[len(VERSIONS_KEY) :]: int(v) for k, v in sorted(dict(stats.value).items()) if k.startswith(VERSIONS_KEY)},
        "executor_models": {k[len(MODEL_KEY) :]: int(v) for k, v in sorted(dict(stats.value).items()) if k.startswith(MODEL_KEY)},  # batch size, precision, threads, device, decode mode: tasks
        # GPU placements (address Spark gave, narrow/shared, CUDA_VISIBLE_DEVICES, TensorFlow device, worker pid): tasks
        "executor_gpus": [{**json.loads(k[len(GPU_KEY) :]), "tasks": int(v)} for k, v in sorted(dict(stats.value).items()) if k.startswith(GPU_KEY)],
        "task_slots": task_slots(spark),
    }
    logger.info("featurize done: %d frames from %d objects featurized, %d skipped as unchanged", outcome.frames, outcome.ok_objects, diff.counts["skipped"])
    logger.info("featurize errors: %d objects %s", n_errors, summary["errors_by_stage"])
    return summary


def _listing(spark: SparkSession, location: Location, client: Any, plan: ListingPlan, conf: Conf, *, inventory: str | None) -> tuple[Listed, dict[str, Any]]:
    """The listing (live, narrowed by the plan, on the driver while it is small; or an S3 Inventory report filtered by it) and what it did."""
    t0 = time.perf_counter()
    if inventory:
        if location.scheme != "s3":
            raise ConfigError(f"--inventory lists an S3 bucket; the input {location.uri} is not one")
        manifest = read_manifest(inventory, client)  # the input's client: a report sits in the input's store
        missing = [f for f in ("size", "last_modified_date", "e_tag") if f not in manifest.fields]
        if missing:  # an object's time and ETag are what the selection and the nightly diff use
            raise ConfigError(f"inventory report {inventory} lacks {', '.join(missing)}: configure the S3 Inventory with the Size, LastModifiedDate and ETag fields")
        df = inventory_listing(spark, manifest, conf.storage, bucket=location.bucket, prefix=location.prefix, parallelism=conf.input.list_parallelism)
        if not plan.whole:
            df = df.where(F.col("key").rlike(plan.regex()))
        m = manifest
        logger.info("listing %s from the S3 Inventory report %s (%s, %d files, made %s): keys matching %s", location.uri, inventory, m.file_format, len(m.files), m.created, plan.describe())
        return Listed(df), {"source": "inventory", "manifest": inventory, "patterns": [pattern_text(p) for p in plan.patterns], "notes": list(plan.notes)}
    resolved = resolve(plan, make_children(location, client, limit=conf.input.max_list_children))
    for note in plan.notes:
        logger.info("listing: %s", note)
    where = "the whole input" if resolved.prefixes == [""] else f"{len(resolved.prefixes)} prefixes ({plan.describe()})"
    n_prefixes = len(resolved.prefixes)
    if conf.input.driver_list_max:
        resolved = list_on_driver(location, resolved, client, max_keys=conf.input.driver_list_max)
    local = listing_pandas(resolved)
    if local is not None:
        logger.info("listing %s: %s, on the driver: %d objects, %d delimiter listings (%.2f s)", location.uri, where, len(local), resolved.requests, time.perf_counter() - t0)
    else:
        at_once = min(len(resolved.prefixes), conf.input.list_parallelism)
        logger.info(
            "listing %s: %s, %d on the executors, %d at a time, after %d delimiter listings (%.2f s)", location.uri, where, len(resolved.prefixes), at_once, resolved.requests, time.perf_counter() - t0
        )
    live_df = listing_frame(spark, location, resolved, conf.storage, parallelism=conf.input.list_parallelism) if local is None else None
    info = {
        "source": "live",
        "prefixes": n_prefixes,
        "driver_listed_prefixes": resolved.driver_listed,
        "delimiter_listings": resolved.requests,
        "patterns": [pattern_text(p) for p in plan.patterns],
        "notes": list(plan.notes),
    }
    return Listed(live_df, local), info


def _run_key(input_uri: str, conf: Conf, feat_id: str, sel: Selection, plan: ListingPlan, prune: bool) -> str:
    """What decides a featurize's outcome besides the listing and the store: input, conf sections, featurizer, selection, plan, prune."""
    what = {
        "vidspark": __version__,
        "input": input_uri,
        "conf": {name: asdict(getattr(conf, name)) for name in ("input", "featurizer", "video", "events", "job")},
        "featurizer": feat_id,
        "selection": [sel.since, sel.until, sorted(sel.cameras) if sel.cameras is not None else None],
        "patterns": [pattern_text(p) for p in plan.patterns],
        "prune": prune,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class ListingMark:
    """ "This store is what a finished featurize made of exactly this listing": a night that lists the same again skips the rest.

    A featurize whose listing the driver made (small, :func:`vidspark.listing.list_on_driver`) and
    that ended with no errors leaves ``_listing/<table>.json`` beside the store: a digest of
    every listed object (uri, ETag, size, last-modified) and of what else decides the outcome
    (:func:`_run_key`). A later run with the same digests would featurize nothing, prune nothing and
    fail nothing, so it stops after the listing: no Spark job at all. Any other run deletes the mark
    before it changes the store, so a mark is never there for a store changed since, by vidspark.
    """

    spark: SparkSession
    path: str
    key: str
    digest: str | None
    found: dict[str, Any] | None

    @classmethod
    def of(cls, spark: SparkSession, output: str, local: pd.DataFrame | None, *, key: str) -> ListingMark:
        path = join(sibling(output, "_listing"), f"{basename(output)}.json")  # not in _state/: a mark is no work left to do
        found = json.loads(read_text(spark, path)) if path_exists(spark, path) else None
        return cls(spark, path, key, _listing_digest(local) if local is not None else None, found)

    @property
    def unchanged(self) -> bool:
        return self.digest is not None and self.found is not None and self.found.get("key") == self.key and self.found.get("listing") == self.digest

    def forget(self) -> None:
        if self.found is not None:
            delete_path(self.spark, self.path)
            self.found = None

    def remember(self, run_id: str, counts: dict[str, int]) -> None:
        if self.digest is not None:
            write_json(self.spark, self.path, {"key": self.key, "listing": self.digest, "run_id": run_id, "counts": counts})


def _listing_digest(local: pd.DataFrame) -> str:
    """SHA-256 of a listing's objects (uri, ETag, size, last-modified in microseconds), in uri order."""
    df = local.sort_values("uri", kind="stable")
    h = hashlib.sha256()
    for row in zip(df["uri"], df["etag"].fillna(""), df["size"], epoch_micros(df["last_modified"]), strict=True):
        h.update("\0".join(map(str, row)).encode() + b"\n")
    return h.hexdigest()


def _unchanged_summary(spark: SparkSession, mark: ListingMark, *, input_uri: str, output: str, errors_output: str, featurizer: str, listing: dict[str, Any], t0: float) -> dict[str, Any]:
    """The summary of a featurize whose listing and store are as a finished run left them: everything skipped as unchanged."""
    c = (mark.found or {})["counts"]
    logger.info("listed %d objects under %s, as the run %s left them, and the store is as it left it: nothing to featurize, prune or retry", c["listed"], input_uri, (mark.found or {}).get("run_id"))
    return {
        "input": input_uri,
        "features": output,
        "errors": errors_output,
        "featurizer": featurizer,
        "listing": {**listing, "unchanged_since": (mark.found or {}).get("run_id")},
        "listed": c["listed"],
        "selected": c["selected"] + c["layout_errors"],
        "skipped_unchanged": c["selected"],
        "videos": c["videos"],
        "work_units": 0,
        "featurized_objects": 0,
        "featurized": 0,
        "replaced_objects": 0,
        "pruned_objects": 0,
        "errors_by_stage": {},
        "error_count": 0,
        "error_fraction": 0.0,
        "partitions": [],
        "timings": {"list_s": round(time.perf_counter() - t0, 3)},
        "tasks": {},
        "executor_versions": {},
        "executor_models": {},
        "executor_gpus": [],
        "task_slots": task_slots(spark),
    }


def _prune_scope(location: Location, plan: ListingPlan) -> Column:
    """Which stored uris this run's listing covers: under the input, with a key the plan lists."""
    base = location.uri.rstrip("/") + "/" if location.uri else "/"
    rel = F.substring(F.col("uri"), len(base) + 1, 1 << 30)
    return F.col("uri").startswith(base) & (F.lit(True) if plan.whole else rel.rlike(plan.regex()))


def _split_long_videos(spark: SparkSession, todo: DataFrame, n_todo: int, conf: Conf, timings: dict[str, float], stack: contextlib.ExitStack) -> tuple[DataFrame, DataFrame | None, int]:
    """Work rows with every video over ``video.split_min_bytes`` replaced by its segments, the probe's error rows, and the work count.

    ``n_todo``: the work rows' count, known from the diff (none: no Spark job is needed to say there is nothing to split).
    """
    if not n_todo:
        return todo, None, 0
    big = (F.col("kind") == "video") & (F.coalesce(F.col("size"), F.lit(0)) > conf.video.split_min_bytes)
    row = todo.agg(F.count(F.lit(1)).alias("n"), F.sum(big.cast("long")).alias("big")).collect()[0]
    n_todo, n_big = int(row["n"] or 0), int(row["big"] or 0)
    if not n_big:
        return todo, None, n_todo
    t_plan = time.perf_counter()
    big_df = todo.where(big).repartition(min(n_big, spark.sparkContext.defaultParallelism))
    planned = with_segments(big_df, vconf=conf.video, sconf=conf.storage).persist(StorageLevel.MEMORY_AND_DISK)
    stack.callback(planned.unpersist)
    segments = planned.where(F.col("stage").isNull()).select(*_WORK_COLUMNS)
    n_segments = segments.count()
    timings["split_s"] = time.perf_counter() - t_plan
    logger.info("split %d large videos into %d segments", n_big, n_segments)
    errors = planned.where(F.col("stage").isNotNull()).select("uri", "stage", "error_type", "message", "camera_id", "date")
    return todo.where(~big).unionByName(segments), errors, n_todo - n_big + n_segments


@dataclass
class _Outcome:
    """What the featurize stage produced: objects and frames featurized, partitions rewritten, errors by stage."""

    ok_objects: int = 0
    frames: int = 0
    replaced: int = 0
    partitions: list[tuple[str, str]] = field(default_factory=list)
    partition_counts: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    errors_by_stage: dict[str, int] = field(default_factory=dict)


def _featurize_and_write(
    spark: SparkSession,
    work: DataFrame,
    n_work: int,
    conf: Conf,
    *,
    feat_id: str,
    output: str,
    errors_output: str,
    run_id: str,
    driver_errors: DataFrame,
    n_driver_errors: int,
    diff: StoreDiff,
    on_partitions: Callable[[list[tuple[str, str]]], None] | None,
    stats: Any,
    timings: dict[str, float],
    objects: DataFrame,
) -> _Outcome:
    """Run the featurize stage over ``work``, swap the affected partitions of the store in, write errors/."""
    t1 = time.perf_counter()
    errors_df = driver_errors.withColumn("run_id", F.lit(run_id))
    outcome, task_errors = _Outcome(), 0
    result_df = None
    ok_uris = spark.createDataFrame([], URI_SCHEMA)
    if n_work:
        n_still = work.where(F.col("kind") != "video").count()
        num_tasks = min(n_work, max(task_slots(spark), math.ceil(n_still / conf.job.rows_per_task) + n_work - n_still))
        session_tz = spark.conf.get("spark.sql.session.timeZone") or "UTC"
        gpus = executor_gpus(spark.conf)
        request = stage_request(spark, conf.featurizer.task_gpus, conf.featurizer.task_cpus)
        if request.note:
            logger.warning("featurize on GPU executors: %s", request.note)
        elif request.profile is not None:
            logger.info("featurize stage asks for %g GPU and %d CPUs per task (stage-level scheduling; other stages hold no GPU)", request.task_gpus, request.task_cpus)
        result_df = with_features(
            work,
            fconf=conf.featurizer,
            sconf=conf.storage,
            vconf=conf.video,
            featurizer_id=feat_id,
            num_tasks=num_tasks,
            session_tz=session_tz,
            stats=stats,
            iconf=conf.input,
            executor_gpus=gpus,
            profile=request.profile,
        )
        result_df = result_df.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        if result_df is not None:
            # Counts per partition and per outcome, aggregated on the executors: nothing per object comes to the driver.
            ok = F.col("stage").isNull()
            counts = lambda: {"frames": 0.0, "errors": 0.0, "tasks": 0.0, **dict(stats.value)}  # noqa: E731 - read by the progress thread
            with Progress("featurize", every=conf.job.progress_seconds, counts=counts, units_total=num_tasks, frames_total=n_work if n_still == n_work else None):
                parts = result_df.where(ok).groupBy("camera_id", "date").agg(F.count(F.lit(1)).alias("frames"), F.countDistinct("uri").alias("objects")).collect()
            outcome.partition_counts = {(r["camera_id"], r["date"].isoformat()): {"frames": int(r["frames"]), "objects": int(r["objects"])} for r in parts}
            totals = result_df.agg(F.countDistinct(F.when(ok, F.col("uri"))).alias("ok"), F.countDistinct(F.when(~ok, F.col("uri"))).alias("failed")).collect()[0]
            outcome.ok_objects, task_errors = int(totals["ok"] or 0), int(totals["failed"] or 0)
            outcome.frames = sum(c["frames"] for c in outcome.partition_counts.values())
            ok_uris = result_df.where(ok).select("uri").distinct()
            timings["featurize_s"] = time.perf_counter() - t1
            if task_errors:
                errors_df = errors_df.unionByName(result_df.where(~ok).select("uri", "stage", "error_type", "message", "camera_id", "date", F.lit(run_id).alias("run_id")))
        # Nothing featurized, changed or pruned: no stored rows go, and no Spark job is needed to say so.
        drops = result_df is not None or diff.counts["changed"] or diff.counts["pruned"]
        drop_uris, replaced = diff.drop(ok_uris)
        drop_uris = drop_uris.persist(StorageLevel.MEMORY_AND_DISK)  # decided before the store changes
        outcome.replaced = replaced.count() if drops else 0
        outcome.partitions = sorted(set(outcome.partition_counts) | set(diff.partitions_of(drop_uris) if drops else ()))
        t2 = time.perf_counter()
        if outcome.partitions:
            if on_partitions is not None:
                on_partitions(outcome.partitions)
            new_df = result_df.where(F.col("stage").isNull()).select(*FEATURES_SCHEMA.fieldNames()) if result_df is not None else None
            merged_df = merged_features(spark, output, new_df=new_df, affected=outcome.partitions, drop_uris=drop_uris)
            scope = [partition_path(c, d) for c, d in outcome.partitions]
            replace_partitions(spark, merged_df, output, run_id=run_id, scope=scope, max_rows_per_file=rows_per_file(conf.job.target_file_mb, row_bytes=ROW_BYTES_FEATURES))
        drop_uris.unpersist()
        unknown_zone = TimeZones.from_conf(conf.input).name(None)  # rows whose key gave no camera
        outcome.errors_by_stage = write_errors(
            errors_df, errors_output, objects=objects, timezone=unknown_zone, max_rows_per_file=rows_per_file(conf.job.target_file_mb), empty=not n_driver_errors and not task_errors
        )
        timings["write_s"] = time.perf_counter() - t2
    finally:
        if result_df is not None:
            result_df.unpersist()
    return outcome
