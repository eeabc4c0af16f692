"""Page recovery for one C4 shard: which pages it needs, and those found through Common Crawl.

raw_c4 first takes pages from the shard's ``shard_pages`` table (or the archives); pages still
missing are looked up in Common Crawl's CDX index here, and every answer (found or not) is
cached per shard so a retried run does not ask again for what was answered.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import polars as pl

from mmc4_assets.pages.archives import PageRecord, normalize_url
from mmc4_assets.pages.cc_index import CommonCrawlPages, CommonCrawlSettings, Lookup
from mmc4_assets.stats import StepStats

# Common Crawl answers per shard: the capture each page came from (provenance), and a cache
# so a retried run does not ask the index again for what it already answered
CC_PAGES_TABLE = "raw_c4_cc_pages"
CC_PAGES_SCHEMA = {
    "url_key": pl.String,
    "collection": pl.String,
    "capture_url": pl.String,
    "capture_timestamp": pl.String,
    "filename": pl.String,
    "offset": pl.Int64,
    "length": pl.Int64,
    "page_url": pl.String,
    "image_urls": pl.List(pl.String),
    "source": pl.String,
}
PROGRESS_SECONDS = 15.0


def wanted_pages(lines: Iterable) -> dict[str, tuple[str, str | None]]:
    """normalized URL -> (URL as in C4, its timestamp), first document of a URL wins."""
    wanted: dict[str, tuple[str, str | None]] = {}
    for line in lines:
        if line.error is None:
            wanted.setdefault(normalize_url(line.doc["url"]), (line.doc["url"], line.doc["timestamp"]))
    return wanted


def common_crawl_pages(
    store,
    shard: str,
    missing: dict[str, tuple[str, str | None]],
    settings: CommonCrawlSettings,
    stats: StepStats,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, PageRecord]:
    """Pages of ``missing`` URLs from Common Crawl, reusing this shard's cached answers."""
    cached: list[Lookup] = []
    if store.has_table(CC_PAGES_TABLE, shard):
        cached = [
            Lookup.from_row(r)
            for r in store.read_table(CC_PAGES_TABLE, shard).iter_rows(named=True)
            if r["url_key"] in missing
        ]
    for hit in cached:
        if hit.page is not None:
            stats.keep()
        else:
            stats.drop("not_in_crawl" if hit.capture is None else "unreadable_record")
    todo = {k: v for k, v in missing.items() if k not in {c.key for c in cached}}
    started, last_log = time.perf_counter(), [time.perf_counter()]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last_log[0] >= PROGRESS_SECONDS:
            last_log[0] = now
            log(f"{shard}: Common Crawl {done}/{total} lookups, {done / max(now - started, 1e-9):.1f}/s")

    answered: list[Lookup] = []
    with CommonCrawlPages(settings) as cc:
        for result in cc.lookup_many(todo, stats, progress):
            if result.error is None:  # failures are asked again by the next run
                answered.append(result)
    lookups = cached + answered
    store.write_table(
        CC_PAGES_TABLE,
        shard,
        pl.DataFrame([r.as_row() for r in sorted(lookups, key=lambda r: r.key)], schema=CC_PAGES_SCHEMA),
    )
    return {r.key: r.page for r in lookups if r.page is not None}
