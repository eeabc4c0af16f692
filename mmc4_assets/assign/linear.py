"""Place each image next to a sentence.

``rule="mmc4"`` (the default) is MMC4's ``scripts/compute_assignments.py`` (allenai/mmc4),
with ``scipy.optimize.linear_sum_assignment`` in place of its LAPJV solver:

1. Drop images whose best sentence similarity is below ``min_sim`` (0.15 in MMC4: the
   filter that ran before the script, so it only ever saw kept images).
2. Solve the plain linear assignment over the kept images' whole matrix, maximising the
   total similarity, each sentence at most one image. Nothing is forbidden: a pair below
   ``min_sim`` is chosen when that maximises the total, so ``matched_sim`` may be < ``min_sim``.
3. Only when kept images outnumber sentences, the images the solver left over go to their
   (first) argmax sentence, so several images may share one (``surplus``).

MMC4 padded the matrix to a square with a constant cost and solved that. When images do
not outnumber sentences the padding rows come last and change nothing (scipy's solver
takes a free column on a tie), so the rectangular matrix is solved directly; with more
images than sentences the padded square is solved, because which images end up left
over on a tie depends on it. Either way the answers equal the transcription's, ties
included (tests/mmc4_reference.py, tests/test_assign_reference.py).

``rule="thresholded_argmax"`` is this project's earlier rule, kept as a named option:
cells below ``min_sim`` are forbidden in the assignment, and every kept image the solver
could not place on such a cell goes to its argmax sentence. A kept image then always has
``matched_sim >= min_sim``, but the total is not the optimum and sentences can be shared
while sentences outnumber images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from mmc4_assets.mmc4_params import AssignSettings

MMC4 = "mmc4"
THRESHOLDED_ARGMAX = "thresholded_argmax"
RULES = (MMC4, THRESHOLDED_ARGMAX)

# MMC4's padding cost (linear_assignment.base_solve's max_dummy_cost_value): a dummy cell
# costs more than any similarity, so padding never displaces a real pair.
_PAD_COST = 1000.0
# thresholded_argmax: cells below min_sim must lose to any feasible cell (penalty > n * (max - min sim))
_FORBIDDEN_PENALTY = 1e3


@dataclass(frozen=True)
class Assignment:
    kept: np.ndarray  # bool per image
    matched_text_index: np.ndarray  # int per image, -1 where dropped
    matched_sim: np.ndarray  # float per image, nan where dropped
    surplus: np.ndarray  # bool per image: placed by argmax, may share a sentence


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise ValueError(f"unknown assignment rule {rule!r}; choose from {RULES}")
    return rule


def solve_mmc4(sim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MMC4's assignment of a kept images x sentences matrix (float64, at least one sentence).

    Returns (matched sentence per image, surplus per image).
    """
    n, m = sim.shape
    if n <= m:
        _, cols = linear_sum_assignment(-sim)  # every image is placed: rows come back as 0..n-1
        return cols.astype(np.int64, copy=False), np.zeros(n, dtype=bool)
    padded = np.full((n, n), _PAD_COST)
    padded[:, :m] = -sim
    _, cols = linear_sum_assignment(padded)  # square: rows come back as 0..n-1
    surplus = cols >= m  # on a padding column: left over
    matched = np.where(surplus, sim.argmax(axis=1), cols).astype(np.int64)
    return matched, surplus


def solve_thresholded_argmax(sim: np.ndarray, min_sim: float) -> tuple[np.ndarray, np.ndarray]:
    """The named variant: pairs below min_sim forbidden, the unplaced go to their argmax."""
    feasible = sim >= min_sim
    score = np.where(feasible, sim, sim - _FORBIDDEN_PENALTY)
    r, c = linear_sum_assignment(score, maximize=True)
    matched = np.full(sim.shape[0], -1, dtype=np.int64)
    ok = feasible[r, c]
    matched[r[ok]] = c[ok]
    surplus = matched < 0
    matched[surplus] = sim[surplus].argmax(axis=1)
    return matched, surplus


def assign_images(
    similarity_matrix: np.ndarray, min_sim: float = AssignSettings.min_similarity, rule: str = MMC4
) -> Assignment:
    check_rule(rule)
    sim = np.asarray(similarity_matrix, dtype=np.float64)
    if sim.ndim != 2:
        raise ValueError(f"similarity_matrix must be 2-D, got shape {sim.shape}")
    n_images, n_sentences = sim.shape
    matched = np.full(n_images, -1, dtype=np.int64)
    surplus = np.zeros(n_images, dtype=bool)
    if n_images == 0 or n_sentences == 0:
        return Assignment(np.zeros(n_images, bool), matched, np.full(n_images, np.nan), surplus)
    if not np.isfinite(sim).all():
        raise ValueError("similarity_matrix contains non-finite values")

    kept = sim.max(axis=1) >= min_sim
    rows = np.flatnonzero(kept)
    if rows.size:
        if rule == MMC4:
            matched[rows], surplus[rows] = solve_mmc4(sim[rows])
        else:
            matched[rows], surplus[rows] = solve_thresholded_argmax(sim[rows], min_sim)
    matched_sim = np.where(kept, sim[np.arange(n_images), np.maximum(matched, 0)], np.nan)
    return Assignment(kept, matched, matched_sim, surplus)
