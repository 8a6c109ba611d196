"""Object storage: S3 (any S3-compatible endpoint, through boto3) and local folders.

Listing is planned by :mod:`vidspark.listing`; reading runs on executors, one client per Python
worker. Credentials come only from boto3's standard chain (environment, profile, instance role);
the endpoint from ``storage.endpoint_url`` or boto3's own ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from vidspark.config import StorageConf
from vidspark.errors import StorageError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Location:
    """A parsed input URI: ``s3://bucket/prefix`` or a local folder."""

    scheme: str  # "s3" or "file"
    bucket: str  # empty for file
    prefix: str  # s3: key prefix without trailing slash; file: absolute folder path

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/") if self.scheme == "s3" else self.prefix


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object."""

    uri: str
    rel_key: str
    size: int
    etag: str
    last_modified: datetime


def parse_uri(uri: str) -> Location:
    """Parse an input URI.

    Raises
    ------
    StorageError
        For an unsupported scheme (``s3a://`` is accepted as ``s3://`` for input).
    """
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("s3", "s3a", "s3n"):
        if not parsed.netloc:
            raise StorageError(f"input URI {uri!r} has no bucket; expected s3://bucket/prefix")
        return Location("s3", parsed.netloc, parsed.path.strip("/"))
    if scheme == "file":
        return Location("file", "", str(Path(unquote(parsed.path)).resolve()))
    if scheme == "" or (len(scheme) == 1 and os.name == "nt"):
        return Location("file", "", str(Path(uri).expanduser().resolve()))
    raise StorageError(f"input URI {uri!r}: scheme {scheme!r} is not supported; use s3://bucket/prefix, file:///path or a local path")


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")``."""
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    return bucket, key


def make_s3_client(conf: StorageConf) -> Any:
    """A boto3 S3 client built from the conf; endpoint/credentials otherwise from boto3's chain."""
    import boto3
    from botocore.config import Config

    cfg = Config(
        retries={"mode": conf.retry_mode, "max_attempts": conf.max_attempts},
        connect_timeout=conf.connect_timeout,
        read_timeout=conf.read_timeout,
        s3={"addressing_style": conf.addressing_style},
        max_pool_connections=64,
    )
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=conf.endpoint_url or None, region_name=conf.region or None, config=cfg)


_client_lock = threading.Lock()
_clients: dict[StorageConf, Any] = {}


def cached_s3_client(conf: StorageConf) -> Any:
    """One client per Python worker and conf (boto3 clients are thread-safe)."""
    with _client_lock:
        client = _clients.get(conf)
        if client is None:
            client = _clients[conf] = make_s3_client(conf)
        return client


def endpoint_of(client: Any) -> str:
    return str(getattr(getattr(client, "meta", None), "endpoint_url", "?"))


def check_readable(location: Location, client: Any = None) -> None:
    """Fail fast, before any Spark work, if the input cannot be read.

    Raises
    ------
    StorageError
        Naming the bucket/folder and endpoint, and what to check.
    """
    if location.scheme == "file":
        if not Path(location.prefix).is_dir():
            raise StorageError(f"input folder {location.prefix!r} does not exist or is not a folder")
        return
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

    endpoint = endpoint_of(client)
    try:
        client.head_bucket(Bucket=location.bucket)
    except NoCredentialsError as exc:
        raise StorageError(
            f"no AWS credentials found for bucket {location.bucket!r} at {endpoint}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run where an instance/pod role is available"
        ) from exc
    except EndpointConnectionError as exc:
        raise StorageError(f"cannot reach the S3 endpoint {endpoint} for bucket {location.bucket!r}: check storage.endpoint_url / AWS_ENDPOINT_URL_S3 and the network") from exc
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("404", "NoSuchBucket") or status == 404:
            raise StorageError(f"bucket {location.bucket!r} does not exist at {endpoint}: check the input URI and endpoint") from exc
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") or status == 403:
            raise StorageError(
                f"access to bucket {location.bucket!r} at {endpoint} was denied ({code or status}): check the credentials and the bucket policy (s3:ListBucket and s3:GetObject are needed)"
            ) from exc
        raise StorageError(f"bucket {location.bucket!r} at {endpoint}: {code or status}: {exc}") from exc
    except BotoCoreError as exc:
        raise StorageError(f"bucket {location.bucket!r} at {endpoint}: {type(exc).__name__}: {exc}") from exc


def get_object_bytes(client: Any, *, bucket: str, key: str, etag: str | None = None, byte_range: str | None = None, attempts: int = 5) -> bytes:
    """GET one object (or a ``bytes=a-b`` range) and read its body, retrying a body cut off mid-way.

    botocore retries errors it sees in the response (500, 503, SlowDown, throttling) with the
    conf's retry mode; a connection that drops while the body streams fails only at ``read()``,
    after botocore has returned, so that is retried here (same attempt count, jittered backoff).
    ``IfMatch`` (412) and other client errors are not retried.
    """
    from botocore.exceptions import ConnectionClosedError, IncompleteReadError, ReadTimeoutError, ResponseStreamingError

    kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if etag:
        kwargs["IfMatch"] = f'"{etag}"'
    if byte_range:
        kwargs["Range"] = byte_range
    for attempt in range(1, attempts + 1):
        try:
            response = client.get_object(**kwargs)
            body = response["Body"]
            try:
                data = bytes(body.read())
            finally:
                body.close()
            expected = response.get("ContentLength")
            if expected is not None and len(data) != int(expected):
                raise StorageError(f"s3://{bucket}/{key}: got {len(data)} of {expected} bytes")
            return data
        except (ResponseStreamingError, IncompleteReadError, ReadTimeoutError, ConnectionClosedError, OSError, StorageError) as exc:  # a body cut off mid-stream
            if attempt == attempts:
                raise
            delay = min(5.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.0)
            logger.info("reading s3://%s/%s failed (%s: %s); attempt %d of %d in %.2f s", bucket, key, type(exc).__name__, exc, attempt + 1, attempts, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def read_object(uri: str, *, client: Any = None, etag: str | None = None, attempts: int = 5) -> bytes:
    """Read one object's bytes on an executor.

    With ``etag`` for S3 the read is conditional (``IfMatch``), so an object replaced since the
    listing raises instead of being mixed into this run.
    """
    if uri.startswith("s3://"):
        bucket, key = split_s3_uri(uri)
        return get_object_bytes(client, bucket=bucket, key=key, etag=etag, attempts=attempts)
    with open(uri, "rb") as fh:
        return fh.read()
