"""s3fs storage options from the settings dagster-aws's ``S3Resource`` holds.

One translation, so the storage root, the source shards and the Common Crawl bucket all
reach S3 the same way (endpoint, region, credentials, retries) whether the settings came
from an ``S3Resource`` or from plain fields. Settings left unset are left out: s3fs and
botocore then use their own chain (``AWS_*`` variables, ``~/.aws``, the ECS task role or
the Kubernetes service account), which is what a production deployment wants.
"""

from __future__ import annotations

from typing import Any


def s3fs_storage_options(
    *,
    endpoint_url: str | None = None,
    region_name: str | None = None,
    aws_access_key_id: str | None = None,
    aws_secret_access_key: str | None = None,
    aws_session_token: str | None = None,
    profile_name: str | None = None,
    use_unsigned_session: bool = False,
    use_ssl: bool = True,
    verify: bool | None = None,
    max_attempts: int | None = None,
    **_ignored: Any,
) -> dict[str, Any]:
    """``storage_options`` for ``UPath("s3://...", **options)`` / ``s3fs.S3FileSystem``."""
    opts: dict[str, Any] = {}
    client: dict[str, Any] = {}
    if endpoint_url:
        opts["endpoint_url"] = endpoint_url
    if region_name:
        client["region_name"] = region_name
    if verify is not None:
        client["verify"] = verify
    if aws_access_key_id:
        opts["key"] = aws_access_key_id
    if aws_secret_access_key:
        opts["secret"] = aws_secret_access_key
    if aws_session_token:
        opts["token"] = aws_session_token
    if profile_name:
        opts["profile"] = profile_name
    if use_unsigned_session:
        opts["anon"] = True
    if not use_ssl:
        opts["use_ssl"] = False
    if max_attempts:
        # botocore's "standard" mode retries throttling (SlowDown) and 5xx with backoff
        opts["config_kwargs"] = {"retries": {"max_attempts": int(max_attempts), "mode": "standard"}}
    if client:
        opts["client_kwargs"] = client
    return opts


def options_for(url: str, s3_options: dict[str, Any] | None) -> dict[str, Any]:
    """The S3 options apply to s3:// URLs only; local paths and https take none."""
    return dict(s3_options or {}) if url.startswith(("s3://", "s3a://")) else {}
