"""The per-shard filter funnel and the success-rate drift rule, from stage metadata."""

from __future__ import annotations

import re
from statistics import fmean
from typing import Any

from mmc4_assets.mmc4_params import STAGES

_DROP_KEY = re.compile(r"^(docs|images|image_urls)_dropped_(.+)$")
_IMAGE_COUNT_KEYS = ("num_images", "num_ok", "num_candidate_images")


def funnel_rows(stage_metadata: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per stage: documents and images surviving it, and what it dropped, by reason."""
    rows = []
    raw = stage_metadata.get("raw_c4", {})
    if "num_lines" in raw:
        rows.append({"stage": "source lines", "documents": int(raw["num_lines"]), "images": None, "dropped": ""})
    for stage in STAGES:
        md = stage_metadata.get(stage)
        if md is None:
            continue
        images = next((md[k] for k in _IMAGE_COUNT_KEYS if k in md), None)
        drops = []
        for key, value in sorted(md.items()):
            m = _DROP_KEY.match(key)
            if m and m.group(2) not in ("reasons",) and isinstance(value, (int, float)) and value:
                what = "docs" if m.group(1) == "docs" else "images"
                drops.append(f"{m.group(2)}: {int(value)} {what}")
        rows.append(
            {"stage": stage, "documents": _int(md.get("num_docs")), "images": _int(images), "dropped": ", ".join(drops)}
        )
    return rows


def _int(v: Any) -> int | None:
    return None if v is None else int(v)


def success_rate_drift(current: float, earlier: list[float], max_drop: float) -> tuple[bool, float | None]:
    """(ok, trailing mean): not ok when this partition is ``max_drop`` below the earlier ones' mean."""
    if not earlier:
        return True, None
    trailing = fmean(earlier)
    return current >= trailing - max_drop, trailing
