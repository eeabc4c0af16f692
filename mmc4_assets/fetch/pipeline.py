"""Download, decode and store candidate images as one overlapped stream.

The event loop runs on its own thread and only does network work; each body goes to a
worker pool (decode, validate, resize, pHash, store) the moment it arrives, and the
caller's thread receives finished rows in input order. Bounds:

* at most ``settings.concurrency`` bodies in memory: a download keeps its global slot
  until its body has been decoded, so a busy pool slows downloads instead of queueing
  bodies (:meth:`mmc4_assets.fetch.client.Fetcher.fetch_url`);
* at most ``window`` candidates admitted ahead of the oldest unfinished one, whose
  finished rows (small dicts, no pixels) wait to be emitted in order.

One slow URL at the head of the window holds back output, not downloads, until the
window fills: with the default 4096 that takes thousands of completions.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import polars as pl

from mmc4_assets.fetch.client import OK, Fetcher, FetchResult, FetchSettings
from mmc4_assets.fetch.images import ImageLimits, ProcessedImage, process_image

FETCHED_SCHEMA = {
    "doc_id": pl.String,
    "image_index": pl.Int32,
    "raw_url": pl.String,
    "status": pl.String,
    "http_status": pl.Int32,
    "image_name": pl.String,
    "phash": pl.String,
    "width": pl.Int32,
    "height": pl.Int32,
    "orig_width": pl.Int32,
    "orig_height": pl.Int32,
    "bytes": pl.Int64,
    "attempts": pl.Int32,
    "fetch_ms": pl.Float64,
}
_PAYLOAD_FIELDS = tuple(k for k in FETCHED_SCHEMA if k not in ("doc_id", "image_index", "raw_url"))
_RECENT_URLS = 4096  # finished URLs remembered for in-shard duplicates


@dataclass(frozen=True)
class Candidate:
    doc_id: str
    image_index: int
    raw_url: str
    prior: dict | None = None  # a logged row to reuse if it is still valid


@dataclass(frozen=True)
class Outcome:
    row: dict  # one FETCHED_SCHEMA row
    reused: bool  # True when it came from the fetch log without any request


def payload(result: FetchResult, image: ProcessedImage | None, status: str) -> dict:
    """The row fields that depend on the URL only (not on which document holds it)."""
    return {
        "status": status,
        "http_status": result.http_status,
        "image_name": image.image_name if image else None,
        "phash": image.phash if image else None,
        "width": image.width if image else None,
        "height": image.height if image else None,
        "orig_width": image.orig_width if image else None,
        "orig_height": image.orig_height if image else None,
        "bytes": len(image.data) if image else None,
        "attempts": result.attempts,
        "fetch_ms": result.elapsed_ms,
    }


def _row(cand: Candidate, fields: dict) -> dict:
    return {
        "doc_id": cand.doc_id,
        "image_index": cand.image_index,
        "raw_url": cand.raw_url,
        **{k: fields.get(k) for k in _PAYLOAD_FIELDS},
    }


def _new_loop() -> asyncio.AbstractEventLoop:
    # The loop thread uses ~1.5 ms of CPU per image (benchmark); uvloop made no
    # measurable difference, so the standard loop it is.
    return asyncio.new_event_loop()


class FetchPipeline:
    """Context manager; :meth:`run` turns candidates into rows, in order.

    ``put_blob(digest, data)`` stores a processed image (called on a worker thread);
    ``blob_exists(image_name)`` says whether a logged image is still stored;
    ``on_fetched(row)`` sees every row that cost a request, as soon as it is final
    (on the event-loop thread: keep it cheap and thread-safe).
    """

    def __init__(
        self,
        settings: FetchSettings,
        limits: ImageLimits,
        put_blob: Callable[[str, bytes], Any],
        blob_exists: Callable[[str], bool] = lambda name: False,
        *,
        workers: int = 2,
        window: int = 4096,
        dns_threads: int = 32,
        on_fetched: Callable[[dict], None] | None = None,
    ) -> None:
        if workers < 1 or window < 1:
            raise ValueError("workers and window must be >= 1")
        self.settings, self.limits = settings, limits
        self._put_blob, self._blob_exists, self._on_fetched = put_blob, blob_exists, on_fetched
        self._workers, self._window, self._dns_threads = workers, window, dns_threads
        self._inflight: dict[str, asyncio.Future] = {}
        self._recent: OrderedDict[str, dict] = OrderedDict()

    # -- lifecycle (caller's thread) ----------------------------------------------------
    def __enter__(self) -> FetchPipeline:
        # Everything alive now (modules, Dagster, polars, config) outlives the shard; the
        # shard allocates a few small objects per image, and each full collection would walk
        # the lot (6 % of a benchmark run's samples were the collector). Frozen objects are skipped.
        gc.freeze()
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="mmc4-decode")
        self._loop = _new_loop()
        # getaddrinfo runs in the loop's default executor: give lookups their own threads
        # so a few stalled names cannot queue every other lookup behind them.
        self._dns_pool = ThreadPoolExecutor(self._dns_threads, thread_name_prefix="mmc4-dns")
        self._loop.set_default_executor(self._dns_pool)
        self._thread = threading.Thread(target=self._loop.run_forever, name="mmc4-fetch-loop", daemon=True)
        self._thread.start()
        self._fetcher: Fetcher | None = None
        try:
            self._fetcher = self._call(self._open())
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._fetcher is not None:
                self._call(self._close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self._loop.close()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._dns_pool.shutdown(wait=False, cancel_futures=True)  # a stuck lookup may linger
            gc.unfreeze()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _open(self) -> Fetcher:
        fetcher = Fetcher(self.settings)
        await fetcher.open()
        return fetcher

    async def _close(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._fetcher.close()

    # -- the stream (caller's thread) ---------------------------------------------------
    def run(self, candidates: Iterable[Candidate]) -> Iterator[Outcome]:
        """One :class:`Outcome` per candidate, in input order."""
        pending: deque[tuple[Candidate, Future]] = deque()
        for cand in candidates:
            pending.append((cand, asyncio.run_coroutine_threadsafe(self._one(cand), self._loop)))
            # emit whatever is finished at the head; block only when the window is full
            while pending and (len(pending) >= self._window or pending[0][1].done()):
                yield pending.popleft()[1].result()
        while pending:
            yield pending.popleft()[1].result()

    # -- per candidate (event-loop thread) ----------------------------------------------
    async def _one(self, cand: Candidate) -> Outcome:
        prior = cand.prior
        if prior is not None and (prior["status"] != OK or await self._in_pool(self._blob_exists, prior["image_name"])):
            return Outcome(_row(cand, prior), reused=True)
        url = cand.raw_url
        if not isinstance(url, str):
            fields = await self._fetcher.fetch_url(url, then=self._process)
        elif url in self._recent:
            fields = self._recent[url]
        elif url in self._inflight:  # the same URL twice in a window: one request
            fields = await asyncio.shield(self._inflight[url])
        else:
            fields = await self._fetch_shared(url)
        row = _row(cand, fields)
        if self._on_fetched is not None:
            self._on_fetched(row)
        return Outcome(row, reused=False)

    async def _fetch_shared(self, url: str) -> dict:
        shared = asyncio.get_running_loop().create_future()
        self._inflight[url] = shared
        try:
            fields = await self._fetcher.fetch_url(url, then=self._process)
        except asyncio.CancelledError:
            shared.cancel()
            raise
        except BaseException as exc:
            shared.set_exception(exc)
            shared.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            del self._inflight[url]
        shared.set_result(fields)
        self._recent[url] = fields
        if len(self._recent) > _RECENT_URLS:
            self._recent.popitem(last=False)
        return fields

    async def _process(self, result: FetchResult) -> dict:
        if not result.ok or result.body is None:
            return payload(result, None, result.status)
        image, status = await self._in_pool(self._decode_and_store, result.body)
        return payload(result, image, status)

    def _decode_and_store(self, body: bytes) -> tuple[ProcessedImage | None, str]:
        """Worker thread: Pillow releases the GIL while it decodes, resizes and encodes."""
        image, status = process_image(body, self.limits)
        if image is not None:
            self._put_blob(image.sha256, image.data)  # before the row exists anywhere
        return image, status

    async def _in_pool(self, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
