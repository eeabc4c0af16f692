"""In-document perceptual-hash dedup (MMC4: findimagedupes, threshold 5).

Corpus-wide rules (an image seen > 10 times across shards, near-duplicate documents)
need state across shards and plug in after this per-document pass.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from mmc4_assets.mmc4_params import DedupSettings


def hamming(a: str, b: str) -> int:
    """Bit distance of two hex-encoded 64-bit hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def dedup_in_document(phashes: Sequence[str], threshold: int = DedupSettings.phash_threshold) -> list[int | None]:
    """For each image, the index of an earlier kept image it duplicates, or None if kept.

    Images within ``threshold`` bits of an earlier kept image are duplicates; the first
    copy in document order stays, as a reader meets it first.
    """
    kept: list[tuple[int, int]] = []
    out: list[int | None] = []
    for i, h in enumerate(phashes):
        value = int(h, 16)
        dup_of = next((j for j, v in kept if (value ^ v).bit_count() <= threshold), None)
        out.append(dup_of)
        if dup_of is None:
            kept.append((i, value))
    return out


def url_duplicate_flags(urls: Iterable[str]) -> dict[str, int]:
    """1 for URLs shared by more than one document (MMC4's ``could_have_url_duplicate``)."""
    counts = Counter(urls)
    return {url: int(n > 1) for url, n in counts.items()}
