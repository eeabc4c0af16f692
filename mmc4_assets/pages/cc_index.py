"""Common Crawl as a page source: CDX index lookup by URL, then a byte-range read.

C4 keeps no HTML. MMC4 went back to Common Crawl for each document's page; so can we:

1. ask the CC index (the pywb CDX API of index.commoncrawl.org,
   ``GET {index}/{collection}-index?url=...&output=json``; one JSON object per line with
   ``url, timestamp, filename, offset, length, status, mime``) for the captures of the URL;
2. pick the capture closest in time to the C4 document's timestamp among HTML 200s;
3. read ``length`` bytes at ``offset`` of ``filename`` under the crawl root
   (``s3://commoncrawl/`` or ``https://data.commoncrawl.org/``): one gzip member holding
   one WARC record, parsed by the same code as local archives (``archives.iter_page_records``).

The public index addresses WARC files (the HTML itself). WAT files carry no index of their
own; an index whose ``filename`` points at a WAT record works the same, as the record
parser reads both kinds.

Lookups run in a bounded thread pool (``concurrency`` in flight), over one pooled HTTP
client, with retries and backoff on 429/5xx (the public index is often overloaded).
A lookup that fails after its retries is counted (``index_error``/``fetch_error``) and the
document falls to ``no_page_record`` downstream; it is not cached, so a retry of the run
asks again, while found and not-found answers are kept in the per-shard cache table.
"""

from __future__ import annotations

import io
import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlencode

import urllib3
from upath import UPath

from mmc4_assets.pages.archives import PageRecord, iter_page_records
from mmc4_assets.stats import StepStats

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# what one capture may cost us: CC's WARC records are a few hundred KB at most
MAX_RECORD_BYTES = 16 * 1024 * 1024
# captures read per URL before giving up: the best one may be a record without a page
MAX_CAPTURES_TRIED = 3
_RETRY_STATUS = {429, 500, 502, 503, 504}


@dataclass(frozen=True)
class CommonCrawlSettings:
    index_url: str
    collections: tuple[str, ...]
    archive_root: str
    storage_options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    concurrency: int = 16
    timeout: float = 30.0
    retries: int = 4
    user_agent: str = "mmc4-assets"
    backoff: float = 1.0  # seconds, doubled per retry, with jitter


@dataclass(frozen=True)
class Capture:
    """One line of the CDX JSON answer."""

    url: str
    timestamp: str  # 14 digits, YYYYMMDDhhmmss
    filename: str
    offset: int
    length: int
    status: str
    mime: str

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Capture:
        return cls(
            url=str(obj["url"]),
            timestamp=str(obj.get("timestamp", "")),
            filename=str(obj["filename"]),
            offset=int(obj["offset"]),
            length=int(obj["length"]),
            status=str(obj.get("status", "")),
            mime=str(obj.get("mime", obj.get("mime-detected", ""))),
        )


class CommonCrawlError(Exception):
    """A lookup or read that failed after its retries; ``reason`` is a stable label."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def cdx_timestamp(c4_timestamp: str | None) -> str | None:
    """``2019-04-25T12:57:54Z`` -> ``20190425125754`` (what ``closest=`` takes)."""
    if not c4_timestamp:
        return None
    digits = "".join(ch for ch in c4_timestamp if ch.isdigit())[:14]
    return digits if len(digits) >= 8 else None


def _as_number(timestamp: str) -> int:
    digits = "".join(ch for ch in timestamp if ch.isdigit())[:14]
    return int(digits.ljust(14, "0")) if digits else 0


def rank_captures(captures: Iterable[Capture], timestamp: str | None) -> list[Capture]:
    """HTML 200 captures, closest in time to ``timestamp`` first; the index's order breaks ties."""
    usable = [c for c in captures if c.status == "200" and ("html" in c.mime.lower() or not c.mime)]
    if not timestamp:
        return usable
    target = _as_number(timestamp)
    return sorted(usable, key=lambda c: abs(_as_number(c.timestamp) - target))


def choose_capture(captures: Iterable[Capture], timestamp: str | None) -> Capture | None:
    ranked = rank_captures(captures, timestamp)
    return ranked[0] if ranked else None


class CdxClient:
    """The CDX JSON API over one pooled, thread-safe urllib3 client."""

    def __init__(self, settings: CommonCrawlSettings):
        self.settings = settings
        self._http = urllib3.PoolManager(
            maxsize=max(1, settings.concurrency),
            block=True,
            timeout=urllib3.Timeout(connect=min(10.0, settings.timeout), read=settings.timeout),
            retries=False,
            headers={"User-Agent": settings.user_agent},
        )

    def captures(self, url: str, collection: str, timestamp: str | None = None) -> list[Capture]:
        params = {"url": url, "output": "json"}
        if timestamp:
            params.update(closest=timestamp, sort="closest", limit="20")
        endpoint = f"{self.settings.index_url.rstrip('/')}/{collection}-index?{urlencode(params)}"
        resp = _with_retries(lambda: self._get(endpoint), self.settings)
        if resp.status == 404:  # pywb: "No Captures found for: ..."
            return []
        if resp.status != 200:
            raise CommonCrawlError("index_error", f"HTTP {resp.status}")
        out = []
        for line in resp.data.splitlines():
            if line.strip():
                try:
                    out.append(Capture.from_json(json.loads(line)))
                except (ValueError, KeyError, TypeError):
                    log.warning("unreadable CDX line for %s: %r", url, line[:200])
        return out

    def _get(self, endpoint: str) -> urllib3.BaseHTTPResponse:
        try:
            resp = self._http.request("GET", endpoint, preload_content=True)
        except urllib3.exceptions.HTTPError as exc:
            raise _Retryable("index_error", type(exc).__name__) from exc
        if resp.status in _RETRY_STATUS:
            raise _Retryable("index_error", f"HTTP {resp.status}")
        return resp

    def close(self) -> None:
        self._http.clear()


class _Retryable(CommonCrawlError):
    pass


def _with_retries(fn: Callable[[], T], settings: CommonCrawlSettings) -> T:
    for attempt in range(settings.retries + 1):
        try:
            return fn()
        except _Retryable as exc:
            if attempt == settings.retries:
                raise CommonCrawlError(exc.reason, str(exc)) from exc
            time.sleep(settings.backoff * (2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


class RecordReader:
    """Byte-range reads of archive records under the crawl root (s3://, https://, a path)."""

    def __init__(self, settings: CommonCrawlSettings):
        root = UPath(settings.archive_root, **settings.storage_options)
        self._fs, self._root = root.fs, root.path.rstrip("/")
        self._settings = settings

    def read(self, capture: Capture) -> bytes:
        if capture.length <= 0 or capture.length > MAX_RECORD_BYTES or capture.offset < 0:
            raise CommonCrawlError("bad_capture", f"{capture.offset}+{capture.length}")
        name = capture.filename.lstrip("/")
        if ".." in name.split("/"):
            raise CommonCrawlError("bad_capture", name)
        path = f"{self._root}/{name}" if self._root else name

        def ranged() -> bytes:
            try:  # one ranged GET: bytes=offset-(offset+length-1)
                return self._fs.cat_file(path, start=capture.offset, end=capture.offset + capture.length)
            except FileNotFoundError as exc:
                raise CommonCrawlError("fetch_error", f"missing {name}") from exc
            except Exception as exc:  # s3fs raises OSErrors, fsspec's http aiohttp errors
                raise _Retryable("fetch_error", type(exc).__name__) from exc

        data = _with_retries(ranged, self._settings)
        if len(data) != capture.length:
            raise CommonCrawlError("fetch_error", f"short read {len(data)}/{capture.length}")
        return data


def page_from_record(data: bytes, source_name: str) -> PageRecord | None:
    """The page of one archive record (WARC response or WAT metadata); None if it holds none."""
    try:
        for page in iter_page_records(io.BytesIO(data), source_name):
            return page
    except Exception as exc:  # a corrupt gzip member or header: this capture only, not the shard
        log.warning("unreadable record in %s: %s", source_name, exc)
    return None


@dataclass(frozen=True)
class Lookup:
    """What the index said about one wanted URL: a capture and its page, none, or an error."""

    key: str  # normalized C4 URL
    collection: str | None = None
    capture: Capture | None = None
    page: PageRecord | None = None
    error: str | None = None  # stable reason when the lookup failed (not cached)

    def as_row(self) -> dict[str, Any]:
        c = self.capture
        return {
            "url_key": self.key,
            "collection": self.collection,
            "capture_url": c.url if c else None,
            "capture_timestamp": c.timestamp if c else None,
            "filename": c.filename if c else None,
            "offset": c.offset if c else None,
            "length": c.length if c else None,
            "page_url": self.page.url if self.page else None,
            "image_urls": list(self.page.image_urls) if self.page else None,
            "source": self.page.source if self.page else None,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Lookup:
        page = None
        if row.get("page_url") is not None:
            page = PageRecord(row["page_url"], tuple(row["image_urls"] or ()), row["source"])
        capture = None
        if row.get("filename") is not None:
            capture = Capture(
                row["capture_url"],
                row["capture_timestamp"] or "",
                row["filename"],
                int(row["offset"]),
                int(row["length"]),
                "200",
                "",
            )
        return cls(row["url_key"], row.get("collection"), capture, page)


CACHE_SCHEMA_FIELDS = (
    "url_key",
    "collection",
    "capture_url",
    "capture_timestamp",
    "filename",
    "offset",
    "length",
    "page_url",
    "image_urls",
    "source",
)


class CommonCrawlPages:
    """Find the pages of many URLs in Common Crawl, ``concurrency`` lookups at a time."""

    def __init__(self, settings: CommonCrawlSettings):
        self.settings = settings
        self.index = CdxClient(settings)
        self.reader = RecordReader(settings)

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> CommonCrawlPages:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lookup(self, key: str, url: str, c4_timestamp: str | None) -> Lookup:
        """The page of one URL: index lookup per collection in order, then one range read."""
        timestamp = cdx_timestamp(c4_timestamp)
        unreadable: Lookup | None = None
        try:
            for collection in self.settings.collections:
                ranked = rank_captures(self.index.captures(url, collection, timestamp), timestamp)
                for capture in ranked[:MAX_CAPTURES_TRIED]:
                    page = page_from_record(self.reader.read(capture), capture.filename)
                    if page is not None:
                        return Lookup(key, collection, capture, page)
                    unreadable = unreadable or Lookup(key, collection, capture)
            return unreadable or Lookup(key)
        except CommonCrawlError as exc:
            log.debug("common crawl lookup of %s failed: %s", url, exc)
            return Lookup(key, error=exc.reason)

    def lookup_many(
        self,
        wanted: Mapping[str, tuple[str, str | None]],
        stats: StepStats,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> Iterator[Lookup]:
        """Lookups of ``{key: (url, c4_timestamp)}``; counts ``found``/``not_found``/errors."""
        items = list(wanted.items())
        for done, result in enumerate(
            bounded_map(lambda kv: self.lookup(kv[0], *kv[1]), items, self.settings.concurrency), start=1
        ):
            if result.error:
                stats.drop(result.error)
            elif result.page is None:
                stats.drop("not_in_crawl" if result.capture is None else "unreadable_record")
            else:
                stats.keep()
            if on_progress is not None:
                on_progress(done, len(items))
            yield result


def bounded_map(fn: Callable[[T], R], items: Iterable[T], concurrency: int) -> Iterator[R]:
    """``fn`` over ``items`` in a thread pool with at most ``concurrency`` calls in flight.

    Results come in completion order; memory holds ``concurrency`` futures, not one per item.
    """
    concurrency = max(1, concurrency)
    it = iter(items)
    with ThreadPoolExecutor(concurrency, thread_name_prefix="cc-lookup") as pool:
        pending: set[Future] = set()

        def refill() -> None:
            while len(pending) < concurrency:
                try:
                    item = next(it)
                except StopIteration:
                    return
                pending.add(pool.submit(fn, item))

        refill()
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                pending.discard(fut)
            refill()
            for fut in finished:
                yield fut.result()
