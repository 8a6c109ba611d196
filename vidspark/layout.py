"""Layout templates: map an object key (relative to the input prefix) to fields.

Template syntax, one path component per ``/``:

- ``{label}``, ``{camera_id}``, ``{video_id}``, ``{frame_idx}``, ``{ts}``, ``{date}``: a named field. A field can
  share a component with literal text (``frame_{frame_idx}.jpg``). A field that is the whole *last*
  component captures the file name without its extension (``{video_id}`` on ``143000.mp4`` is
  ``143000``).
- ``{_}``: one component, ignored.
- ``**``: any number of components; as the last component it needs at least one (the file).

``{ts}`` is parsed with ``ts_format`` and ``{date}`` with ``date_format``; a ``{ts}`` whose format
has no date (``%H%M%S``) takes its day from ``{date}`` (``{camera_id}/{date}/{ts}.jpg``). A key with
``{date}`` and no ``{ts}`` is selected by its date (see :class:`vidspark.inventory.Selection`).

Recorders name files in local time: a ``{ts}`` without an offset is read in its camera's zone
(:class:`TimeZones`: ``input.timezones[camera_id]``, else ``input.timezone``) and becomes a UTC
instant; a ``%z`` in ``ts_format`` wins. A ``{date}`` is a day of the camera's zone.

Several templates separated by ``|`` (or a YAML list in conf) are alternatives tried in order; the
first that fits a key wins. A mixed archive of frame folders and video files needs this:
``{camera_id}/{video_id}/** | {camera_id}/{ts}``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from vidspark.errors import ConfigError, LayoutError

if TYPE_CHECKING:
    from vidspark.config import InputConf

UNKNOWN_CAMERA = "unknown"  # the camera_id of keys without {camera_id}
FIELDS = ("label", "camera_id", "video_id", "frame_idx", "ts", "date")
_DATE_DIRECTIVES = ("%Y", "%y", "%j", "%d", "%x", "%c", "%G", "%U", "%W", "%V", "%s")


_DAY_PREFIX_DIRECTIVES = ("%Y", "%m", "%d")


def day_prefix_format(fmt: str) -> str | None:
    """The leading part of a strftime format that pins one day (``%Y%m%dT`` of ``%Y%m%dT%H%M%S``), else None."""
    out, i = "", 0
    while i < len(fmt):
        if fmt[i] == "%":
            directive = fmt[i : i + 2]
            if directive not in _DAY_PREFIX_DIRECTIVES:
                break
            out += directive
            i += 2
        else:
            out += fmt[i]
            i += 1
    return out if all(d in out for d in _DAY_PREFIX_DIRECTIVES) else None


def has_date(fmt: str) -> bool:
    """Whether a strftime format pins a calendar day (``%H%M%S`` does not)."""
    return any(d in fmt for d in _DATE_DIRECTIVES)


_TOKEN = re.compile(r"\{([^{}]*)\}")

ZONE_EXAMPLES = "an IANA time zone name such as UTC, Europe/Berlin or America/New_York"


@lru_cache(maxsize=256)
def _zone(name: str) -> tzinfo:
    return timezone.utc if name == "UTC" else ZoneInfo(name)


def get_zone(name: str, *, what: str = "time zone") -> tzinfo:
    """The ``tzinfo`` of an IANA zone name (``UTC`` is :data:`datetime.timezone.utc`).

    Parameters
    ----------
    name
        IANA name, for example ``Europe/Berlin``.
    what
        What the name is, for the error message (``conf key 'input.timezone'``).

    Raises
    ------
    ConfigError
        If ``name`` is not a zone of the time zone database.
    """
    if isinstance(name, str) and name:
        try:
            return _zone(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    raise ConfigError(f"{what}: {name!r} is not a known time zone; allowed: {ZONE_EXAMPLES} (zoneinfo.available_timezones() lists them)")


@dataclass(frozen=True)
class TimeZones:
    """The zone each camera's keys are written in: ``cameras[camera_id]``, else ``default``.

    A key without ``{camera_id}`` belongs to camera ``unknown`` (:data:`UNKNOWN_CAMERA`).

    Raises
    ------
    ConfigError
        If a name is not a zone of the time zone database.
    """

    default: str = "UTC"
    cameras: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        get_zone(self.default, what="input.timezone")
        for camera, name in self.cameras.items():
            get_zone(name, what=f"input.timezones.{camera}")

    @classmethod
    def from_conf(cls, input_conf: InputConf) -> TimeZones:
        """The zones of the conf's ``input.timezone`` and ``input.timezones``."""
        return cls(input_conf.timezone, dict(input_conf.timezones))

    def name(self, camera_id: str | None) -> str:
        """The IANA name of a camera's zone."""
        return self.cameras.get(UNKNOWN_CAMERA if camera_id is None else camera_id, self.default)

    def zone(self, camera_id: str | None) -> tzinfo:
        """The ``tzinfo`` of a camera's zone."""
        return get_zone(self.name(camera_id))

    def names(self, cameras: Iterable[str] | None = None) -> list[str]:
        """The distinct zone names of these cameras (None: the default and every per-camera zone), sorted."""
        if cameras is None:
            return sorted({self.default, *self.cameras.values()})
        return sorted({self.name(c) for c in cameras})

    @property
    def utc_only(self) -> bool:
        """Whether every camera is in UTC (keys read as before time zones were configurable)."""
        return self.names() == ["UTC"]

    def day_bounds(self, day: date, camera_id: str | None) -> tuple[datetime, datetime]:
        """The UTC instants a camera-local day starts and ends at (23 or 25 hours apart on a DST day)."""
        tz = self.zone(camera_id)
        start = datetime(day.year, day.month, day.day, tzinfo=tz)
        end = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=tz)
        return start.astimezone(timezone.utc), end.astimezone(timezone.utc)


def local_datetime(naive: datetime, tz: tzinfo) -> datetime:
    """A naive local time in ``tz`` as a UTC instant.

    A time that occurs twice (the repeated hour when clocks go back) is its first occurrence, and a
    time that does not exist (the skipped hour when clocks go forward) is read with the offset
    before the change: what ``zoneinfo`` does with ``fold=0``.
    """
    return naive.replace(tzinfo=tz, fold=0).astimezone(timezone.utc)


@dataclass(frozen=True)
class KeyFields:
    """Fields parsed from one key; absent fields are None."""

    label: str | None = None
    camera_id: str | None = None
    video_id: str | None = None
    frame_idx: int | None = None
    ts: datetime | None = None  # a UTC instant
    date: date | None = None  # the key's {date}, a day of the camera's zone (a {ts} without a day of its own is on it)
    file_field: str | None = None  # the field that took the whole file name (without its extension), if any
    scope: str = ""  # the key's {date}/{ts} text when a folder of it holds the {video_id} folders (a frame folder is one per day)


class LayoutMismatch(ValueError):
    """A key does not fit the layout; the message says why."""


class Layout:
    """A compiled layout template.

    Parameters
    ----------
    template
        The template, for example ``{camera_id}/{video_id}/**``.
    ts_format
        strftime format of the ``{ts}`` field (local time of the camera's zone unless the format has ``%z``).
    date_format
        strftime format of the ``{date}`` field.
    timezone
        IANA name of the zone keys are written in (``input.timezone``).
    timezones
        Per-camera zones, camera id to IANA name (``input.timezones``).

    Raises
    ------
    LayoutError
        If the template uses an unknown field, repeats one, or is empty.
    ConfigError
        If a zone is not in the time zone database.
    """

    def __init__(
        self,
        template: str,
        *,
        ts_format: str = "%Y%m%dT%H%M%S",
        date_format: str = "%Y-%m-%d",
        timezone: str = "UTC",
        timezones: Mapping[str, str] | None = None,
    ) -> None:
        self.template = template
        self.ts_format = ts_format
        self.date_format = date_format
        self.zones = TimeZones(timezone, dict(timezones or {}))
        self.alternatives = [t.strip() for t in template.split("|")]
        self.parts = [t.strip("/").split("/") for t in self.alternatives]
        compiled = [self._compile(t) for t in self.alternatives]
        self.regexes = [rx for rx, _ in compiled]
        self.file_fields = [name for _, name in compiled]
        self.fields = tuple(dict.fromkeys(name for rx in self.regexes for name in rx.groupindex))
        self.scope_fields = [_scope_field(parts) for parts in self.parts]

    @classmethod
    def from_conf(cls, input_conf: InputConf) -> Layout:
        """The layout of the conf's ``input`` section (template, formats and time zones).

        Raises
        ------
        ConfigError
            As the constructor.
        """
        return cls(input_conf.layout, ts_format=input_conf.ts_format, date_format=input_conf.date_format, timezone=input_conf.timezone, timezones=input_conf.timezones)

    @staticmethod
    def _compile(template: str) -> tuple[re.Pattern[str], str | None]:
        """The regex of one alternative, and the field that is its whole last component (None if none)."""
        if not template or not template.strip("/"):
            raise LayoutError(f"layout template {template!r} is empty; example: '{{label}}/**'")
        parts = template.strip("/").split("/")
        seen: set[str] = set()
        pattern = ""
        file_field = None
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "**":
                # '**' in the middle eats zero or more whole components (with their slash);
                # at the end it must match the file itself.
                pattern += ".+" if last else "(?:[^/]+/)*"
                continue
            if "**" in part:
                raise LayoutError(f"layout template {template!r}: '**' must be a whole component")
            piece = ""
            pos = 0
            tokens = list(_TOKEN.finditer(part))
            for m in tokens:
                piece += re.escape(part[pos : m.start()])
                name = m.group(1)
                if name == "_":
                    piece += "[^/]+?"
                elif name in FIELDS:
                    if name in seen:
                        raise LayoutError(f"layout template {template!r}: field {{{name}}} appears twice")
                    seen.add(name)
                    piece += rf"(?P<{name}>\d+)" if name == "frame_idx" else rf"(?P<{name}>[^/]+?)"
                else:
                    raise LayoutError(f"layout template {template!r}: unknown field {{{name}}}; allowed: " + ", ".join("{" + f + "}" for f in (*FIELDS, "_")) + ", **")
                pos = m.end()
            rest = part[pos:]
            if "{" in rest or "}" in rest:
                raise LayoutError(f"layout template {template!r}: unbalanced brace in {part!r}")
            piece += re.escape(rest)
            if last and len(tokens) == 1 and tokens[0].span() == (0, len(part)):
                piece += r"(?:\.[^./]+)?"  # whole-file field: drop the extension
                file_field = tokens[0].group(1)
            pattern += piece + ("" if last else "/")
        return re.compile(pattern + r"\Z", re.DOTALL), file_field

    def parse(self, key: str) -> KeyFields:
        """Parse one relative key; its ``ts`` is a UTC instant (a local ``{ts}`` read in the camera's zone, see :func:`local_datetime`).

        Raises
        ------
        LayoutMismatch
            If the key does not fit, or ``{frame_idx}``/``{ts}`` do not parse.
        """
        i, m = next(((i, m) for i, m in enumerate(rx.match(key) for rx in self.regexes) if m is not None), (-1, None))
        if m is None:
            raise LayoutMismatch(f"key {key!r} does not fit layout {self.template!r}")
        values: dict[str, Any] = dict(m.groupdict())
        values["file_field"] = self.file_fields[i]
        scope_field = self.scope_fields[i]
        values["scope"] = values[scope_field] if scope_field else ""
        if values.get("frame_idx") is not None:
            values["frame_idx"] = int(values["frame_idx"])
        if values.get("date") is not None:
            text = values["date"]
            try:
                values["date"] = datetime.strptime(text, self.date_format).date()
            except ValueError as exc:
                raise LayoutMismatch(f"key {key!r}: {{date}} value {text!r} does not match date_format {self.date_format!r}") from exc
            if values["date"].strftime(self.date_format) != text:  # strptime takes 2026-11-5; a listing by day folder would not find it
                raise LayoutMismatch(f"key {key!r}: {{date}} value {text!r} is not written exactly as date_format {self.date_format!r} writes it")
        if values.get("ts") is not None:
            text, fmt = values["ts"], self.ts_format
            if values.get("date") is not None and not has_date(fmt):  # a time of day on the key's {date}
                text, fmt = f"{values['date'].isoformat()} {text}", f"%Y-%m-%d {fmt}"
            try:
                ts = datetime.strptime(text, fmt)
            except ValueError as exc:
                raise LayoutMismatch(f"key {key!r}: {{ts}} value {values['ts']!r} does not match ts_format {self.ts_format!r}") from exc
            day_fmt = day_prefix_format(fmt)
            if day_fmt is not None and not text.startswith(ts.strftime(day_fmt)):  # the day as a listing by key prefix finds it
                raise LayoutMismatch(f"key {key!r}: {{ts}} value {values['ts']!r} does not start with its day as ts_format {self.ts_format!r} writes it")
            values["ts"] = ts.astimezone(timezone.utc) if ts.tzinfo else local_datetime(ts, self.zones.zone(values.get("camera_id")))
        return KeyFields(**values)


def _scope_field(parts: list[str]) -> str | None:
    """The ``{date}`` or ``{ts}`` field of a folder above the ``{video_id}`` folder, if any."""
    where = {name: i for i, part in enumerate(parts) for name in _TOKEN.findall(part)}
    if "video_id" not in where:
        return None
    above = [f for f in ("date", "ts") if f in where and where[f] < where["video_id"]]
    return min(above, key=where.__getitem__) if above else None


_NUM = re.compile(r"([0-9]+)")


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key that orders ``frame_2`` before ``frame_10``."""
    return tuple((0, int(tok), "") if tok.isdecimal() else (1, 0, tok.lower()) for tok in _NUM.split(text) if tok)


def natural_sort_text(text: str) -> str:
    """:func:`natural_key` as one string that sorts the same way (for Spark's string ordering).

    Digit runs become ``0`` + their length + their digits, text runs ``1`` + the lowered text, each
    ended by NUL: comparing these strings byte by byte (as Spark does) compares the tuples.
    """
    out = []
    for tok in _NUM.split(text):
        if not tok:
            continue
        if tok.isdecimal() and tok.isascii():
            digits = tok.lstrip("0") or "0"
            out.append(f"0{len(digits):05d}{digits}\x00")
        elif tok.isdecimal():  # other scripts' digits: natural_key takes their value
            digits = str(int(tok))
            out.append(f"0{len(digits):05d}{digits}\x00")
        else:
            out.append(f"1{tok.lower()}\x00")
    return "".join(out)
