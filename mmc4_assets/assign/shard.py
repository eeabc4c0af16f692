"""assignments rows: each clip_scores document with its images placed on sentences."""

from __future__ import annotations

import numpy as np
import polars as pl

from mmc4_assets.assign.linear import assign_images
from mmc4_assets.stats import StepStats

ASSIGNED_IMAGE = pl.Struct({"image_index": pl.Int32, "image_name": pl.String, "raw_url": pl.String,
                            "phash": pl.String, "matched_text_index": pl.Int32,
                            "matched_sim": pl.Float32, "surplus": pl.Boolean})
ASSIGNMENTS_SCHEMA = {
    "doc_id": pl.String, "url": pl.String, "text_list": pl.List(pl.String),
    "image_info": pl.List(ASSIGNED_IMAGE), "similarity_matrix": pl.List(pl.List(pl.Float32)),
    "num_candidates": pl.Int32,
}


def assign_document(row: dict, min_sim: float, image_stats: StepStats) -> dict | None:
    """The document with only its kept images (rows of the matrix kept in step), or None."""
    matrix = np.asarray(row["similarity_matrix"], dtype=np.float32).reshape(
        len(row["images"]), len(row["text_list"]))
    result = assign_images(matrix, min_sim=min_sim)
    image_info = []
    for i, im in enumerate(row["images"]):
        if not result.kept[i]:
            image_stats.drop("below_min_similarity")
            continue
        image_stats.keep()
        image_info.append({**im, "matched_text_index": int(result.matched_text_index[i]),
                           "matched_sim": float(result.matched_sim[i]),
                           "surplus": bool(result.surplus[i])})
    if not image_info:
        return None
    return {"doc_id": row["doc_id"], "url": row["url"], "text_list": row["text_list"],
            "image_info": image_info, "similarity_matrix": matrix[result.kept].tolist(),
            "num_candidates": len(row["images"])}
