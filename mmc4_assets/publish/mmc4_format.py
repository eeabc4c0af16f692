"""The published MMC4 document: field names, shard naming and a schema check."""

from __future__ import annotations

import math
import re
from typing import Any

DOC_FIELDS = ("url", "text_list", "image_info", "similarity_matrix", "could_have_url_duplicate")
IMAGE_FIELDS = ("image_name", "raw_url", "matched_text_index", "matched_sim", "face_detections")

_SHARD_NUMBER = re.compile(r"\.(\d+)-of-\d+$")


def shard_number(shard: str) -> str:
    """C4's ``c4-train.00042-of-01024`` publishes as shard 42; other names keep their key."""
    m = _SHARD_NUMBER.search(shard)
    return str(int(m.group(1))) if m else shard


def shard_filename(shard: str, version: str = "v2") -> str:
    return f"docs_shard_{shard_number(shard)}_{version}.jsonl.zip"


def make_document(
    url: str,
    text_list: list[str],
    images: list[dict[str, Any]],
    similarity_matrix: list[list[float]],
    could_have_url_duplicate: int,
    ndigits: int = 6,
) -> dict[str, Any]:
    """One MMC4 jsonl line, with fields in MMC4's order."""
    return {
        "url": url,
        "text_list": list(text_list),
        "image_info": [
            {
                "image_name": im["image_name"],
                "raw_url": im["raw_url"],
                "matched_text_index": int(im["matched_text_index"]),
                "matched_sim": round(float(im["matched_sim"]), ndigits),
                "face_detections": im.get("face_detections"),
            }
            for im in images
        ],
        "similarity_matrix": [[round(float(v), ndigits) for v in row] for row in similarity_matrix],
        "could_have_url_duplicate": int(could_have_url_duplicate),
    }


def schema_errors(doc: Any) -> list[str]:
    """Everything wrong with one document against the MMC4 format; empty when valid."""
    if not isinstance(doc, dict):
        return ["document is not an object"]
    errors = [f"missing field {f}" for f in DOC_FIELDS if f not in doc]
    errors += [f"unexpected field {f}" for f in doc if f not in DOC_FIELDS]
    if errors:
        return errors
    if not isinstance(doc["url"], str) or not doc["url"]:
        errors.append("url must be a non-empty string")
    texts = doc["text_list"]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        errors.append("text_list must be a non-empty list of strings")
        return errors
    images = doc["image_info"]
    if not isinstance(images, list) or not images:
        errors.append("image_info must be a non-empty list")
        return errors
    for i, im in enumerate(images):
        if not isinstance(im, dict) or set(im) != set(IMAGE_FIELDS):
            errors.append(f"image_info[{i}] must have exactly {IMAGE_FIELDS}")
            continue
        idx = im["matched_text_index"]
        if not isinstance(idx, int) or not 0 <= idx < len(texts):
            errors.append(f"image_info[{i}].matched_text_index {idx!r} outside text_list")
        sim = im["matched_sim"]
        if not isinstance(sim, (int, float)) or not math.isfinite(sim) or not -1 <= sim <= 1:
            errors.append(f"image_info[{i}].matched_sim {sim!r} not a cosine")
    matrix = doc["similarity_matrix"]
    if (
        not isinstance(matrix, list)
        or len(matrix) != len(images)
        or any(not isinstance(row, list) or len(row) != len(texts) for row in matrix)
    ):
        errors.append("similarity_matrix shape must be len(image_info) x len(text_list)")
    elif any(
        not isinstance(v, (int, float)) or not math.isfinite(v) or not -1 <= v <= 1 for row in matrix for v in row
    ):
        errors.append("similarity_matrix values must be finite cosines")
    if doc["could_have_url_duplicate"] not in (0, 1):
        errors.append("could_have_url_duplicate must be 0 or 1")
    return errors
