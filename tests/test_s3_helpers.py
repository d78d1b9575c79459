"""The local S3 server helper: boto3, s3fs, obstore and subprocesses reach it through env vars."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request

import boto3
import helpers.s3 as s3_helpers
import obstore
import pytest
import s3fs
from helpers.s3 import moto_s3
from obstore.store import S3Store

# fixtures
s3_server = s3_helpers.s3_server
s3_bucket = s3_helpers.s3_bucket


def _key(url: str) -> tuple[str, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key


def test_clients_reach_the_server_through_env_alone(s3_bucket):
    assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    bucket, _ = _key(s3_bucket)

    boto3.client("s3").put_object(Bucket=bucket, Key="a/boto3.txt", Body=b"from boto3")

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    with fs.open(f"{bucket}/a/s3fs.txt", "wb") as fh:
        fh.write(b"from s3fs")

    store = S3Store.from_url(s3_bucket)
    obstore.put(store, "a/obstore.txt", b"from obstore")

    # every client reads what the others wrote
    listed = sorted(m["path"] for m in obstore.list(store, prefix="a").collect())
    assert listed == ["a/boto3.txt", "a/obstore.txt", "a/s3fs.txt"]
    assert bytes(obstore.get(store, "a/s3fs.txt").bytes()) == b"from s3fs"
    assert fs.cat(f"{bucket}/a/obstore.txt") == b"from obstore"
    body = boto3.client("s3").get_object(Bucket=bucket, Key="a/s3fs.txt")["Body"].read()
    assert body == b"from s3fs"


def test_subprocesses_inherit_the_endpoint(s3_bucket):
    bucket, _ = _key(s3_bucket)
    boto3.client("s3").put_object(Bucket=bucket, Key="x.bin", Body=b"payload")
    code = (
        "import sys, boto3; "
        f"sys.stdout.write(boto3.client('s3').get_object(Bucket={bucket!r}, Key='x.bin')"
        "['Body'].read().decode())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout == "payload"


def test_buckets_are_fresh(s3_server):
    first, second = s3_server.new_bucket(), s3_server.new_bucket()
    assert first != second
    store = S3Store.from_url(second)
    assert obstore.list(store).collect() == []


def test_context_manager_restores_env_and_stops_server(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://unused.invalid")
    monkeypatch.setenv("AWS_PROFILE", "someone")
    with moto_s3() as s3:
        assert os.environ["AWS_ENDPOINT_URL"] == s3.endpoint_url
        assert "AWS_PROFILE" not in os.environ
        s3.new_bucket()
        endpoint = s3.endpoint_url
    assert os.environ["AWS_ENDPOINT_URL"] == "http://unused.invalid"
    assert os.environ["AWS_PROFILE"] == "someone"
    assert s3.process.poll() is not None
    with pytest.raises(OSError):
        urllib.request.urlopen(endpoint, timeout=2)


def test_no_instance_metadata_request_leaves_the_machine(s3_bucket, monkeypatch):
    """Without keys, boto3's credential chain skips the instance-metadata service
    (AWS_EC2_METADATA_DISABLED), and an obstore client's own chain asks it at
    AWS_METADATA_ENDPOINT: a closed loopback port, where it fails at once, never
    169.254.169.254."""
    endpoint = os.environ["AWS_METADATA_ENDPOINT"]
    assert endpoint.startswith("http://127.0.0.1:")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert boto3.Session().get_credentials() is None
    store = S3Store.from_url(s3_bucket, retry_config={"max_retries": 0})
    with pytest.raises(obstore.exceptions.GenericError, match=re.escape(endpoint)):
        obstore.head(store, "anything")
