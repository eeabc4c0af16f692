"""A loopback S3 server (moto) for the S3 tests, and the environment that keeps them off AWS.

Imported by test_s3_*.py / test_cc_*.py / test_storage_*.py; holds no tests itself. Every
client the tests make is pointed at ``127.0.0.1`` explicitly *and* through
``AWS_ENDPOINT_URL``, with dummy credentials, so nothing can reach real AWS.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import pytest

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/mmc4-tests/credentials",
    "AWS_CONFIG_FILE": "/nonexistent/mmc4-tests/config",
    "AWS_EC2_METADATA_DISABLED": "true",
}
UNSET = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


@dataclass
class LoopbackS3:
    endpoint: str

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def storage_options(self) -> dict:
        return {
            "endpoint_url": self.endpoint,
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"region_name": "us-east-1"},
        }

    def s3_resource(self):
        from dagster_aws.s3 import S3Resource

        return S3Resource(
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@contextlib.contextmanager
def loopback_s3() -> Iterator[LoopbackS3]:
    """moto's S3 on 127.0.0.1 (a free port), with AWS_* pointing at it; all undone after."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    assert host == "127.0.0.1"
    with pytest.MonkeyPatch.context() as mp:
        for var in UNSET:
            mp.delenv(var, raising=False)
        for var, value in {**AWS_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
            mp.setenv(var, value)
        try:
            yield LoopbackS3(endpoint)
        finally:
            server.stop()
            _forget_s3fs_instances()


def _forget_s3fs_instances() -> None:
    """fsspec caches filesystems per options; a later server on another port needs fresh ones."""
    try:
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
    except ImportError:
        pass


@pytest.fixture(scope="module")
def s3_server() -> Iterator[LoopbackS3]:
    with loopback_s3() as s3:
        yield s3


def upload_sample_source(s3: LoopbackS3, bucket: str) -> tuple[str, list[str]]:
    """The bundled sample shard and page archives under s3://bucket/source/; (shards_root, archives glob)."""
    from mmc4_assets.sample.server import sample_page_archives, sample_shard_path

    client = s3.client()
    shard = sample_shard_path()
    client.upload_file(str(shard), bucket, f"source/c4/{shard.name}")
    for path in sample_page_archives():
        client.upload_file(str(path), bucket, f"source/pages/{path.name}")
    return f"s3://{bucket}/source/c4", [f"s3://{bucket}/source/pages/*.gz"]
