"""Image fetching.

* :mod:`mmc4_assets.fetch.http`: the download layer (async, SSRF-guarded, polite, bounded),
  built from :mod:`~mmc4_assets.fetch.guard` (address policy), :mod:`~mmc4_assets.fetch.politeness`
  (opt-outs, per-host limits) and :mod:`~mmc4_assets.fetch.client` (the fetcher, retries);
* :mod:`mmc4_assets.fetch.images`: validate, resize, pHash one body;
* :mod:`mmc4_assets.fetch.pipeline`: downloads and decoding overlapped, rows in order;
* :mod:`mmc4_assets.fetch.log`: the per-shard fetch log that makes shards resumable;
* :mod:`mmc4_assets.fetch.shard`: ``fetch_documents``, the shard-level step.

Only the download layer is imported here, so importing it stays light (no polars).
"""

from mmc4_assets.fetch.http import (
    FetchResult,
    FetchSettings,
    fetch_all,
    fetch_many,
    iter_fetch,
)

__all__ = ["FetchResult", "FetchSettings", "fetch_all", "fetch_many", "iter_fetch"]
