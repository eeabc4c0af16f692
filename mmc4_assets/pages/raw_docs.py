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
# a C4 document is a few KB to a few hundred KB; a longer "line" is not one, and reading it
# whole would let one line hold the shard's memory
MAX_LINE_BYTES = 16 * 1024 * 1024
# the source ended or broke before its end: what was read before is kept, the check decides
SOURCE_REASONS = ("truncated_source", "corrupt_source", "not_gzip")
_KEEP_RAW = {"malformed_json", "missing_field", "invalid_unicode", "too_deep", "oversized_line", *SOURCE_REASONS}


@dataclass
class C4Line:
    line_no: int
    raw: bytes  # the line; for a source-level reason, what broke and where (file, byte offset)
    doc: dict | None = None
    error: str | None = None  # drop reason when the line is not a C4 document


def iter_c4_lines(stream: BinaryIO, name: str | None = None, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[C4Line]:
    """Parse a gzip'd C4 shard line by line; every line is a document or carries a reason.

    A broken source (truncated, corrupt, not gzip at all) ends the shard with one row whose
    reason says which, and whose ``raw`` names the file and the byte offset where it broke;
    the lines read before it are kept. Errors reading the storage itself (not the data) are
    raised, naming the file, so the run fails and is retried rather than publishing less.
    """
    name = name or _stream_name(stream)
    line_no, done = -1, 0  # last line read; decompressed bytes of the lines read
    try:
        with gzip.open(stream, "rb") as reader:
            while raw := reader.readline(max_line_bytes):
                line_no += 1
                done += len(raw)
                if len(raw) >= max_line_bytes and not raw.endswith(b"\n"):
                    done += _skip_line(reader, max_line_bytes)
                    yield C4Line(line_no, raw[:4096], error="oversized_line")
                    continue
                yield _parse_line(line_no, raw)
    except EOFError as exc:
        yield _source_error(line_no, "truncated_source", name, stream, done, exc)
    except zlib.error as exc:
        yield _source_error(line_no, "corrupt_source", name, stream, done, exc)
    except gzip.BadGzipFile as exc:
        first = line_no < 0 and str(exc).startswith("Not a gzipped file")
        yield _source_error(line_no, "not_gzip" if first else "corrupt_source", name, stream, done, exc)
    except OSError as exc:
        raise OSError(f"{name}: reading failed after line {line_no} (decompressed byte {done}): {exc}") from exc


def _stream_name(stream: BinaryIO) -> str:
    name = getattr(stream, "path", None) or getattr(stream, "name", None)
    return str(name) if name else f"<{type(stream).__name__}>"


def _skip_line(reader, chunk: int) -> int:
    """Read past the rest of an oversized line in bounded chunks; bytes skipped."""
    skipped = 0
    while part := reader.readline(chunk):
        skipped += len(part)
        if part.endswith(b"\n"):
            break
    return skipped


def _source_error(line_no: int, reason: str, name: str, stream: BinaryIO, done: int, exc: BaseException) -> C4Line:
    try:
        at = f"compressed byte {stream.tell()}"
    except (OSError, ValueError, AttributeError):
        at = "an unknown compressed offset"
    what = {
        "truncated_source": "gzip stream ends early",
        "corrupt_source": "gzip stream is corrupt",
        "not_gzip": "not a gzip file",
    }[reason]
    detail = (
        f"{name}: {what} at {at}, after {line_no + 1} lines ({done} decompressed bytes): {type(exc).__name__}: {exc}"
    )
    return C4Line(line_no + 1, detail.encode("utf-8", "backslashreplace"), error=reason)


def _parse_line(line_no: int, raw: bytes) -> C4Line:
    """A C4 document, or the reason this line is not one; raises nothing."""
    if not raw.strip():
        return C4Line(line_no, raw, error="blank_line")
    try:
        doc = json.loads(raw)
    except RecursionError:  # nesting deeper than the interpreter's stack (a C4 line has depth 1)
        return C4Line(line_no, raw, error="too_deep")
    except ValueError:  # includes UnicodeDecodeError and ints past Python's digit limit
        return C4Line(line_no, raw, error="malformed_json")
    if not isinstance(doc, dict):
        return C4Line(line_no, raw, error="missing_field")
    # JSON may escape lone surrogates ("\ud800") that no UTF-8 writer can store: quarantined
    # as evidence rather than repaired, so a document's text is never silently altered
    if any(isinstance(doc.get(f), str) and not _utf8_safe(doc[f]) for f in C4_FIELDS):
        return C4Line(line_no, raw, error="invalid_unicode")
    if any(not isinstance(doc.get(f), str) for f in C4_FIELDS):
        return C4Line(line_no, raw, doc, error="missing_field")
    return C4Line(line_no, raw, doc)


def _utf8_safe(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def document_rows(
    lines: Iterator[C4Line],
    pages: dict[str, PageRecord],
    shard: str,
    url_filter: UrlFilter,
    doc_stats: StepStats,
    image_stats: StepStats,
    quarantine: Callable[[dict], None],
    *,
    max_chars: int | None = MAX_DOC_CHARS,
    splitter: Splitter = "punkt",
) -> Iterator[dict]:
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
            quarantine(
                {"line_no": line.line_no, "url": url if isinstance(url, str) else None, "reason": reason, "raw": raw}
            )
            continue
        doc_stats.keep()
        yield {
            "doc_id": f"{shard}:{line.line_no:07d}",
            "line_no": line.line_no,
            "url": doc["url"],
            "timestamp": doc["timestamp"],
            "text_list": sentences,
            "image_urls": images,
            "page_source": page.source,
        }


def wanted_urls(lines: Iterator[C4Line]) -> set[str]:
    return {normalize_url(line.doc["url"]) for line in lines if line.error is None}
