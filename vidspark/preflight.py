"""Checks made before any Spark work, by every job and by ``vidspark check``.

Each check returns one line that says what it found, or raises the :mod:`vidspark.errors` class
whose exit code a scheduler can act on: a bad conf or layout (2), unreachable storage (3),
weights that cannot be had (5). ``vidspark check`` runs them all and reports each; a job runs the
ones it needs and ends at the first failure with one line on stderr, before Spark starts.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from vidspark.config import Conf
from vidspark.errors import ConfigError, StorageError, VidsparkError
from vidspark.layout import Layout, LayoutMismatch
from vidspark.storage import Location, ObjectInfo, check_readable, endpoint_of, make_s3_client, parse_uri


@dataclass
class Finding:
    """One check's outcome: ``ok``, a one-line ``detail``, optional indented ``lines``, the exit code of a failure."""

    check: str
    ok: bool
    detail: str
    exit_code: int = 0
    lines: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {"check": self.check, "ok": self.ok, "detail": self.detail, "exit_code": self.exit_code, "lines": self.lines}


def input_client(location: Location, conf: Conf) -> Any:
    """The boto3 client for an ``s3://`` input (None for local folders)."""
    return make_s3_client(conf.storage) if location.scheme == "s3" else None


def check_input(uri: str, conf: Conf, client: Any = None) -> str:
    """The input can be listed: bucket and endpoint reachable, credentials accepted (a folder: it exists)."""
    location = parse_uri(uri)
    client = client if client is not None else input_client(location, conf)
    check_readable(location, client)
    return f"{location.uri} readable" + (f" at {endpoint_of(client)}" if client is not None else "")


def check_weights(conf: Conf, client: Any = None) -> str:
    """The featurizer's weights can be had (see :func:`vidspark.backbone.resolve_weights`)."""
    from vidspark.backbone import resolve_weights

    return resolve_weights(conf.featurizer, conf.storage, s3_client=client if conf.featurizer.weights.startswith("s3://") else None)


def sample_layout(uri: str, conf: Conf, *, keys: int, client: Any = None) -> Finding:
    """The layout tried on the first ``keys`` keys under the input: the fields of those that fit, the keys that do not.

    Fails (exit 2) when keys were found and none fits: the layout or ``--input`` is wrong.
    """
    location = parse_uri(uri)
    client = client if client is not None else input_client(location, conf)
    layout = Layout.from_conf(conf.input)
    fit: list[str] = []
    misfit: list[str] = []
    for info in itertools.islice(_first_keys(location, client, keys), keys):
        try:
            f = layout.parse(info.rel_key)
        except LayoutMismatch as exc:
            misfit.append(f"does not fit: {exc}")
            continue
        fields = {k: getattr(f, k) for k in ("label", "camera_id", "video_id", "frame_idx", "ts", "date") if getattr(f, k) is not None}
        if f.ts is not None and not layout.zones.utc_only:  # the instant in the camera's zone, as the key wrote it
            zone = layout.zones.name(f.camera_id)
            fields["ts"] = f"{f.ts.astimezone(layout.zones.zone(f.camera_id)).isoformat()}[{zone}]"
        fit.append(f"{info.rel_key} -> " + " ".join(f"{k}={v.isoformat() if hasattr(v, 'isoformat') else v}" for k, v in fields.items()))
    n = len(fit) + len(misfit)
    detail = f"layout {conf.input.layout!r} on the first {n} keys: {len(fit)} fit, {len(misfit)} do not"
    lines = fit[:10] + (["..."] if len(fit) > 10 else []) + misfit[:10] + (["..."] if len(misfit) > 10 else [])
    if n and not fit:
        return Finding("layout", False, detail + "; set input.layout (or --layout) to how the keys are named", ConfigError.exit_code, lines)
    if not n:
        return Finding("layout", True, f"no keys under {uri} yet", 0, [])
    return Finding("layout", True, detail, 0, lines)


def _first_keys(location: Location, client: Any, n: int) -> Iterator[ObjectInfo]:
    """The first ``n`` objects under the input: one ``MaxKeys`` request on S3 (never a listing of the archive), a folder walk stopped early."""
    from vidspark.listing import _s3_info, list_prefix

    if location.scheme != "s3":
        yield from list_prefix(location, "", client)
        return
    from botocore.exceptions import BotoCoreError, ClientError

    base = location.prefix + "/" if location.prefix else ""
    try:
        page = client.list_objects_v2(Bucket=location.bucket, Prefix=base, MaxKeys=max(1, min(n, 1000)))
    except (BotoCoreError, ClientError) as exc:
        raise StorageError(f"cannot list {location.uri}: {exc}") from exc
    for obj in page.get("Contents", ()):
        if not obj["Key"].endswith("/"):
            yield _s3_info(location.bucket, obj, len(base))


def run_check(name: str, fn: Any, *args: Any, **kwargs: Any) -> Finding:
    """A check as a :class:`Finding`: its line, or the error it raised with that error's exit code."""
    try:
        out = fn(*args, **kwargs)
    except VidsparkError as exc:
        return Finding(name, False, str(exc), exc.exit_code)
    return out if isinstance(out, Finding) else Finding(name, True, str(out))


def render(findings: list[Finding]) -> str:
    """The report ``vidspark check`` prints: one line per check, then its indented lines."""
    out = []
    for f in findings:
        out.append(f"  {'ok  ' if f.ok else 'FAIL'}  {f.check:<9} {f.detail}")
        out.extend(f"              {line}" for line in f.lines)
    return "\n".join(out)
