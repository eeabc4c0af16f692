"""Fetch, validate and store every candidate image of a batch of documents."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import polars as pl

from mmc4_assets.fetch.http import FetchResult, FetchSettings, fetch_all
from mmc4_assets.fetch.images import ImageLimits, ProcessedImage, process_image
from mmc4_assets.stats import StepStats

FETCHED_SCHEMA = {
    "doc_id": pl.String, "image_index": pl.Int32, "raw_url": pl.String, "status": pl.String,
    "http_status": pl.Int32, "image_name": pl.String, "phash": pl.String, "width": pl.Int32,
    "height": pl.Int32, "orig_width": pl.Int32, "orig_height": pl.Int32, "bytes": pl.Int64,
    "attempts": pl.Int32, "fetch_ms": pl.Float64,
}


def fetch_documents(docs: Sequence[dict], settings: FetchSettings, limits: ImageLimits,
                    put_blob: Callable[[str, bytes], bool], stats: StepStats,
                    pool: ThreadPoolExecutor,
                    on_progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """One row per candidate (doc_id, image_index), in document order, ok or with a reason.

    ``docs`` carry ``doc_id`` and ``image_urls``. Decoding and resizing run in ``pool`` so
    the download loop is never blocked by CPU work.
    """
    keys = [(d["doc_id"], i, url) for d in docs for i, url in enumerate(d["image_urls"])]
    results = fetch_all([url for _, _, url in keys], settings, on_progress=on_progress)
    processed = list(pool.map(lambda r: _process(r, limits), results))
    rows = []
    for (doc_id, index, url), result, (image, status) in zip(keys, results, processed):
        if image is not None:
            put_blob(image.sha256, image.data)
            stats.keep()
        else:
            stats.drop(status)
        rows.append(_row(doc_id, index, url, result, image, status))
    return rows


def _process(result: FetchResult, limits: ImageLimits) -> tuple[ProcessedImage | None, str]:
    if result.status != "ok" or result.body is None:
        return None, result.status
    return process_image(result.body, limits)


def _row(doc_id: str, index: int, url: str, result: FetchResult, image: ProcessedImage | None,
         status: str) -> dict:
    return {
        "doc_id": doc_id, "image_index": index, "raw_url": url, "status": status,
        "http_status": result.http_status,
        "image_name": image.image_name if image else None,
        "phash": image.phash if image else None,
        "width": image.width if image else None, "height": image.height if image else None,
        "orig_width": image.orig_width if image else None,
        "orig_height": image.orig_height if image else None,
        "bytes": len(image.data) if image else None,
        "attempts": result.attempts, "fetch_ms": result.elapsed_ms,
    }
