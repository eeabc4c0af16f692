"""The image classifier resource (NSFW, faces). Kept apart from the asset so resources.py can import it."""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from mmc4_assets.classify.features import FeatureClassifier, load_classifier
from mmc4_assets.mmc4_params import ClassifierSettings


class FeatureClassifiers(dg.ConfigurableResource):
    """NSFW and face classifiers over stored CLIP image features; a filter with no weights is off.

    Weights are a path or URL (sklearn joblib/pickle, or a torch state_dict of Linear layers;
    see mmc4_assets/classify/features.py). There is no default model: unset means off, and
    the published metadata and manifests say so.
    """

    nsfw_weights: str | None = None
    nsfw_format: str = "auto"
    nsfw_threshold: float = ClassifierSettings.nsfw_threshold  # defaults and meaning: mmc4_params.py
    face_weights: str | None = None
    face_format: str = "auto"
    face_threshold: float = ClassifierSettings.face_threshold
    # the CLIP model the weights were trained on (e.g. "ViT-L-14"); when set, scoring
    # features of any other model fails instead of producing meaningless probabilities
    feature_model: str | None = None
    batch_size: int = 8192
    _loaded: dict[str, Any] = PrivateAttr(default_factory=dict)

    def _get(self, name: str, path: str | None, fmt: str) -> FeatureClassifier | None:
        if not path:
            return None
        if name not in self._loaded:
            self._loaded[name] = load_classifier(name, path, fmt)
        return self._loaded[name]

    def settings(self) -> ClassifierSettings:
        return ClassifierSettings(nsfw_threshold=self.nsfw_threshold, face_threshold=self.face_threshold)

    def nsfw(self) -> FeatureClassifier | None:
        return self._get("nsfw", self.nsfw_weights, self.nsfw_format)

    def face(self) -> FeatureClassifier | None:
        return self._get("face", self.face_weights, self.face_format)
