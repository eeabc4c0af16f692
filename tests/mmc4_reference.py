"""The reference for the assignment tests: MMC4's assignment, transcribed step by step.

Source: allenai/mmc4 ``scripts/compute_assignments.py`` (``get_image_assignments``) and
``scripts/linear_assignment.py`` (``base_solve``), read with the search tool. The only
substitution is the solver: ``scipy.optimize.linear_sum_assignment`` on the padded square
cost matrix where the script called ``lapjv``. Everything else follows the script:

* the script ran on published documents, whose images had already passed the 0.15 filter,
  so the filter comes first here (an image is kept when its best sentence is >= min_sim);
* costs are the negated similarities; a non-square matrix is padded to a square with the
  constant 1000 (rows at the bottom when sentences outnumber images, columns on the right
  when images do); pairs on padding are discarded;
* the solved pairs become an image -> sentence map; only when images outnumber sentences,
  every image missing from the map gets ``int(np.argmax(row))``.

Deliberately written for clarity, not speed, and independent of ``mmc4_assets.assign``.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

PAD_COST = 1000  # base_solve's max_dummy_cost_value


def base_solve(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost pairs (rows, cols) of a possibly non-square cost matrix, padding it as MMC4 did."""
    n_rows, n_cols = cost.shape
    padded = cost
    if n_rows != n_cols:
        if n_rows > n_cols:  # noqa: SIM108 (kept as the script's if/else)
            pad = [[0, 0], [0, n_rows - n_cols]]
        else:
            pad = [[0, n_cols - n_rows], [0, 0]]
        padded = np.pad(cost, pad, "constant", constant_values=PAD_COST)
    _, col_of = linear_sum_assignment(padded)  # lapjv's ``sol``: a column per row
    i_s = np.arange(len(col_of))
    j_s = col_of[i_s]
    order = np.argsort(-padded[i_s, j_s])  # the script orders pairs by cost; harmless
    i_s, j_s = i_s[order], j_s[order]
    if n_rows > n_cols:
        valid = np.where(j_s < n_cols)[0]
    elif n_rows < n_cols:
        valid = np.where(i_s < n_rows)[0]
    else:
        valid = np.arange(len(i_s))
    return i_s[valid], j_s[valid]


def image_assignments(im2txt: np.ndarray) -> tuple[list[int], list[bool]]:
    """get_image_assignments: the sentence of every image, and whether argmax placed it."""
    im_idxs, txt_idxs = base_solve(-im2txt)
    placed = {int(im_idxs[k]): int(txt_idxs[k]) for k in range(len(im_idxs))}
    by_argmax = set()
    if im2txt.shape[0] > im2txt.shape[1]:
        for imidx in range(len(im2txt)):
            if imidx not in placed:
                placed[imidx] = int(np.argmax(im2txt[imidx]))
                by_argmax.add(imidx)
    return [placed[i] for i in range(len(placed))], [i in by_argmax for i in range(len(placed))]


def reference_assignment(similarity_matrix, min_sim: float = 0.15):
    """(kept, matched_text_index, matched_sim, surplus) per image, as lists; -1 / nan where dropped."""
    sim = np.array(similarity_matrix, dtype=np.float64)
    n_images = sim.shape[0]
    kept = [bool(sim.shape[1]) and float(sim[i].max()) >= min_sim for i in range(n_images)]
    matched, matched_sim, surplus = [-1] * n_images, [float("nan")] * n_images, [False] * n_images
    rows = [i for i in range(n_images) if kept[i]]
    if rows:
        im2txt = sim[rows]
        assignment, by_argmax = image_assignments(im2txt)
        for k, i in enumerate(rows):
            matched[i] = assignment[k]
            matched_sim[i] = float(im2txt[k, assignment[k]])
            surplus[i] = by_argmax[k]
    return kept, matched, matched_sim, surplus
