"""Image fetching: the HTTP download layer lives in :mod:`mmc4_assets.fetch.http`."""

from mmc4_assets.fetch.http import (
    FetchResult,
    FetchSettings,
    fetch_all,
    fetch_many,
    iter_fetch,
)

__all__ = ["FetchResult", "FetchSettings", "fetch_all", "fetch_many", "iter_fetch"]
