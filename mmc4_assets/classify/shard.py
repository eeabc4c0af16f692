"""image_classifier_scores rows: each stored CLIP image feature scored by the configured classifiers."""

from __future__ import annotations

import numpy as np
import polars as pl

from mmc4_assets.classify.features import FeatureClassifier
from mmc4_assets.stats import StepStats

SCORES_SCHEMA = {
    "image_name": pl.String,
    "p_nsfw": pl.Float32,
    "nsfw": pl.Boolean,
    "p_face": pl.Float32,
    "face": pl.Boolean,
}


def score_features(
    batch: pl.DataFrame,
    nsfw: FeatureClassifier | None,
    nsfw_threshold: float,
    face: FeatureClassifier | None,
    face_threshold: float,
    nsfw_stats: StepStats,
    face_stats: StepStats,
) -> pl.DataFrame:
    """One row per image; a classifier that is off leaves its columns null (not 0, not False)."""
    n = batch.height
    features = batch["embedding"].to_numpy() if n else np.zeros((0, 1), np.float32)
    out = {"image_name": batch["image_name"]}
    for col, model, threshold, stats in (
        ("nsfw", nsfw, nsfw_threshold, nsfw_stats),
        ("face", face, face_threshold, face_stats),
    ):
        if model is None:
            out[f"p_{col}"] = pl.Series([None] * n, dtype=pl.Float32)
            out[col] = pl.Series([None] * n, dtype=pl.Boolean)
            continue
        p = model.predict_proba(features)
        flagged = p > threshold  # MMC4: drop p(nsfw) > 0.1, strictly above
        stats.keep(int((~flagged).sum()))
        stats.drop(col, int(flagged.sum()))
        out[f"p_{col}"] = pl.Series(p, dtype=pl.Float32)
        out[col] = pl.Series(flagged, dtype=pl.Boolean)
    return pl.DataFrame(out, schema=SCORES_SCHEMA)
