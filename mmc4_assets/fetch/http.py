"""HTTP download layer for the ``fetched_images`` stage: the entry points.

Downloads every candidate image URL of a shard and returns raw bytes plus a
stable status string; decoding/resizing happens elsewhere. Split along its seams:

* :mod:`mmc4_assets.fetch.guard`: the address (SSRF) policy and the guarded resolver;
* :mod:`mmc4_assets.fetch.politeness`: X-Robots-Tag opt-outs and per-host limits;
* :mod:`mmc4_assets.fetch.client`: settings, statuses, the :class:`Fetcher` (session,
  redirects, retries, bounded body reads);
* here: the sync/async/streaming entry points. The public names of the three modules
  are re-exported so ``from mmc4_assets.fetch.http import ...`` keeps working.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from mmc4_assets.fetch.client import (
    BLOCKED_ADDRESS,
    CONNECTION_ERROR,
    DNS_ERROR,
    EMPTY_BODY,
    INVALID_URL,
    NOT_AN_IMAGE,
    OK,
    OPTED_OUT,
    TIMEOUT,
    TOO_LARGE,
    TOO_MANY_REDIRECTS,
    Fetcher,
    FetchResult,
    FetchSettings,
    ResultCallback,
    http_status_name,
    is_image_content_type,
    media_type,
    parse_http_url,
    parse_retry_after,
    rewrite_url,
)
from mmc4_assets.fetch.guard import (
    BlockedAddressError,
    DnsTimeoutError,
    GuardedResolver,
    filter_resolved,
    is_blocked_address,
    is_blocked_host,
    is_local_hostname,
    literal_ip,
)
from mmc4_assets.fetch.politeness import HostLimiter, is_opted_out, user_agent_token

__all__ = [
    "BLOCKED_ADDRESS",
    "CONNECTION_ERROR",
    "DNS_ERROR",
    "EMPTY_BODY",
    "INVALID_URL",
    "NOT_AN_IMAGE",
    "OK",
    "OPTED_OUT",
    "TIMEOUT",
    "TOO_LARGE",
    "TOO_MANY_REDIRECTS",
    "BlockedAddressError",
    "DnsTimeoutError",
    "FetchResult",
    "FetchSettings",
    "Fetcher",
    "GuardedResolver",
    "HostLimiter",
    "ResultCallback",
    "fetch_all",
    "fetch_many",
    "filter_resolved",
    "http_status_name",
    "is_blocked_address",
    "is_blocked_host",
    "is_image_content_type",
    "is_local_hostname",
    "is_opted_out",
    "iter_fetch",
    "literal_ip",
    "media_type",
    "parse_http_url",
    "parse_retry_after",
    "rewrite_url",
    "user_agent_token",
]


async def fetch_many(
    urls: Sequence[str],
    settings: FetchSettings = FetchSettings(),
    on_result: ResultCallback | None = None,
) -> list[FetchResult]:
    """Async core: results in input order; ``on_result(index, result)`` as each lands."""
    fetcher = Fetcher(settings)
    await fetcher.open()
    try:
        return await fetcher.fetch(urls, on_result)
    finally:
        await fetcher.close()


def fetch_all(
    urls: Sequence[str],
    settings: FetchSettings = FetchSettings(),
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[FetchResult]:
    """Sync entry point: runs an event loop, returns results in the same order as urls.

    ``on_progress(done, total)`` is called after each URL completes.
    """
    urls = list(urls)
    total = len(urls)
    done = 0

    def progress(_index: int, _result: FetchResult) -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(done, total)

    return _run_sync(fetch_many(urls, settings, on_result=progress))


def iter_fetch(
    urls_iter: Iterable[str],
    settings: FetchSettings = FetchSettings(),
    batch_size: int = 1024,
) -> Iterator[FetchResult]:
    """Stream results in input order with memory bounded by ``batch_size``.

    One event loop and session live across batches so connections and the
    DNS cache are reused; each batch finishes before the next starts.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    with asyncio.Runner() as runner:
        fetcher = Fetcher(settings)
        runner.run(fetcher.open())
        try:
            for batch in _batched(urls_iter, batch_size):
                yield from runner.run(fetcher.fetch(batch, None))
        finally:
            runner.run(fetcher.close())


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _run_sync(coro: Any) -> Any:
    """asyncio.run, or on a helper thread when the caller already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
