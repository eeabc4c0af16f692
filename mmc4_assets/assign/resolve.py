"""Re-solving a document that lost images after its assignment.

The assignment runs before in-document pHash dedup (deduped_docs) and the corpus rules
(published_shards: frequent images, NSFW), because the product's asset order is fixed. MMC4
filtered first and assigned last, so a document that loses images afterwards is solved
again on exactly the images it keeps, with the rule (and threshold) that placed them:
the published assignment is then the one MMC4 would have computed for the published
images. Dropping an image does not change another image's best sentence, so every
remaining image is still above the threshold and all of them are placed.
"""

from __future__ import annotations

import numpy as np

from mmc4_assets.assign.linear import MMC4, check_rule, solve_mmc4, solve_thresholded_argmax
from mmc4_assets.mmc4_params import AssignSettings

DEFAULT_MIN_SIM = AssignSettings.min_similarity


def reassign(
    image_info: list[dict],
    similarity_matrix: list[list[float]],
    rule: str | None = MMC4,
    min_sim: float | None = DEFAULT_MIN_SIM,
) -> list[dict]:
    """``image_info`` placed again on its own ``similarity_matrix`` rows (one per image)."""
    if not image_info:
        return []
    rule = check_rule(rule or MMC4)
    sim = np.asarray(similarity_matrix, dtype=np.float64).reshape(len(image_info), -1)
    if rule == MMC4:
        matched, surplus = solve_mmc4(sim)
    else:
        matched, surplus = solve_thresholded_argmax(sim, DEFAULT_MIN_SIM if min_sim is None else min_sim)
    return [
        {**im, "matched_text_index": int(j), "matched_sim": float(sim[i, j]), "surplus": bool(s)}
        for i, (im, j, s) in enumerate(zip(image_info, matched.tolist(), surplus.tolist()))
    ]


def keep_and_reassign(doc: dict, keep: list[int], image_info: list[dict] | None = None) -> dict:
    """``doc`` with only the images ``keep`` (indices), re-solved when any image went.

    ``image_info`` (optional) replaces the kept images' dicts, aligned with ``keep``.
    """
    info = image_info if image_info is not None else [doc["image_info"][i] for i in keep]
    matrix = [doc["similarity_matrix"][i] for i in keep]
    if len(keep) < len(doc["image_info"]):
        info = reassign(info, matrix, doc.get("assignment"), doc.get("min_similarity"))
    return {**doc, "image_info": info, "similarity_matrix": matrix}
