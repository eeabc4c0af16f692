"""assignments rows: each clip_scores document with its images placed on sentences.

``assign_frame`` is what the asset runs: a whole batch of clip_scores rows is parsed
column-wise with pyarrow (one flat float array for every similarity matrix), solved by
:func:`~mmc4_assets.assign.batch.assign_flat`, and the output columns are rebuilt from
offsets, so no document becomes a Python dict. ``assign_document`` is the same rule for
one row as a dict, for tools and tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from mmc4_assets.assign.batch import assign_flat
from mmc4_assets.assign.linear import MMC4, assign_images, check_rule
from mmc4_assets.mmc4_params import AssignSettings
from mmc4_assets.stats import StepStats

ASSIGNED_IMAGE = pl.Struct(
    {
        "image_index": pl.Int32,
        "image_name": pl.String,
        "raw_url": pl.String,
        "phash": pl.String,
        "matched_text_index": pl.Int32,
        "matched_sim": pl.Float32,
        "surplus": pl.Boolean,
    }
)
ASSIGNMENTS_SCHEMA = {
    "doc_id": pl.String,
    "url": pl.String,
    "text_list": pl.List(pl.String),
    "image_info": pl.List(ASSIGNED_IMAGE),
    "similarity_matrix": pl.List(pl.List(pl.Float32)),
    "num_candidates": pl.Int32,
    # the rule and threshold that placed the images, carried with them so that a later step
    # dropping images re-solves the same way (assign/resolve.py) and the publish check knows them
    "assignment": pl.String,
    "min_similarity": pl.Float64,
}
_IMAGE_FIELDS = ("image_index", "image_name", "raw_url", "phash")


@dataclass
class AssignedBatch:
    frame: pl.DataFrame  # ASSIGNMENTS_SCHEMA rows of the documents that kept an image
    docs_in: int
    images_kept: int
    images_dropped: int
    matched_sim_sum: float  # over kept images, for the shard's mean without keeping them
    docs_solved: int  # documents that needed the linear_sum_assignment solver


def _array(table: pa.Table, name: str) -> pa.Array:
    column = table.column(name)
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _not_a_matrix(table: pa.Table, doc: int) -> None:
    raise ValueError(f"similarity_matrix of {table.column('doc_id')[doc]} is not images x sentences")


def assign_frame(frame: pl.DataFrame, min_sim: float, rule: str = MMC4) -> AssignedBatch:
    """Assign every document of a clip_scores batch; documents left without an image are omitted."""
    check_rule(rule)
    if frame.height == 0:
        return AssignedBatch(pl.DataFrame(schema=ASSIGNMENTS_SCHEMA), 0, 0, 0, 0.0, 0)
    table = frame.select("doc_id", "url", "text_list", "images", "similarity_matrix").to_arrow()
    images, matrix = _array(table, "images"), _array(table, "similarity_matrix")
    n = pc.list_value_length(images).fill_null(0).to_numpy().astype(np.int64)
    m = pc.list_value_length(_array(table, "text_list")).fill_null(0).to_numpy().astype(np.int64)
    rows = pc.list_flatten(matrix)  # one entry per image row
    rows_per_doc = pc.list_value_length(matrix).fill_null(0).to_numpy()
    row_lengths = pc.list_value_length(rows).fill_null(0).to_numpy()
    if not np.array_equal(rows_per_doc, n):
        _not_a_matrix(table, int(np.flatnonzero(rows_per_doc != n)[0]))
    bad_rows = np.flatnonzero(row_lengths != np.repeat(m, n))
    if bad_rows.size:
        _not_a_matrix(table, int(np.repeat(np.arange(n.size), n)[bad_rows[0]]))
    values = pc.list_flatten(rows).to_numpy(zero_copy_only=False)
    result = assign_flat(values, n, m, min_sim, rule)

    kept = pa.array(result.kept)
    flat_images = pc.list_flatten(images).flatten()  # the struct's fields, offsets applied
    names = [f.name for f in images.type.value_type]
    fields = [flat_images[names.index(k)] for k in _IMAGE_FIELDS] + [
        pa.array(result.matched_text_index.astype(np.int32)),
        pa.array(result.matched_sim.astype(np.float32)),
        pa.array(result.surplus),
    ]
    image_info = pa.StructArray.from_arrays(fields, names=list(ASSIGNED_IMAGE.to_schema())).filter(kept)
    row_len = np.repeat(m, n)
    if not result.kept.all():
        # the kept rows' cells, selected in numpy: arrow's list filter is far slower
        row_len = row_len[result.kept]
        values = values[np.repeat(result.kept, np.repeat(m, n))]
    rows = pa.LargeListArray.from_arrays(
        pa.array(np.r_[0, np.cumsum(row_len)], type=pa.int64()), pa.array(values, type=pa.float32())
    )
    doc_kept = result.kept_per_doc > 0
    offsets = pa.array(np.r_[0, np.cumsum(result.kept_per_doc[doc_kept])], type=pa.int64())
    docs = frame.select("doc_id", "url", "text_list")
    out = (docs if doc_kept.all() else docs.filter(pl.Series(doc_kept))).with_columns(
        pl.Series("image_info", pa.LargeListArray.from_arrays(offsets, image_info)),
        pl.Series("similarity_matrix", pa.LargeListArray.from_arrays(offsets, rows)),
        pl.Series("num_candidates", n[doc_kept].astype(np.int32)),
        pl.lit(rule).alias("assignment"),
        pl.lit(float(min_sim)).alias("min_similarity"),
    )
    kept_n = int(result.kept.sum())
    return AssignedBatch(
        frame=out.cast(ASSIGNMENTS_SCHEMA),
        docs_in=frame.height,
        images_kept=kept_n,
        images_dropped=int(result.kept.size - kept_n),
        matched_sim_sum=float(result.matched_sim[result.kept].sum()),
        docs_solved=result.docs_solved,
    )


def assign_document(row: dict, min_sim: float, image_stats: StepStats, rule: str = MMC4) -> dict | None:
    """The document with only its kept images (rows of the matrix kept in step), or None."""
    matrix = np.asarray(row["similarity_matrix"], dtype=np.float32).reshape(len(row["images"]), len(row["text_list"]))
    result = assign_images(matrix, min_sim=min_sim, rule=rule)
    image_info = []
    for i, im in enumerate(row["images"]):
        if not result.kept[i]:
            image_stats.drop("below_min_similarity")
            continue
        image_stats.keep()
        image_info.append(
            {
                **im,
                "matched_text_index": int(result.matched_text_index[i]),
                "matched_sim": float(result.matched_sim[i]),
                "surplus": bool(result.surplus[i]),
            }
        )
    if not image_info:
        return None
    return {
        "doc_id": row["doc_id"],
        "url": row["url"],
        "text_list": row["text_list"],
        "image_info": image_info,
        "similarity_matrix": matrix[result.kept].tolist(),
        "num_candidates": len(row["images"]),
        "assignment": rule,
        "min_similarity": float(min_sim),
    }


@dataclass
class AssignTotals:
    """Running totals of a shard's assignment: nothing of the shard is kept but the current batch."""

    matched_sim_sum: float = 0.0
    docs_solved: int = 0  # the rest took the exact argmax fast path

    def mean_matched_sim(self, images: int) -> float:
        return round(self.matched_sim_sum / images, 4) if images else 0.0


def assign_batches(
    batches: Iterable[pl.DataFrame], settings: AssignSettings, docs: StepStats, images: StepStats, totals: AssignTotals
) -> Iterator[pl.DataFrame]:
    """The assignments step over clip_scores batches: assigned frames out, every drop counted."""
    for batch in batches:
        assigned = assign_frame(batch, settings.min_similarity, settings.assignment)
        docs.keep(assigned.frame.height)
        images.keep(assigned.images_kept)
        if assigned.docs_in > assigned.frame.height:
            docs.drop("no_image_above_min_similarity", assigned.docs_in - assigned.frame.height)
        if assigned.images_dropped:
            images.drop("below_min_similarity", assigned.images_dropped)
        totals.matched_sim_sum += assigned.matched_sim_sum
        totals.docs_solved += assigned.docs_solved
        yield assigned.frame
