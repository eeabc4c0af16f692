"""deduped_docs rows: in-document pHash dedup and the URL-duplicate flag."""

from __future__ import annotations

import polars as pl

from mmc4_assets.assign.shard import ASSIGNED_IMAGE
from mmc4_assets.dedup.phash import dedup_in_document
from mmc4_assets.stats import StepStats

DEDUPED_SCHEMA = {
    "doc_id": pl.String, "url": pl.String, "text_list": pl.List(pl.String),
    "image_info": pl.List(ASSIGNED_IMAGE), "similarity_matrix": pl.List(pl.List(pl.Float32)),
    "could_have_url_duplicate": pl.Int8,
}


def dedup_document(row: dict, url_flags: dict[str, int], threshold: int,
                   image_stats: StepStats) -> dict | None:
    """Drop later in-document near-duplicates; None when no image is left.

    Kept images keep their sentence: re-solving the assignment after removing a copy
    could move other images, and MMC4 readers expect a stable placement.
    """
    images = row["image_info"]
    dup_of = dedup_in_document([im["phash"] for im in images], threshold)
    keep = [i for i, d in enumerate(dup_of) if d is None]
    image_stats.keep(len(keep))
    image_stats.drop("phash_duplicate", len(images) - len(keep))
    if not keep:
        return None
    return {"doc_id": row["doc_id"], "url": row["url"], "text_list": row["text_list"],
            "image_info": [images[i] for i in keep],
            "similarity_matrix": [row["similarity_matrix"][i] for i in keep],
            "could_have_url_duplicate": url_flags.get(row["url"], 0)}
