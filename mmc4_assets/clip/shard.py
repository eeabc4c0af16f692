"""clip_scores rows for a batch of documents: the images x sentences similarity per doc."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import polars as pl

from mmc4_assets.clip.encoder import ClipEncoder
from mmc4_assets.clip.scoring import DocImages, score_documents
from mmc4_assets.stats import StepStats

IMAGE_STRUCT = pl.Struct({"image_index": pl.Int32, "image_name": pl.String,
                          "raw_url": pl.String, "phash": pl.String})
CLIP_SCORES_SCHEMA = {
    "doc_id": pl.String, "url": pl.String, "text_list": pl.List(pl.String),
    "images": pl.List(IMAGE_STRUCT), "similarity_matrix": pl.List(pl.List(pl.Float32)),
}


def features_schema(dim: int) -> dict:
    return {"image_name": pl.String, "embedding": pl.Array(pl.Float32, dim)}


def score_batch(docs: Sequence[dict], images_by_doc: dict[str, list[dict]], encoder: ClipEncoder,
                load_image: Callable[[str], bytes], stats: StepStats,
                seen_features: set[str]) -> tuple[list[dict], list[dict]]:
    """Score documents that kept at least one image; returns (rows, new feature rows)."""
    scored, inputs = [], []
    for doc in docs:
        images = images_by_doc.get(doc["doc_id"], [])
        if not images:
            stats.drop("no_images_fetched")
            continue
        scored.append((doc, images))
        inputs.append(DocImages(doc["doc_id"], doc["text_list"], [im["image_name"] for im in images]))
    if not inputs:
        return [], []
    batch = score_documents(inputs, encoder, load_image)
    rows = []
    for (doc, images), matrix in zip(scored, batch.similarity_matrices):
        stats.keep()
        rows.append({"doc_id": doc["doc_id"], "url": doc["url"], "text_list": doc["text_list"],
                     "images": [{k: im[k] for k in ("image_index", "image_name", "raw_url", "phash")}
                                for im in images],
                     "similarity_matrix": matrix.tolist()})
    features = []
    for name, vec in zip(batch.image_names, batch.image_features):
        if name not in seen_features:  # the same image in many docs is stored once
            seen_features.add(name)
            features.append({"image_name": name, "embedding": vec})
    return rows, features
