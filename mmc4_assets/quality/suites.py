"""Expectation suites per asset, defined in code, over frames built from the stored tables.

Each ``*_frame`` turns a partition's table(s) into a pandas frame with the columns its
suite reads; each ``*_expectations`` returns GX expectations built from ``Thresholds``.
The frames are plain polars -> pandas; GX is only imported when expectations are built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import polars as pl

from mmc4_assets.dedup.phash import hamming
from mmc4_assets.mmc4_params import AssignSettings, DedupSettings, ImageLimits
from mmc4_assets.publish.mmc4_format import schema_errors


@dataclass(frozen=True)
class Thresholds:
    """Data-quality bounds (``DataQuality`` in the Dagster layer) and the parameters the asset ran with.

    The MMC4 parameters default to mmc4_params.py; a check replaces them with the ones stored
    beside the asset's output (``ShardStore.read_table_params``).
    """

    max_url_filter_drop_share: float = 0.95
    min_fetch_success_rate: float = 0.5
    min_side: int = ImageLimits.min_side
    max_aspect: float = ImageLimits.max_aspect
    max_side: int = ImageLimits.max_side
    min_similarity: float = AssignSettings.min_similarity
    norm_tolerance: float = 1e-3
    phash_threshold: int = DedupSettings.phash_threshold
    # drift (warn-level): a partition this far below the trailing mean of earlier ones
    max_success_rate_drop: float = 0.15
    trailing_partitions: int = 20


def _gx():
    import great_expectations as gx

    return gx.expectations


# -- raw_c4 ------------------------------------------------------------------------------
def raw_c4_frame(docs: pl.DataFrame, url_filter_drop_share: float):
    return docs.select(
        "doc_id",
        "url",
        pl.col("text_list").list.len().alias("n_sentences"),
        pl.col("image_urls").list.len().alias("n_candidates"),
        pl.lit(url_filter_drop_share).alias("url_filter_drop_share"),
    ).to_pandas()


def raw_c4_expectations(t: Thresholds) -> list:
    e = _gx()
    return [
        e.ExpectTableRowCountToBeBetween(min_value=1),
        e.ExpectColumnValuesToNotBeNull(column="url"),
        e.ExpectColumnValuesToNotBeNull(column="doc_id"),
        e.ExpectColumnValuesToBeUnique(column="doc_id"),
        e.ExpectColumnValuesToBeBetween(column="n_sentences", min_value=1),
        e.ExpectColumnValuesToBeBetween(column="n_candidates", min_value=1),
        e.ExpectColumnValuesToBeBetween(
            column="url_filter_drop_share", min_value=0.0, max_value=t.max_url_filter_drop_share
        ),
    ]


# -- fetched_images ------------------------------------------------------------------------
def fetched_images_frame(fetched: pl.DataFrame):
    success = fetched.select((pl.col("status") == "ok").mean()).item() if fetched.height else 0.0
    ok = fetched.filter(pl.col("status") == "ok")
    return ok.select(
        "doc_id",
        "image_index",
        "raw_url",
        "image_name",
        pl.min_horizontal("orig_width", "orig_height").alias("orig_min_side"),
        (pl.col("orig_width") / pl.col("orig_height")).alias("orig_aspect"),
        pl.max_horizontal("width", "height").alias("longer_side"),
        pl.lit(success).alias("success_rate"),
    ).to_pandas()


def fetched_images_expectations(t: Thresholds) -> list:
    e = _gx()
    return [
        e.ExpectTableRowCountToBeBetween(min_value=1),
        e.ExpectColumnValuesToBeBetween(column="success_rate", min_value=t.min_fetch_success_rate),
        e.ExpectColumnValuesToBeBetween(column="orig_min_side", min_value=t.min_side),
        e.ExpectColumnValuesToBeBetween(column="orig_aspect", min_value=1 / t.max_aspect, max_value=t.max_aspect),
        e.ExpectColumnValuesToBeBetween(column="longer_side", max_value=t.max_side),
        e.ExpectColumnValuesToNotBeNull(column="image_name"),
        # exact copies under two URLs are legitimate here; deduped_docs removes them
        e.ExpectCompoundColumnsToBeUnique(column_list=["doc_id", "raw_url"]),
        e.ExpectCompoundColumnsToBeUnique(column_list=["doc_id", "image_index"]),
    ]


# -- clip_scores ---------------------------------------------------------------------------
def clip_scores_frame(scores: pl.DataFrame, features: pl.DataFrame):
    rows = []
    for r in scores.select("doc_id", "text_list", "images", "similarity_matrix").iter_rows(named=True):
        m = np.asarray(r["similarity_matrix"], dtype=np.float64)
        shape = m.shape if m.ndim == 2 else (len(r["similarity_matrix"]), -1)
        rows.append(
            {
                "doc_id": r["doc_id"],
                "n_images": len(r["images"]),
                "n_sentences": len(r["text_list"]),
                "matrix_rows": shape[0],
                "matrix_cols": shape[1],
                "all_finite": bool(np.isfinite(m).all()),
                "min_sim": float(np.nanmin(m)) if m.size else 0.0,
                "max_sim": float(np.nanmax(m)) if m.size else 0.0,
            }
        )
    norm_error = 0.0
    if features.height:
        emb = np.asarray(features["embedding"].to_list(), dtype=np.float64)
        norm_error = float(np.abs(np.linalg.norm(emb, axis=1) - 1).max())
    frame = pl.DataFrame(
        rows,
        schema={
            "doc_id": pl.String,
            "n_images": pl.Int64,
            "n_sentences": pl.Int64,
            "matrix_rows": pl.Int64,
            "matrix_cols": pl.Int64,
            "all_finite": pl.Boolean,
            "min_sim": pl.Float64,
            "max_sim": pl.Float64,
        },
    )
    return frame.with_columns(pl.lit(norm_error).alias("max_embedding_norm_error")).to_pandas()


def clip_scores_expectations(t: Thresholds) -> list:
    e = _gx()
    return [
        e.ExpectColumnPairValuesToBeEqual(column_A="matrix_rows", column_B="n_images"),
        e.ExpectColumnPairValuesToBeEqual(column_A="matrix_cols", column_B="n_sentences"),
        e.ExpectColumnValuesToBeInSet(column="all_finite", value_set=[True]),
        e.ExpectColumnValuesToBeBetween(column="min_sim", min_value=-1.0, max_value=1.0),
        e.ExpectColumnValuesToBeBetween(column="max_sim", min_value=-1.0, max_value=1.0),
        e.ExpectColumnValuesToBeBetween(column="max_embedding_norm_error", max_value=t.norm_tolerance),
    ]


# -- assignments ---------------------------------------------------------------------------
def assignments_frame(assigned: pl.DataFrame):
    frame = (
        assigned.select(
            "doc_id", pl.col("text_list").list.len().alias("n_sentences"), "image_info", "similarity_matrix"
        )
        .explode("image_info", "similarity_matrix")
        .unnest("image_info")
    )
    return frame.select(
        "doc_id",
        "n_sentences",
        "matched_text_index",
        "matched_sim",
        "surplus",
        # MMC4 keeps an image on its best sentence's similarity; the matched pair may be lower
        pl.col("similarity_matrix").list.max().alias("best_sim"),
        # a sentence holds one image, surplus images aside: the non-surplus keys are unique
        pl.when(~pl.col("surplus")).then(pl.format("{}#{}", "doc_id", "matched_text_index")).alias("sentence_key"),
    ).to_pandas()


def assignments_expectations(t: Thresholds) -> list:
    e = _gx()
    return [
        e.ExpectColumnValuesToBeBetween(column="matched_text_index", min_value=0),
        e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="n_sentences", column_B="matched_text_index"),
        e.ExpectColumnValuesToBeBetween(column="best_sim", min_value=t.min_similarity, max_value=1.0),
        e.ExpectColumnValuesToBeBetween(column="matched_sim", min_value=-1.0, max_value=1.0),
        e.ExpectColumnValuesToBeUnique(column="sentence_key"),
    ]


# -- deduped_docs --------------------------------------------------------------------------
def deduped_docs_frame(docs: pl.DataFrame):
    rows = []
    for r in docs.select("doc_id", "image_info").iter_rows(named=True):
        hashes = [im["phash"] for im in r["image_info"]]
        dists = [hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :]]
        rows.append(
            {"doc_id": r["doc_id"], "n_images": len(hashes), "min_phash_distance": min(dists) if dists else None}
        )
    return pl.DataFrame(
        rows, schema={"doc_id": pl.String, "n_images": pl.Int64, "min_phash_distance": pl.Int64}
    ).to_pandas()


def deduped_docs_expectations(t: Thresholds) -> list:
    e = _gx()
    return [
        e.ExpectColumnValuesToBeBetween(column="n_images", min_value=1),
        e.ExpectColumnValuesToBeUnique(column="doc_id"),
        # one-image documents have no pair (null) and are skipped by GX's column-map rules
        e.ExpectColumnValuesToBeBetween(column="min_phash_distance", min_value=t.phash_threshold + 1),
    ]


# -- published_shards ----------------------------------------------------------------------
def published_frame(lines: list[bytes], checksum_ok: bool):
    rows = []
    for line in lines:
        try:
            doc = json.loads(line)
        except ValueError:
            rows.append({"parses": False, "schema_ok": False})
            continue
        rows.append({"parses": True, "schema_ok": not schema_errors(doc)})
    frame = pl.DataFrame(rows, schema={"parses": pl.Boolean, "schema_ok": pl.Boolean})
    return frame.with_columns(pl.lit(checksum_ok).alias("checksum_matches_manifest")).to_pandas()


def published_expectations(t: Thresholds, expected_docs: int) -> list:
    e = _gx()
    return [
        e.ExpectTableRowCountToEqual(value=expected_docs),
        e.ExpectColumnValuesToBeInSet(column="parses", value_set=[True]),
        e.ExpectColumnValuesToBeInSet(column="schema_ok", value_set=[True]),
        e.ExpectColumnValuesToBeInSet(column="checksum_matches_manifest", value_set=[True]),
    ]
