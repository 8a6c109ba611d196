"""Listing: which key prefixes a run lists, narrowed by the layout and the selection, and the listing itself on the executors.

A night that adds 1 000 objects must not list the whole archive. From the layout's components and
``--since/--until/--cameras`` the driver plans *patterns*: key prefixes in which some path
components are still unknown (``{camera_id}`` without ``--cameras``). Live listings resolve those
components with delimiter listings (one request per level, a few per camera), then list the
resulting prefixes in parallel, on the executors, streaming into Spark; an S3 Inventory report is
filtered by the same patterns as a regular expression. Nothing proportional to the archive is held
by the driver.

Narrowing by time is done only where it cannot change a frame's identity (the frame index and time
that a whole frame folder decides, or the events that ``events.gap_seconds`` groups): a layout
whose identity depends on objects outside the window is listed without the time window, and the
log line that starts the listing says so.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession

from vidspark.config import StorageConf
from vidspark.layout import FIELDS, Layout, day_prefix_format, get_zone, has_date
from vidspark.schemas import LISTING_SCHEMA
from vidspark.storage import Location, ObjectInfo, cached_s3_client

logger = logging.getLogger(__name__)

WILD = None  # a pattern piece: one path component not known yet (resolved by a delimiter listing)
Pattern = tuple[str | None, ...]
_TOKEN = re.compile(r"\{([^{}]*)\}")
_BATCH = 10_000
MAX_DAYS = 92  # a longer window lists faster whole than one prefix per camera and day
MAX_DELIMITER_LISTINGS = 2_000  # resolving wildcard levels stops there; what is left is listed whole


@dataclass(frozen=True)
class ListingPlan:
    """What a run lists: key patterns relative to the input prefix, and why it could not narrow further.

    ``patterns``: each a tuple of literal text and :data:`WILD` pieces; a key is listed when it
    starts with a pattern. ``(“”,)`` is the whole input. ``time_window``: the days every pattern is
    confined to (then the store needs reading only from the first of them), else None.
    """

    patterns: tuple[Pattern, ...]
    notes: tuple[str, ...] = ()
    time_window: tuple[date, date] | None = None

    @property
    def whole(self) -> bool:
        return self.patterns == (("",),)

    def describe(self) -> str:
        shown = [pattern_text(p) or "(everything)" for p in self.patterns[:6]]
        more = f" and {len(self.patterns) - 6} more" if len(self.patterns) > 6 else ""
        return ", ".join(shown) + more

    def regex(self) -> str:
        """One regular expression that a key listed by this plan matches (for an inventory report)."""
        alts = []
        for p in self.patterns:
            alts.append("".join("[^/]+/" if piece is WILD else re.escape(piece) for piece in p))
            alts += [_pieces_regex(p[:i]) + "[^/]+$" for i, piece in enumerate(p) if piece is WILD]  # files at a level resolved by listing
        return "^(?:" + "|".join(dict.fromkeys(alts)) + ")"


def _pieces_regex(pieces: Pattern) -> str:
    return "".join("[^/]+/" if piece is WILD else re.escape(piece) for piece in pieces)


def pattern_text(pattern: Pattern) -> str:
    return "".join("*/" if piece is WILD else piece for piece in pattern)


def day_range(since: datetime, until: datetime, zones: Iterable[str] = ("UTC",)) -> list[date]:
    """The local days that ``[since, until)`` touches in any of ``zones`` (IANA names), sorted.

    Key days (``{date}``, the day of a ``{ts}``) are days of the camera's zone: a window of one
    night touches different days in different zones, and a listing must cover them all.
    """
    days: set[date] = set()
    for name in zones:
        tz = get_zone(name)
        first, last = since.astimezone(tz).date(), (until - timedelta(microseconds=1)).astimezone(tz).date()
        days.update(first + timedelta(days=i) for i in range((last - first).days + 1))
    return sorted(days)


def _component(comp: str) -> tuple[str, str, str]:
    """Classify one template component: (kind, field, literal before the field)."""
    if comp == "**":
        return "stop", "", ""
    tokens = list(_TOKEN.finditer(comp))
    if not tokens:
        return "literal", "", comp
    first = tokens[0]
    name = first.group(1)
    if len(tokens) == 1 and first.span() == (0, len(comp)):
        return ("field", name, "")
    if name == "ts":
        return "ts", "ts", comp[: first.start()]
    return "stop", "", ""


def plan_listing(
    layout: Layout,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    cameras: frozenset[str] | None = None,
    gap_seconds: float | None = None,
) -> ListingPlan:
    """Plan the key patterns a run lists, from the layout and the selection (pure; no listing).

    - A literal component is appended; ``{camera_id}`` becomes each of ``cameras``, or a component
      to resolve by a delimiter listing when a later component narrows.
    - ``{date}`` becomes each day of ``[since, until)``; a ``{ts}`` whose format starts with the day
      (``%Y%m%dT...``) becomes each day's prefix of it. Days are local days of the cameras' zones
      (those of ``cameras``, else all the layout's zones): the union of the window's days in each
      (:func:`day_range`). Without ``--until`` the days run to tomorrow.
    - Any other whole-component field (``{label}``, ``{video_id}``, ``{_}``) is resolved by listing
      only when a later component narrows; ``**`` or a mixed component ends the pattern.
    """
    notes: list[str] = []
    patterns: list[Pattern] = []
    all_timed = since is not None
    days: list[date] = []
    if since is not None:
        end = until or max(datetime.combine(datetime.now(timezone.utc).date() + timedelta(days=2), datetime.min.time(), tzinfo=timezone.utc), since + timedelta(days=1))
        days = day_range(since, end, layout.zones.names(cameras))
        if len(days) > MAX_DAYS:
            notes.append(f"a window of {len(days)} days is longer than {MAX_DAYS}: listed without narrowing by day (give --until, or run it in parts)")
            since, days = None, []
    zoned = "%z" in layout.ts_format or "%Z" in layout.ts_format
    day_fmt = None if zoned else day_prefix_format(layout.ts_format)  # a zoned key's day is a local one: no UTC day prefix
    for template, parts in zip(layout.alternatives, layout.parts, strict=True):
        kinds = [_component(c) for c in parts]
        names = [f for _, f, _ in kinds]
        time_ok, why = _time_safe(names, gap_seconds=gap_seconds, since=since, ts_day_fmt=day_fmt, ts_format=layout.ts_format)

        def narrows(k: tuple[str, str, str], last: bool, time_ok: bool = time_ok) -> bool:
            kind, name, _ = k
            if _is_ts(k):
                return time_ok and day_fmt is not None
            if kind == "field" and name == "date":
                return time_ok
            return kind == "field" and name == "camera_id" and cameras is not None and not last

        current: list[Pattern] = [()]
        timed = False
        for i, (kind, name, lit) in enumerate(kinds):
            last = i == len(parts) - 1
            later = any(narrows(k, j == len(parts) - 1) for j, k in enumerate(kinds[i + 1 :], start=i + 1))
            if kind == "literal" and not last:
                current = [(*p, lit + "/") for p in current]
                continue
            if kind == "field" and name == "camera_id" and not last and cameras is not None:
                current = [(*p, c + "/") for p in current for c in sorted(cameras)]
                continue
            if kind == "field" and name == "date" and time_ok:
                # Keys are selected by a {ts} that carries its own day (or a zone) when the layout has one: a day
                # folder may hold times of the day before or after (a clip across midnight, a local-time folder),
                # so a day more is listed on each side; a {ts} file name right below is narrowed by its day prefix.
                own_day = "ts" in names and (has_date(layout.ts_format) or zoned)
                folder: list[tuple[Pattern, date]] = [((*p, d.strftime(layout.date_format) + ("" if last else "/")), d) for p in current for d in (_widened(days) if own_day else days)]
                ts_file_next = i + 1 == len(parts) - 1 and _is_ts(kinds[i + 1])
                if own_day and day_fmt is not None and ts_file_next:  # each folder: the window's days among its own +-1
                    current = [(*f, kinds[i + 1][2] + day.strftime(day_fmt)) for f, fd in folder for day in days if abs((day - fd).days) <= 1]
                else:
                    current = [f for f, _ in folder]
                timed = True
                break  # the day folder is listed whole: its frame folders and times are decided over all of it
            if _is_ts((kind, name, lit)) and time_ok and day_fmt is not None:
                current = [(*p, lit + d.strftime(day_fmt)) for p in current for d in days]
                timed = True
                break
            if kind == "field" and name in (*FIELDS, "_") and not last and later:
                current = [(*p, WILD) for p in current]
                continue
            break
        if not timed:
            all_timed = False
            if since is not None:
                notes.append(f"layout {template!r} cannot narrow the listing by time ({why or 'no {date} or day-first {ts} in its path'})")
        if cameras is not None and "camera_id" not in names[:-1]:
            notes.append(f"layout {template!r} cannot narrow the listing by camera (no {{camera_id}} folder)")
        patterns.extend(_strip(p) for p in current)
    return ListingPlan(_dedupe(patterns), tuple(notes), (days[0], days[-1]) if all_timed and days else None)


def _is_ts(component: tuple[str, str, str]) -> bool:
    """A component that is, or starts after literal text with, ``{ts}`` (as :func:`_component` classifies it)."""
    return component[0] == "ts" or component[:2] == ("field", "ts")


def _widened(days: list[date]) -> list[date]:
    return [days[0] - timedelta(days=1), *days, days[-1] + timedelta(days=1)] if days else days


def _time_safe(names: list[str], *, gap_seconds: float | None, since: datetime | None, ts_day_fmt: str | None, ts_format: str) -> tuple[bool, str]:
    """Whether narrowing this alternative by time keeps every frame's identity, and why not."""
    if since is None:
        return False, "no --since, or a window too long"
    if gap_seconds is not None:
        return False, "events.gap_seconds groups stills across the window's edge"
    time_idx = next((i for i, n in enumerate(names) if n == "date" or (n == "ts" and ts_day_fmt is not None)), None)
    if time_idx is None:
        return False, "no {date} or day-first {ts} in its path"
    if "date" in names and not has_date(ts_format) and "ts" in names and names.index("ts") < names.index("date"):
        return False, "{ts} before {date}"
    if "video_id" in names and names.index("video_id") < time_idx and not ("frame_idx" in names and "ts" in names):
        return False, "a frame folder's index and time depend on its frames outside the window"
    return True, ""


def _strip(pattern: Pattern) -> Pattern:
    """Merge adjacent literal pieces: ``("cam1/", "2026-11-21/")`` -> ``("cam1/2026-11-21/",)``."""
    out: list[str | None] = []
    for piece in pattern:
        if piece is not WILD and out and out[-1] is not WILD:
            out[-1] = str(out[-1]) + piece
        else:
            out.append(piece)
    return tuple(out) if out else ("",)


def _dedupe(patterns: list[Pattern]) -> tuple[Pattern, ...]:
    """Drop patterns another one covers (a plain prefix of theirs; the whole input covers all)."""
    unique = list(dict.fromkeys(patterns))
    if ("",) in unique:
        return (("",),)
    plain = uncovered([str(p[0]) for p in unique if len(p) == 1])
    wild = [p for p in unique if len(p) > 1 and not (p[0] is not WILD and _covered_by(str(p[0]), plain))]
    return tuple(sorted([(q,) for q in plain] + wild, key=pattern_text))


@dataclass
class Resolved:
    """Patterns resolved to plain prefixes by delimiter listings, and the objects found at resolved levels."""

    prefixes: list[str]
    direct: list[ObjectInfo] = field(default_factory=list)
    requests: int = 0
    driver_listed: int = 0  # prefixes listed whole by the driver (:func:`list_on_driver`), their objects in ``direct``


def resolve(plan: ListingPlan, children: Callable[[str], tuple[list[str], list[ObjectInfo]] | None]) -> Resolved:
    """Turn the plan's patterns into plain prefixes: each :data:`WILD` piece becomes every child found there.

    ``children(prefix)`` returns the sub-folder names and the objects directly at ``prefix`` (a
    delimiter listing), or None when there are more than the conf allows: then the prefix is listed
    whole instead.
    """
    out = Resolved([])
    cache: dict[str, tuple[list[str], list[ObjectInfo]] | None] = {}
    seen_direct: set[str] = set()

    def expand(prefix: str, rest: Pattern) -> None:
        if not rest:
            out.prefixes.append(prefix)
            return
        piece, tail = rest[0], rest[1:]
        if piece is not WILD:
            expand(prefix + piece, tail)
            return
        if prefix not in cache:
            if out.requests >= MAX_DELIMITER_LISTINGS:  # wildcard levels multiply: past the budget, list the rest whole
                out.prefixes.append(prefix)
                return
            cache[prefix] = children(prefix)
            out.requests += 1
        found = cache[prefix]
        if found is None:
            out.prefixes.append(prefix)
            return
        names, direct = found
        for obj in direct:
            if obj.uri not in seen_direct:
                seen_direct.add(obj.uri)
                out.direct.append(obj)
        for name in names:
            expand(prefix + name + "/", tail)

    for pattern in plan.patterns:
        expand("", pattern)
    out.prefixes = uncovered(out.prefixes)  # a covered prefix would list twice
    out.direct = [o for o in out.direct if not _covered_by(o.rel_key, out.prefixes)]
    return out


def uncovered(prefixes: list[str]) -> list[str]:
    """The prefixes no other one starts (sorted): in sorted order a prefix's extensions follow it directly."""
    kept: list[str] = []
    for p in sorted(set(prefixes)):
        if not kept or not p.startswith(kept[-1]):
            kept.append(p)
    return kept


def _covered_by(key: str, sorted_prefixes: list[str]) -> bool:
    import bisect

    i = bisect.bisect_right(sorted_prefixes, key)
    return i > 0 and key.startswith(sorted_prefixes[i - 1])


def make_children(location: Location, client: Any, *, limit: int) -> Callable[[str], tuple[list[str], list[ObjectInfo]] | None]:
    """A delimiter listing of one level of the input: sub-folder names and the objects right there."""

    def s3_children(rel: str) -> tuple[list[str], list[ObjectInfo]] | None:
        base = location.prefix + "/" if location.prefix else ""
        names: list[str] = []
        direct: list[ObjectInfo] = []
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=location.bucket, Prefix=base + rel, Delimiter="/"):
            names += [cp["Prefix"][len(base + rel) :].rstrip("/") for cp in page.get("CommonPrefixes", ())]
            for obj in page.get("Contents", ()):
                if not obj["Key"].endswith("/"):
                    direct.append(_s3_info(location.bucket, obj, len(base)))
            if len(names) + len(direct) > limit:
                return None
        return names, direct

    def local_children(rel: str) -> tuple[list[str], list[ObjectInfo]] | None:
        folder = Path(location.prefix) / rel
        if not folder.is_dir():
            return [], []
        names, direct = [], []
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=True):
                    names.append(entry.name)
                else:
                    direct.append(_local_info(Path(location.prefix), Path(entry.path)))
                if len(names) + len(direct) > limit:
                    return None
        return sorted(names), direct

    return local_children if location.scheme == "file" else s3_children


def _s3_info(bucket: str, obj: dict[str, Any], base_len: int) -> ObjectInfo:
    key = obj["Key"]
    etag = str(obj.get("ETag", "")).strip('"')
    return ObjectInfo(uri=f"s3://{bucket}/{key}", rel_key=key[base_len:], size=int(obj.get("Size", 0)), etag=etag, last_modified=obj["LastModified"].astimezone(timezone.utc))


def _local_info(root: Path, path: Path) -> ObjectInfo:
    rel = path.relative_to(root).as_posix()
    try:
        st = path.stat()
    except OSError:  # broken link or vanished: listed anyway, so its read fails into an errors row
        return ObjectInfo(uri=str(path), rel_key=rel, size=0, etag="", last_modified=datetime.now(timezone.utc))
    return ObjectInfo(uri=str(path), rel_key=rel, size=st.st_size, etag=f"{st.st_size:x}-{st.st_mtime_ns:x}", last_modified=datetime.fromtimestamp(st.st_mtime, tz=timezone.utc))


def list_prefix(location: Location, rel: str, client: Any = None) -> Iterator[ObjectInfo]:
    """Every object whose key (relative to the input) starts with ``rel`` (S3 paginated, folders walked)."""
    if location.scheme == "file":
        from vidspark.errors import StorageError

        root = Path(location.prefix)
        folder, _, name_prefix = rel.rpartition("/")
        start = root / folder if folder else root
        if not start.is_dir():
            return

        def unreadable(exc: OSError) -> None:
            raise StorageError(f"cannot list {exc.filename!r} under {location.prefix!r}: {exc.strerror}; fix its permissions")

        for dirpath, dirnames, filenames in os.walk(start, onerror=unreadable, followlinks=True):
            if name_prefix and Path(dirpath) == start:
                dirnames[:] = [d for d in dirnames if d.startswith(name_prefix)]
                filenames = [f for f in filenames if f.startswith(name_prefix)]
            dirnames.sort()
            for name in sorted(filenames):
                yield _local_info(root, Path(dirpath) / name)
        return
    base = location.prefix + "/" if location.prefix else ""
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=location.bucket, Prefix=base + rel):
        for obj in page.get("Contents", ()):
            if not obj["Key"].endswith("/"):
                yield _s3_info(location.bucket, obj, len(base))


def _frame(infos: list[ObjectInfo]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "uri": [o.uri for o in infos],
            "key": [o.rel_key for o in infos],
            "size": pd.Series([o.size for o in infos], dtype="int64"),
            "etag": [o.etag for o in infos],
            "last_modified": pd.to_datetime([o.last_modified for o in infos], utc=True),
        }
    )


def make_list_fn(location: Location, sconf: StorageConf, prefixes: list[str]) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The executor task: list the prefixes whose positions in ``prefixes`` its partition holds (column ``id``), in batches of at most 10 000 objects."""

    def list_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        client = cached_s3_client(sconf) if location.scheme == "s3" else None
        for batch in batches:
            for i in batch["id"]:
                infos: list[ObjectInfo] = []
                for info in list_prefix(location, prefixes[int(i)], client):
                    infos.append(info)
                    if len(infos) >= _BATCH:
                        yield _frame(infos)
                        infos = []
                if infos:
                    yield _frame(infos)

    return list_partition


@dataclass(frozen=True)
class Listed:
    """A listing: its DataFrame (``LISTING_SCHEMA``) and, when the driver listed all of it, the same rows as a pandas frame."""

    df: DataFrame | None  # None when ``local`` holds the whole listing: no DataFrame is made that nothing reads
    local: pd.DataFrame | None = None


def epoch_micros(ts: pd.Series) -> pd.Series:
    """UTC instants (``datetime64[.., UTC]``) as whole microseconds since the epoch."""
    return (ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)


def list_on_driver(location: Location, resolved: Resolved, client: Any = None, *, max_keys: int) -> Resolved:
    """``resolved`` with its prefixes listed here, in order, while the objects found stay within ``max_keys``.

    The prefixes listed whole move into ``direct`` (objects the driver found); the first one that
    would pass ``max_keys`` and every prefix after it stay in ``prefixes``, for the executors (the
    part of that one already read is dropped: at most ``max_keys`` objects read twice). A small
    archive or a narrow night is then listed with no Spark job and no Python worker at all; the
    driver never holds more than ``max_keys`` objects, however large the archive.
    """
    budget = max_keys - len(resolved.direct)
    direct = list(resolved.direct)
    for i, prefix in enumerate(resolved.prefixes):
        found = list(itertools.islice(list_prefix(location, prefix, client), max(budget, 0) + 1))
        if len(found) > budget:
            return Resolved(resolved.prefixes[i:], direct, resolved.requests, driver_listed=i)
        direct += found
        budget -= len(found)
    return Resolved([], direct, resolved.requests, driver_listed=len(resolved.prefixes))


def listing_pandas(resolved: Resolved) -> pd.DataFrame | None:
    """The whole listing as a pandas frame (``LISTING_SCHEMA``'s columns) when the driver found all of it, else None."""
    return None if resolved.prefixes else _frame(resolved.direct)


def listing_frame(spark: SparkSession, location: Location, resolved: Resolved, sconf: StorageConf, *, parallelism: int) -> DataFrame:
    """The listing as a DataFrame (``LISTING_SCHEMA``): the resolved prefixes listed on the executors, ``parallelism`` at most at once.

    The objects the driver already holds (``resolved.direct``) join them as a local relation; with no
    prefix left there is no listing task (and no Python worker) at all.
    """
    prefixes = resolved.prefixes
    if not prefixes:
        return spark.createDataFrame(_frame(resolved.direct), schema=LISTING_SCHEMA)
    n = max(1, min(len(prefixes), parallelism))
    # Positions of the prefixes as n partitions of a range (the prefixes travel with the task's function): no Python RDD,
    # whose conversion would start Python workers of its own before the listing's, and no shuffle.
    listed = spark.range(0, len(prefixes), 1, n).mapInPandas(make_list_fn(location, sconf, prefixes), schema=LISTING_SCHEMA)
    if resolved.direct:
        listed = listed.unionByName(spark.createDataFrame(_frame(resolved.direct), schema=LISTING_SCHEMA))
    return listed
