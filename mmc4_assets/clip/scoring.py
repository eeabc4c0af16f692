"""Per-document image x sentence cosine similarity, encoding each distinct sentence once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mmc4_assets.clip.encoder import ClipEncoder, decode_rgb


@dataclass
class DocImages:
    doc_id: str
    text_list: Sequence[str]
    image_names: Sequence[str]


@dataclass
class ScoredBatch:
    similarity_matrices: list[np.ndarray]      # per doc, images x sentences
    image_names: list[str]                     # distinct images of the batch, feature row order
    image_features: np.ndarray
    num_distinct_sentences: int


def score_documents(docs: Sequence[DocImages], encoder: ClipEncoder,
                    load_image: Callable[[str], bytes]) -> ScoredBatch:
    """Embed the batch's distinct images and sentences once, then slice per document."""
    sentence_row: dict[str, int] = {}
    image_row: dict[str, int] = {}
    for doc in docs:
        for s in doc.text_list:
            sentence_row.setdefault(s, len(sentence_row))
        for name in doc.image_names:
            image_row.setdefault(name, len(image_row))

    def images() -> "Sequence[Image.Image]":
        for name in image_row:
            yield decode_rgb(load_image(name))

    image_feats = encoder.encode_images(images())
    text_feats = encoder.encode_texts(list(sentence_row))
    matrices = []
    for doc in docs:
        rows = image_feats[[image_row[n] for n in doc.image_names]]
        cols = text_feats[[sentence_row[s] for s in doc.text_list]]
        # both sides are unit vectors, so the dot product is the cosine; clip float noise
        matrices.append(np.clip(rows @ cols.T, -1.0, 1.0).astype(np.float32))
    return ScoredBatch(matrices, list(image_row), image_feats.astype(np.float32), len(sentence_row))
