"""The assignment for many documents at once, with exactly the answers of ``assign_images``.

A batch is one flat float array holding every document's images x sentences matrix
(row-major, one after another) plus the two shapes per document. Row maxima, first
argmax and the number of maxima are computed for all rows of the batch in a few numpy
calls. Then, per document:

* every kept image has a single best sentence and no two kept images share it: the
  argmax IS the unique optimal assignment (any other pairing gives some image a
  strictly worse sentence), so no solver runs. This holds for both rules (a kept row's
  maximum is >= min_sim, so thresholded_argmax allows it too). Single-image documents,
  MMC4's most common case, always land here unless their row has a tie;
* otherwise (two images want the same sentence, a tie, more images than sentences)
  the document's kept rows go, as float64, through the very function ``assign_images``
  calls (``solve_mmc4`` or ``solve_thresholded_argmax``), so ties break the same way.

Ties go to the solver on purpose: with several optimal pairings, only scipy knows which
one scipy returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmc4_assets.assign.linear import MMC4, check_rule, solve_mmc4, solve_thresholded_argmax
from mmc4_assets.mmc4_params import AssignSettings


@dataclass(frozen=True)
class BatchAssignment:
    """Per image of the batch (documents' images in order), as ``Assignment`` per document."""

    kept: np.ndarray  # bool
    matched_text_index: np.ndarray  # int64, -1 where dropped
    matched_sim: np.ndarray  # float64, nan where dropped
    surplus: np.ndarray  # bool
    kept_per_doc: np.ndarray  # int64 per document
    docs_solved: int  # documents that needed linear_sum_assignment


def _segment_starts(lengths: np.ndarray) -> np.ndarray:
    starts = np.zeros(lengths.size, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return starts


def assign_flat(
    values: np.ndarray,
    n_images: np.ndarray,
    n_sentences: np.ndarray,
    min_sim: float = AssignSettings.min_similarity,
    rule: str = MMC4,
) -> BatchAssignment:
    """Assign every document of a batch; ``values`` is the concatenation of the row-major matrices."""
    check_rule(rule)
    n = np.asarray(n_images, dtype=np.int64)
    m = np.asarray(n_sentences, dtype=np.int64)
    # float64 as assign_images: comparing float32 cells with a float64 threshold must not round it
    vals = np.asarray(values, dtype=np.float64).ravel()
    if n.shape != m.shape or (n < 0).any() or (m < 0).any():
        raise ValueError("n_images and n_sentences must be non-negative and of one length")
    if vals.size != int((n * m).sum()):
        raise ValueError(f"{vals.size} similarity values for {int((n * m).sum())} cells")
    if not np.isfinite(vals).all():
        bad_doc = int(np.searchsorted(np.cumsum(n * m), np.flatnonzero(~np.isfinite(vals))[0], "right"))
        raise ValueError(f"similarity matrix of document {bad_doc} of the batch contains non-finite values")

    num_docs, num_rows = n.size, int(n.sum())
    row_len = np.repeat(m, n)  # every image row has its document's sentence count
    row_doc = np.repeat(np.arange(num_docs), n)
    row_start = _segment_starts(row_len)
    doc_row0 = _segment_starts(n)  # first image row of each document
    doc_cell0 = _segment_starts(n * m)  # first cell of each document

    row_max = np.full(num_rows, -np.inf)
    first = np.zeros(num_rows, dtype=np.int64)
    n_max = np.zeros(num_rows, dtype=np.int64)
    nonempty = row_len > 0
    if vals.size:
        # empty rows hold no cells, so the nonempty rows' starts delimit their segments exactly
        starts = row_start[nonempty]
        row_max[nonempty] = np.maximum.reduceat(vals, starts)
        is_max = vals == np.repeat(row_max, row_len)
        col = np.arange(vals.size, dtype=np.int64) - np.repeat(row_start, row_len)
        first[nonempty] = np.minimum.reduceat(np.where(is_max, col, np.iinfo(np.int64).max), starts)
        n_max[nonempty] = np.add.reduceat(is_max, starts)
    kept = nonempty & (row_max >= min_sim)

    # the argmax fast path holds for a document when its kept rows have one maximum each, all distinct
    needs_solver = np.zeros(num_docs, dtype=bool)
    needs_solver[row_doc[kept & (n_max > 1)]] = True
    kept_rows = np.flatnonzero(kept)
    if kept_rows.size:
        key = row_doc[kept_rows] * (int(m.max()) + 1) + first[kept_rows]
        key.sort()
        needs_solver[key[1:][key[1:] == key[:-1]] // (int(m.max()) + 1)] = True

    matched = np.where(kept, first, -1)
    surplus = np.zeros(num_rows, dtype=bool)
    solve_docs = np.flatnonzero(needs_solver)
    all_kept = (np.bincount(row_doc[kept_rows], minlength=num_docs) == n)[solve_docs]
    solve = solve_mmc4 if rule == MMC4 else (lambda sub: solve_thresholded_argmax(sub, min_sim))
    for c0, r0, nd, md, full in zip(
        doc_cell0[solve_docs].tolist(),
        doc_row0[solve_docs].tolist(),
        n[solve_docs].tolist(),
        m[solve_docs].tolist(),
        all_kept.tolist(),
    ):
        # the same float64 kept rows assign_images solves: images below min_sim take no part
        sub = vals[c0 : c0 + nd * md].reshape(nd, md)
        if full:
            matched[r0 : r0 + nd], surplus[r0 : r0 + nd] = solve(sub)
        else:
            rows = np.flatnonzero(kept[r0 : r0 + nd]) + r0
            matched[rows], surplus[rows] = solve(sub[rows - r0])

    matched_sim = np.full(num_rows, np.nan)
    matched_sim[kept_rows] = vals[row_start[kept_rows] + matched[kept_rows]]
    kept_per_doc = np.bincount(row_doc[kept_rows], minlength=num_docs).astype(np.int64)
    return BatchAssignment(kept, matched, matched_sim, surplus, kept_per_doc, int(solve_docs.size))
