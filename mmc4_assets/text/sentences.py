"""Offline sentence splitting into MMC4's ``text_list``.

MMC4 used NLTK punkt, which needs a data download at run time; pysbd is rule-based,
ships everything in the wheel and handles abbreviations ("Dr.", "e.g.") well.
"""

from __future__ import annotations

from functools import lru_cache

import pysbd


@lru_cache(maxsize=4)
def _segmenter(language: str) -> pysbd.Segmenter:
    return pysbd.Segmenter(language=language, clean=False, char_span=False)


def split_sentences(text: str, language: str = "en") -> list[str]:
    """Split a C4 document into sentences; C4 lines are paragraphs, never joined across."""
    segmenter = _segmenter(language)
    sentences: list[str] = []
    for paragraph in text.splitlines():
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        sentences.extend(s.strip() for s in segmenter.segment(paragraph) if s.strip())
    return sentences
