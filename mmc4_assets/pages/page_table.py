"""The two page tables: ``page_records`` (one per archive) and ``shard_pages`` (one per C4 shard).

``page_records/{archive}.parquet`` holds what ``raw_c4`` needs of every HTML response or
WAT metadata record of one archive, written while the archive is streamed once.
``shard_pages/{shard}.parquet`` holds, for each URL of one C4 shard, the one capture the
join chose (see ``pages/join.py``): ``raw_c4`` reads it in O(shard).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import BinaryIO

import polars as pl

from mmc4_assets.pages.archives import (
    ArchiveProgress,
    PageRecord,
    iter_page_records,
    normalize_url,
)
from mmc4_assets.stats import StepStats

PAGE_RECORDS_TABLE = "page_records"
SHARD_PAGES_TABLE = "shard_pages"

PAGE_RECORDS_SCHEMA = {
    "url_key": pl.String,  # normalize_url(url): the join key
    "url": pl.String,  # WARC-Target-URI as archived
    "capture_time": pl.Datetime("us", "UTC"),  # WARC-Date
    "status": pl.Int32,  # HTTP status (WAT: Response-Message.Status)
    "mime": pl.String,
    "source": pl.String,  # "warc" | "wat"
    "archive": pl.String,  # archive partition key
    "record_offset": pl.Int64,  # byte offset of the record in its archive
    "image_urls": pl.List(pl.String),  # in document order, resolved against <base href>
    "image_alts": pl.List(pl.String),
    "image_positions": pl.List(pl.Int32),  # index among the page's <img> elements
}
# shard_pages: the chosen capture per (shard, url_key), and the distance that chose it
SHARD_PAGES_SCHEMA = {**PAGE_RECORDS_SCHEMA, "shard": pl.String, "seconds_from_c4": pl.Int64}


def page_row(page: PageRecord, archive: str) -> dict:
    return {
        "url_key": normalize_url(page.url),
        "url": page.url,
        "capture_time": page.capture_time,
        "status": page.status,
        "mime": page.mime,
        "source": page.source,
        "archive": archive,
        "record_offset": page.offset,
        "image_urls": list(page.image_urls),
        "image_alts": list(page.image_alts),
        "image_positions": list(page.image_positions),
    }


def archive_page_rows(
    stream: BinaryIO, archive: str, source_name: str, stats: StepStats, progress: ArchiveProgress
) -> Iterator[dict]:
    """``page_records`` rows of one archive stream; everything else lands in ``stats``."""
    for page in iter_page_records(stream, source_name, stats, progress):
        yield page_row(page, archive)


def pages_from_rows(rows: Iterable[dict]) -> dict[str, PageRecord]:
    """``{url_key: PageRecord}`` from ``shard_pages`` rows (one per key)."""
    out: dict[str, PageRecord] = {}
    for r in rows:
        out[r["url_key"]] = PageRecord(
            r["url"],
            tuple(r["image_urls"] or ()),
            r["source"],
            capture_time=r.get("capture_time"),
            status=r.get("status"),
            mime=r.get("mime"),
            image_alts=tuple(r.get("image_alts") or ()),
            image_positions=tuple(r.get("image_positions") or ()),
            offset=r.get("record_offset"),
        )
    return out


def write_page_records(
    store, archive: str, stream: BinaryIO, source_name: str, stats: StepStats | None = None
) -> tuple[StepStats, ArchiveProgress, int]:
    """Stream one archive once into ``page_records/{archive}.parquet``; (stats, progress, rows).

    The table carries how the read went (records, kept, dropped, the error that ended it) in its
    metadata (``read_table_params``): the completeness check reads it there.
    """
    stats = stats if stats is not None else StepStats()
    progress = ArchiveProgress()
    with store.table_writer(PAGE_RECORDS_TABLE, archive, PAGE_RECORDS_SCHEMA, {}) as out:
        for row in archive_page_rows(stream, archive, source_name, stats, progress):
            out.append(row)
        rows = out.rows + len(out._buffer)
        out.params.update(
            archive=source_name,
            num_records=progress.records,
            records_kept=stats.kept,
            records_dropped=stats.total_dropped,
            archive_error=progress.error or "",
            archive_error_offset=progress.error_offset,
        )
    return stats, progress, rows
