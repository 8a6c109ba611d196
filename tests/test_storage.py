"""Storage against a real S3 HTTP endpoint on loopback."""

from __future__ import annotations

import pytest

from tests.conftest import free_port
from vidspark.cli import main
from vidspark.config import StorageConf
from vidspark.errors import StorageError
from vidspark.listing import list_prefix
from vidspark.storage import check_readable, make_s3_client, parse_uri, read_object


def test_parse_uri(tmp_path):
    assert parse_uri("s3://b/p/q/").prefix == "p/q"
    assert parse_uri("s3a://b").bucket == "b"
    assert parse_uri(f"file://{tmp_path}").prefix == str(tmp_path)
    with pytest.raises(StorageError, match="not supported"):
        parse_uri("ftp://x/y")


def server_store(bucket: str):
    """The S3 store of the moto server that holds ``bucket`` (conftest runs the server in this process)."""
    from moto.s3.models import s3_backends

    return next(b for account in s3_backends.values() for b in account.values() if bucket in b.buckets)


def test_listing_paginates_over_1000_keys(s3_client, bucket):
    store = server_store(bucket)  # 1 105 objects put straight into the server's store: as many PUTs over HTTP took 10-20 s
    for i in range(1105):
        store.put_object(bucket, f"arch/c/{i:05d}.jpg", b"x")
    s3_client.put_object(Bucket=bucket, Key="arch/c/", Body=b"")  # folder marker: skipped
    s3_client.put_object(Bucket=bucket, Key="archive2/not-me.jpg", Body=b"x")  # sibling prefix: not listed
    objs = list(list_prefix(parse_uri(f"s3://{bucket}/arch"), "", s3_client))
    assert len(objs) == 1105
    assert objs[0].rel_key == "c/00000.jpg" and objs[0].etag and objs[0].size == 1


def test_conditional_read_detects_replaced_object(s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="k.jpg", Body=b"one")
    (obj,) = list(list_prefix(parse_uri(f"s3://{bucket}"), "", s3_client))
    assert read_object(obj.uri, client=s3_client, etag=obj.etag) == b"one"
    s3_client.put_object(Bucket=bucket, Key="k.jpg", Body=b"two")
    with pytest.raises(Exception, match="PreconditionFailed|412"):
        read_object(obj.uri, client=s3_client, etag=obj.etag)


def test_endpoint_from_standard_env_variable(s3_endpoint, bucket):
    client = make_s3_client(StorageConf())  # no endpoint in conf: AWS_ENDPOINT_URL_S3 is used
    assert client.meta.endpoint_url == s3_endpoint
    check_readable(parse_uri(f"s3://{bucket}/x"), client)


def test_missing_bucket_names_bucket_and_endpoint(s3_client, s3_endpoint):
    with pytest.raises(StorageError) as info:
        check_readable(parse_uri("s3://no-such-bucket-here/x"), s3_client)
    assert "no-such-bucket-here" in str(info.value) and s3_endpoint in str(info.value)


def test_wrong_endpoint_fails_fast_naming_it():
    url = f"http://127.0.0.1:{free_port()}"
    client = make_s3_client(StorageConf(endpoint_url=url, max_attempts=1, connect_timeout=1))
    with pytest.raises(StorageError, match="cannot reach the S3 endpoint") as info:
        check_readable(parse_uri("s3://some-bucket/x"), client)
    assert url in str(info.value)


def test_missing_credentials(monkeypatch, s3_endpoint, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    client = make_s3_client(StorageConf(endpoint_url=s3_endpoint, max_attempts=1))
    with pytest.raises(StorageError, match="no AWS credentials"):
        check_readable(parse_uri("s3://any-bucket/x"), client)


def test_cli_exits_3_when_bucket_missing(s3_endpoint, tmp_path, capsys):
    code = main(["featurize", "--input", "s3://absent-bucket/p", "--output", str(tmp_path / "f"), "--set", "featurizer.weights=random"], spark=object())
    assert code == 3
    assert "absent-bucket" in capsys.readouterr().err


def test_local_folder_missing(tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        check_readable(parse_uri(str(tmp_path / "nope")))
