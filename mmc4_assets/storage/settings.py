"""The one way to turn settings into a :class:`ShardStore`: a storage root plus S3 options.

The Dagster resources (``defs/resources.py``), the CLI (``mmc4-sample``) and the read API
(``mmc4-api``) all come through here, so they agree on the default root and on how the
``MMC4_S3_*`` settings reach s3fs. No Dagster import: the API runs without it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmc4_assets.storage.s3 import options_for, s3fs_storage_options
from mmc4_assets.storage.store import DEFAULT_TEMP_MAX_AGE, ShardStore

ROOT_ENV = "MMC4_STORAGE_ROOT"
DEFAULT_ROOT = "storage"  # below the working directory
S3_ENV_PREFIX = "MMC4_S3_"
# MMC4_S3_<NAME> -> the dagster-aws S3Resource field it sets (defs/resources.py binds the same
# variables as EnvVars; here they are read directly, for the CLI and the API)
S3_ENV_FIELDS = {
    "ENDPOINT_URL": "endpoint_url",
    "REGION": "region_name",
    "PROFILE": "profile_name",
    "ACCESS_KEY_ID": "aws_access_key_id",
    "SECRET_ACCESS_KEY": "aws_secret_access_key",
    "SESSION_TOKEN": "aws_session_token",
    "MAX_ATTEMPTS": "max_attempts",
}


@dataclass(frozen=True)
class StorageSettings:
    """A resolved storage root and the fsspec options that reach it (empty for local roots)."""

    root: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    temp_max_age: float | None = DEFAULT_TEMP_MAX_AGE  # seconds; temp files of killed writes older are swept

    def store(self) -> ShardStore:
        return ShardStore(self.root, self.storage_options, temp_max_age=self.temp_max_age)


def resolve_root(root: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> str:
    """``root``, else ``$MMC4_STORAGE_ROOT``, else ``./storage``; a local path made absolute."""
    env = os.environ if environ is None else environ
    chosen = str(root) if root else env.get(ROOT_ENV) or DEFAULT_ROOT
    return chosen if "://" in chosen else str(Path(chosen).resolve())


def s3_settings_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``MMC4_S3_*`` variables that are set, as dagster-aws S3 field names and values."""
    env = os.environ if environ is None else environ
    found: dict[str, Any] = {
        name: env[S3_ENV_PREFIX + var] for var, name in S3_ENV_FIELDS.items() if env.get(S3_ENV_PREFIX + var)
    }
    if "max_attempts" in found:
        found["max_attempts"] = int(found["max_attempts"])
    return found


def storage_settings(
    root: str | os.PathLike | None = None,
    *,
    s3: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    temp_max_age: float | None = DEFAULT_TEMP_MAX_AGE,
) -> StorageSettings:
    """Root (see :func:`resolve_root`) and S3 options: from ``s3`` (dagster-aws S3 field names,
    as an ``S3Resource`` holds them) or, when ``s3`` is None, from the ``MMC4_S3_*`` variables."""
    resolved = resolve_root(root, environ)
    fields = s3_settings_from_env(environ) if s3 is None else dict(s3)
    return StorageSettings(resolved, options_for(resolved, s3fs_storage_options(**fields)), temp_max_age)


def open_store(
    root: str | os.PathLike | None = None,
    *,
    s3: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    temp_max_age: float | None = DEFAULT_TEMP_MAX_AGE,
) -> ShardStore:
    """The store for these settings: ``storage_settings(...).store()``."""
    return storage_settings(root, s3=s3, environ=environ, temp_max_age=temp_max_age).store()
