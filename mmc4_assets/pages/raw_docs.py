"""Turn a C4 shard into candidate documents: sentences plus the page's filtered image URLs."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from mmc4_assets.pages.archives import PageRecord, normalize_url
from mmc4_assets.stats import StepStats
from mmc4_assets.text.sentences import Splitter, split_sentences
from mmc4_assets.text.url_filter import UrlFilter

C4_FIELDS = ("text", "timestamp", "url")
# C4 documents average ~2.3 KB (156B tokens over 365M documents) and are mostly < 100 KB; longer
# ones are rare outliers whose sentence split and similarity matrix would dominate a shard
MAX_DOC_CHARS = 200_000
_KEEP_RAW = {"malformed_json", "missing_field"}


@dataclass
class C4Line:
    line_no: int
    raw: bytes
    doc: dict | None = None
    error: str | None = None   # drop reason when the line is not a C4 document


def iter_c4_lines(stream: BinaryIO) -> Iterator[C4Line]:
    """Parse a gzip'd C4 shard line by line; a truncated file ends the shard, not the run."""
    line_no = -1
    try:
        with gzip.open(stream, "rb") as lines:
            for line_no, raw in enumerate(lines):
                yield _parse_line(line_no, raw)
    except (EOFError, OSError, zlib.error):
        yield C4Line(line_no + 1, b"", error="truncated_source")


def _parse_line(line_no: int, raw: bytes) -> C4Line:
    if not raw.strip():
        return C4Line(line_no, raw, error="blank_line")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return C4Line(line_no, raw, error="malformed_json")
    if not isinstance(doc, dict) or any(not isinstance(doc.get(f), str) for f in C4_FIELDS):
        return C4Line(line_no, raw, doc if isinstance(doc, dict) else None, error="missing_field")
    return C4Line(line_no, raw, doc)


def document_rows(lines: Iterator[C4Line], pages: dict[str, PageRecord], shard: str,
                  url_filter: UrlFilter, doc_stats: StepStats, image_stats: StepStats,
                  quarantine: Callable[[dict], None], *, max_chars: int | None = MAX_DOC_CHARS,
                  splitter: Splitter = "punkt") -> Iterator[dict]:
    """raw_c4 rows; every line that is not one goes to ``quarantine`` with its reason.

    A text longer than ``max_chars`` characters is quarantined as ``too_long`` before it is
    split, so no document can stall the shard.
    """
    for line in lines:
        reason = line.error
        doc = line.doc
        sentences: list[str] = []
        images: list[str] = []
        page = None
        if reason is None and max_chars is not None and len(doc["text"]) > max_chars:
            reason = "too_long"
        if reason is None:
            page = pages.get(normalize_url(doc["url"]))
            sentences = split_sentences(doc["text"], splitter=splitter)
            if not sentences:
                reason = "no_sentences"
            elif page is None:
                reason = "no_page_record"
            else:
                for url in page.image_urls:
                    drop = url_filter.reason(url)
                    if drop is None:
                        images.append(url)
                        image_stats.keep()
                    else:
                        image_stats.drop(drop)
                if not images:
                    reason = "no_candidate_images"
        if reason is not None:
            doc_stats.drop(reason)
            url = (doc or {}).get("url")
            # keep the raw bytes only where they are the evidence (unparseable lines)
            raw = line.raw[:2000].decode("utf-8", "replace") if reason in _KEEP_RAW else None
            quarantine({"line_no": line.line_no, "url": url if isinstance(url, str) else None,
                        "reason": reason, "raw": raw})
            continue
        doc_stats.keep()
        yield {"doc_id": f"{shard}:{line.line_no:07d}", "line_no": line.line_no, "url": doc["url"],
               "timestamp": doc["timestamp"], "text_list": sentences, "image_urls": images,
               "page_source": page.source}


def wanted_urls(lines: Iterator[C4Line]) -> set[str]:
    return {normalize_url(line.doc["url"]) for line in lines if line.error is None}
