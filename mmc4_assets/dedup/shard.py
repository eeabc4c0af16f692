"""deduped_docs rows: in-document pHash dedup and the URL-duplicate flag."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import polars as pl

from mmc4_assets.assign.resolve import keep_and_reassign
from mmc4_assets.assign.shard import ASSIGNED_IMAGE
from mmc4_assets.dedup.phash import dedup_in_document
from mmc4_assets.mmc4_params import DedupSettings
from mmc4_assets.stats import StepStats

DEDUPED_SCHEMA = {
    "doc_id": pl.String,
    "url": pl.String,
    "text_list": pl.List(pl.String),
    "image_info": pl.List(ASSIGNED_IMAGE),
    "similarity_matrix": pl.List(pl.List(pl.Float32)),
    "could_have_url_duplicate": pl.Int8,
    "assignment": pl.String,
    "min_similarity": pl.Float64,  # as assignments: how images were placed
}


def dedup_document(row: dict, url_flags: dict[str, int], threshold: int, image_stats: StepStats) -> dict | None:
    """Drop later in-document near-duplicates; None when no image is left.

    A document that loses a copy is assigned again over the images it keeps, with its own
    rule (assign/resolve.py): MMC4 deduplicated before assigning, so its assignment is the
    one over exactly these images.
    """
    images = row["image_info"]
    dup_of = dedup_in_document([im["phash"] for im in images], threshold)
    keep = [i for i, d in enumerate(dup_of) if d is None]
    image_stats.keep(len(keep))
    image_stats.drop("phash_duplicate", len(images) - len(keep))
    if not keep:
        return None
    doc = keep_and_reassign(row, keep)
    return {
        "doc_id": row["doc_id"],
        "url": row["url"],
        "text_list": row["text_list"],
        "image_info": doc["image_info"],
        "similarity_matrix": doc["similarity_matrix"],
        "could_have_url_duplicate": url_flags.get(row["url"], 0),
        "assignment": row.get("assignment"),
        "min_similarity": row.get("min_similarity"),
    }


@dataclass
class DedupTotals:
    docs_reassigned: int = 0  # documents that lost a copy and were assigned again over the rest


def dedup_documents(
    batches: Iterable[pl.DataFrame],
    url_flags: dict[str, int],
    settings: DedupSettings,
    docs: StepStats,
    images: StepStats,
    totals: DedupTotals,
) -> Iterator[dict]:
    """The deduped_docs step over assignments batches: surviving documents out, every drop counted."""
    for batch in batches:
        for row in batch.iter_rows(named=True):
            deduped = dedup_document(row, url_flags, settings.phash_threshold, images)
            if deduped is None:
                docs.drop("no_image_after_dedup")
                continue
            docs.keep()
            totals.docs_reassigned += len(deduped["image_info"]) < len(row["image_info"])
            yield deduped
