"""Place each image next to a sentence, MMC4's way.

1. Drop images whose best sentence similarity is below ``min_sim`` (0.15 in MMC4).
2. Solve a bipartite linear assignment maximising total similarity, each sentence
   getting at most one image (``scipy.optimize.linear_sum_assignment`` solves the
   rectangular problem directly; MMC4's script padded the matrix for LAPJV).
3. Surplus images -- more images than sentences, or images whose only sentences above
   ``min_sim`` were taken -- go to their argmax sentence, so several images may share
   one. A kept image therefore always has ``matched_sim >= min_sim``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

# Cells below min_sim must lose to any feasible cell: the penalty exceeds n * (max - min sim).
_FORBIDDEN_PENALTY = 1e3


@dataclass(frozen=True)
class Assignment:
    kept: np.ndarray                # bool per image
    matched_text_index: np.ndarray  # int per image, -1 where dropped
    matched_sim: np.ndarray         # float per image, nan where dropped
    surplus: np.ndarray             # bool per image: placed by argmax, may share a sentence


def assign_images(similarity_matrix: np.ndarray, min_sim: float = 0.15) -> Assignment:
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
        sub = sim[rows]
        feasible = sub >= min_sim
        score = np.where(feasible, sub, sub - _FORBIDDEN_PENALTY)
        r, c = linear_sum_assignment(score, maximize=True)
        ok = feasible[r, c]
        matched[rows[r[ok]]] = c[ok]
        leftover = rows[matched[rows] < 0]
        matched[leftover] = sim[leftover].argmax(axis=1)
        surplus[leftover] = True
    matched_sim = np.where(kept, sim[np.arange(n_images), np.maximum(matched, 0)], np.nan)
    return Assignment(kept, matched, matched_sim, surplus)
