"""Layout templates: map an object key (relative to the input prefix) to fields.

Template syntax, one path component per ``/``:

- ``{label}``, ``{camera_id}``, ``{video_id}``, ``{frame_idx}``, ``{ts}``: a named field. A field can
  share a component with literal text (``frame_{frame_idx}.jpg``). A field that is the whole *last*
  component captures the file name without its extension (``{video_id}`` on ``143000.mp4`` is
  ``143000``).
- ``{_}``: one component, ignored.
- ``**``: any number of components; as the last component it needs at least one (the file).

Several templates separated by ``|`` (or a YAML list in conf) are alternatives tried in order; the
first that fits a key wins. A mixed archive of frame folders and video files needs this:
``{camera_id}/{video_id}/** | {camera_id}/{ts}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from vidspark.errors import LayoutError

FIELDS = ("label", "camera_id", "video_id", "frame_idx", "ts")
_TOKEN = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True)
class KeyFields:
    """Fields parsed from one key; absent fields are None."""

    label: str | None = None
    camera_id: str | None = None
    video_id: str | None = None
    frame_idx: int | None = None
    ts: datetime | None = None
    file_field: str | None = None  # the field that took the whole file name (without its extension), if any


class LayoutMismatch(ValueError):
    """A key does not fit the layout; the message says why."""


class Layout:
    """A compiled layout template.

    Parameters
    ----------
    template
        The template, for example ``{camera_id}/{video_id}/**``.
    ts_format
        strftime format of the ``{ts}`` field (UTC unless the format has ``%z``).

    Raises
    ------
    LayoutError
        If the template uses an unknown field, repeats one, or is empty.
    """

    def __init__(self, template: str, *, ts_format: str = "%Y%m%dT%H%M%S") -> None:
        self.template = template
        self.ts_format = ts_format
        self.alternatives = [t.strip() for t in template.split("|")]
        compiled = [self._compile(t) for t in self.alternatives]
        self.regexes = [rx for rx, _ in compiled]
        self.file_fields = [name for _, name in compiled]
        self.fields = tuple(dict.fromkeys(name for rx in self.regexes for name in rx.groupindex))

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
        """Parse one relative key.

        Raises
        ------
        LayoutMismatch
            If the key does not fit, or ``{frame_idx}``/``{ts}`` do not parse.
        """
        m, file_field = next(((m, f) for m, f in ((rx.match(key), f) for rx, f in zip(self.regexes, self.file_fields, strict=True)) if m is not None), (None, None))
        if m is None:
            raise LayoutMismatch(f"key {key!r} does not fit layout {self.template!r}")
        values: dict[str, Any] = dict(m.groupdict())
        values["file_field"] = file_field
        if values.get("frame_idx") is not None:
            values["frame_idx"] = int(values["frame_idx"])
        if values.get("ts") is not None:
            text = values["ts"]
            try:
                ts = datetime.strptime(text, self.ts_format)
            except ValueError as exc:
                raise LayoutMismatch(f"key {key!r}: {{ts}} value {text!r} does not match ts_format {self.ts_format!r}") from exc
            values["ts"] = ts.astimezone(timezone.utc) if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
        return KeyFields(**values)


_NUM = re.compile(r"([0-9]+)")


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key that orders ``frame_2`` before ``frame_10``."""
    return tuple((0, int(tok), "") if tok.isdecimal() else (1, 0, tok.lower()) for tok in _NUM.split(text) if tok)
