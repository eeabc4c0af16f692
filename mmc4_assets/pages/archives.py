"""Read page records from WARC and Common Crawl WAT files with warcio.

C4 keeps no HTML, so a document's images come from an archive of the same URL: either
the HTML itself (WARC ``response`` records) or Common Crawl's pre-extracted link lists
(WAT ``metadata`` records, the route MMC4 took). Both yield the page's image candidates in
document order (URL resolved against ``<base href>``, alt text, position among the page's
``<img>`` elements), with the capture time and HTTP status of the record.

Every record of an archive is accounted for: it is a page record, or it is counted under a
stable reason (``not_html``, ``wat_malformed_json``, ...). warcio's own iteration errors
(a gzip member that splits a record, a non-chunked gzip, a bad header) end the archive:
they are counted too (``archive_read_error_<kind>``) with the byte offset reached, and
the pages read before the error are kept.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO
from urllib.parse import urljoin, urlsplit, urlunsplit

from selectolax.lexbor import LexborHTMLParser
from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed

from mmc4_assets.stats import StepStats

log = logging.getLogger(__name__)

# HTML beyond this is not read: pages that large are almost always binary mislabels.
MAX_HTML_BYTES = 8 * 1024 * 1024
# WAT envelopes are small JSON documents; one larger than this is not a page's metadata
MAX_WAT_BYTES = 16 * 1024 * 1024
# reason prefix for errors that end an archive (warcio cannot resynchronise after them)
ARCHIVE_ERROR = "archive_read_error"


@dataclass(frozen=True)
class PageRecord:
    url: str
    image_urls: tuple[str, ...]
    source: str  # "warc" or "wat"
    capture_time: datetime | None = field(default=None, compare=False)
    status: int | None = field(default=None, compare=False)
    mime: str | None = field(default=None, compare=False)
    image_alts: tuple[str | None, ...] = field(default=(), compare=False)
    image_positions: tuple[int, ...] = field(default=(), compare=False)
    offset: int | None = field(default=None, compare=False)  # of the record in its archive


class ArchiveReadError(Exception):
    """An archive that could not be opened or read at all; the message names the file."""

    def __init__(self, path: str, detail: str):
        super().__init__(f"{path}: {detail}")
        self.path = path


def normalize_url(url: str) -> str:
    """Key used to match a C4 URL to an archive record: fragment dropped, scheme/host lower-cased."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return url.strip()
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", parts.query, ""))


def parse_time(value: str | None) -> datetime | None:
    """WARC-Date / C4 ``timestamp`` (ISO 8601, ``Z`` or offset, optional fraction) -> UTC datetime."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        digits = "".join(ch for ch in value if ch.isdigit())
        if len(digits) < 14:
            return None
        try:  # CDX style: YYYYMMDDhhmmss
            parsed = datetime.strptime(digits[:14], "%Y%m%d%H%M%S")
        except ValueError:
            return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _usable(src: str | None) -> bool:
    return bool(src) and not src.strip().lower().startswith(("data:", "javascript:", "about:"))


def _absolute(base: str, src: str) -> str | None:
    try:
        url = urljoin(base, src.strip())
    except ValueError:
        return None
    return url.split("#", 1)[0]


@dataclass(frozen=True)
class ImageCandidate:
    url: str
    alt: str | None
    position: int  # index of its <img> among the page's <img> elements (WAT: among IMG links)


def _ordered_unique(cands: Iterable[ImageCandidate]) -> list[ImageCandidate]:
    """First occurrence of each URL, in document order."""
    seen: dict[str, ImageCandidate] = {}
    for cand in cands:
        if cand.url and cand.url not in seen:
            seen[cand.url] = cand
    return list(seen.values())


def image_candidates_from_html(html: str | bytes, page_url: str) -> list[ImageCandidate]:
    """<img> candidates in document order; lazy-loading pages keep the real one in data-src."""
    tree = LexborHTMLParser(html)
    base = page_url
    base_node = tree.css_first("base[href]")
    if base_node is not None and base_node.attributes.get("href"):
        base = _absolute(page_url, base_node.attributes["href"]) or page_url
    cands = []
    for position, node in enumerate(tree.css("img")):
        attrs = node.attributes
        src = attrs.get("src")
        if not _usable(src):
            src = attrs.get("data-src")
        if _usable(src):
            url = _absolute(base, src)
            if url:
                cands.append(ImageCandidate(url, attrs.get("alt"), position))
    return _ordered_unique(cands)


def images_from_html(html: str | bytes, page_url: str) -> tuple[str, ...]:
    """Absolute <img> URLs in document order, each once."""
    return tuple(c.url for c in image_candidates_from_html(html, page_url))


def image_candidates_from_wat(envelope: dict) -> tuple[str | None, list[ImageCandidate], int | None]:
    """(page url, candidates, HTTP status) of one WAT envelope; url None if not an HTML response."""
    env = envelope.get("Envelope", {}) if isinstance(envelope, dict) else {}
    header = env.get("WARC-Header-Metadata", {}) if isinstance(env, dict) else {}
    if not isinstance(header, dict) or header.get("WARC-Type", "response") != "response":
        return None, [], None
    url = header.get("WARC-Target-URI")
    http = (env.get("Payload-Metadata") or {}).get("HTTP-Response-Metadata") or {}
    html_meta = http.get("HTML-Metadata") if isinstance(http, dict) else None
    if not isinstance(url, str) or not url or not isinstance(html_meta, dict):
        return None, [], None
    status = _int((http.get("Response-Message") or {}).get("Status"))
    base = (html_meta.get("Head") or {}).get("Base") or url
    base = _absolute(url, base) if isinstance(base, str) else url
    cands = []
    position = 0
    for link in html_meta.get("Links") or []:
        if not isinstance(link, dict) or link.get("path") != "IMG@/src":
            continue
        src = link.get("url")
        if isinstance(src, str) and _usable(src):
            absolute = _absolute(base or url, src)
            if absolute:
                alt = link.get("alt")
                cands.append(ImageCandidate(absolute, alt if isinstance(alt, str) else None, position))
        position += 1
    return url, _ordered_unique(cands), status


def images_from_wat(envelope: dict) -> tuple[str, tuple[str, ...]] | tuple[None, None]:
    """(page url, image-urls) from one WAT JSON envelope, or (None, None) if not an HTML response."""
    url, cands, _ = image_candidates_from_wat(envelope)
    return (url, tuple(c.url for c in cands)) if url is not None else (None, None)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _page(
    url: str, cands: list[ImageCandidate], source: str, record, status: int | None, mime: str | None, offset: int | None
) -> PageRecord:
    return PageRecord(
        url,
        tuple(c.url for c in cands),
        source,
        capture_time=parse_time(record.rec_headers.get_header("WARC-Date")),
        status=status,
        mime=mime,
        image_alts=tuple(c.alt for c in cands),
        image_positions=tuple(c.position for c in cands),
        offset=offset,
    )


def _record_page(record, offset: int | None, stats: StepStats) -> PageRecord | None:
    """The page of one record, or None with the reason counted."""
    rtype = record.rec_type
    if rtype == "response":
        headers = record.http_headers
        if headers is None:
            stats.drop("response_without_http")
            return None
        ctype = (headers.get_header("Content-Type") or "").lower()
        if "html" not in ctype:
            stats.drop("not_html")
            return None
        url = record.rec_headers.get_header("WARC-Target-URI")
        if not url:
            stats.drop("no_target_uri")
            return None
        body = record.content_stream().read(MAX_HTML_BYTES)
        return _page(
            url,
            image_candidates_from_html(body, url),
            "warc",
            record,
            _int(headers.get_statuscode()),
            ctype.split(";")[0].strip(),
            offset,
        )
    if rtype == "metadata":
        ctype = (record.rec_headers.get_header("Content-Type") or "").lower()
        if "json" not in ctype:
            stats.drop("metadata_not_json")
            return None
        raw = record.content_stream().read(MAX_WAT_BYTES + 1)
        if len(raw) > MAX_WAT_BYTES:
            stats.drop("wat_too_large")
            return None
        try:
            payload = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            stats.drop("wat_malformed_json")
            return None
        url, cands, status = image_candidates_from_wat(payload)
        if url is None:
            stats.drop("wat_not_html_response")
            return None
        return _page(url, cands, "wat", record, status, "text/html", offset)
    stats.drop(f"skipped_{rtype}" if rtype in _KNOWN_TYPES else "skipped_other_type")
    return None


_KNOWN_TYPES = {"warcinfo", "request", "revisit", "resource", "conversion", "continuation"}


def error_kind(exc: BaseException) -> str:
    """A stable label for what ended an archive early."""
    text = str(exc).lower()
    if "non-chunked gzip" in text:
        return "non_chunked_gzip"
    if "unknown archive format" in text:
        return "unknown_format"
    if isinstance(exc, (EOFError, zlib.error)) or "compressed file ended" in text:
        return "truncated_gzip"
    if isinstance(exc, ArchiveLoadFailed):
        return "load_failed"
    if isinstance(exc, (ValueError, UnicodeDecodeError)):
        return "bad_header"
    return type(exc).__name__.lower()


@dataclass
class ArchiveProgress:
    """Where a read got to: records seen, and the error that ended it early (if any)."""

    records: int = 0
    error: str | None = None  # ``archive_read_error_<kind>``
    error_detail: str | None = None
    error_offset: int | None = None  # byte offset of the record that could not be read


def iter_page_records(
    stream: BinaryIO, source_name: str = "", stats: StepStats | None = None, progress: ArchiveProgress | None = None
) -> Iterator[PageRecord]:
    """Page records of one WARC or WAT stream; every other record is a counted reason.

    A record whose body cannot be parsed is counted (``record_error``) and skipped. An error
    of warcio's iterator itself (it cannot find the next record) ends the stream: it is
    counted as ``archive_read_error_<kind>`` and noted in ``progress`` with its offset.
    """
    stats = stats if stats is not None else StepStats()
    progress = progress if progress is not None else ArchiveProgress()
    it = ArchiveIterator(stream, arc2warc=True)
    records = iter(it)
    while True:
        try:
            record = next(records)
        except StopIteration:
            return
        except Exception as exc:  # warcio's own iteration: a bad gzip member, header or format  # noqa: BLE001
            kind = error_kind(exc)
            progress.error, progress.error_detail = f"{ARCHIVE_ERROR}_{kind}", str(exc).strip()[:300]
            progress.error_offset = _offset(it)
            stats.drop(progress.error)
            log.warning(
                "%s: archive read stopped at byte %s after %d records: %s",
                source_name,
                progress.error_offset,
                progress.records,
                kind,
            )
            return
        progress.records += 1
        offset = _offset(it)
        try:
            page = _record_page(record, offset, stats)
        except Exception as exc:  # one corrupt record must not lose the rest of the archive  # noqa: BLE001
            stats.drop("record_error")
            log.warning(
                "skipping unreadable %s record at %s in %s: %s",
                record.rec_type,
                offset,
                source_name,
                type(exc).__name__,
            )
            continue
        if page is not None:
            stats.keep()
            yield page


def _offset(it: ArchiveIterator) -> int | None:
    # the start of the current record; get_record_offset() would read the record to its end
    offset = getattr(it, "offset", None)
    return int(offset) if isinstance(offset, int) else None


def capture_rank(page: PageRecord, c4_time: datetime | None, order: int) -> tuple:
    """The join's capture rule (``pages/join.py``): HTML 200 first, then closest to the C4
    timestamp, then archive order and offset."""
    preferred = page.status == 200 and "html" in (page.mime or "")
    if page.capture_time is not None and c4_time is not None:
        distance = abs((page.capture_time - c4_time).total_seconds())
    else:
        distance = float(2**62)
    return (not preferred, distance, order, page.offset if page.offset is not None else -1)


def build_page_index(
    archives: Iterable[str], wanted: Iterable[str] | Mapping[str, Any], opener: Callable[[str], BinaryIO]
) -> dict[str, PageRecord]:
    """Page records for the normalized URLs in ``wanted`` (a set, or ``{key: (url, c4 timestamp)}``),
    one per URL by the join's capture rule.

    Reads every archive: fine for a handful of files (tests, one-off lookups); a crawl goes
    through the ``page_records`` assets and the Dask join (``pages/join.py``) instead.
    """
    times = (
        {k: parse_time(v[1] if isinstance(v, tuple) else v) for k, v in wanted.items()}
        if isinstance(wanted, Mapping)
        else dict.fromkeys(wanted)
    )
    index: dict[str, tuple[tuple, PageRecord]] = {}
    for order, path in enumerate(archives):
        with opener(path) as stream:
            for page in iter_page_records(stream, path):
                key = normalize_url(page.url)
                if key in times:
                    rank = capture_rank(page, times[key], order)
                    if key not in index or rank < index[key][0]:
                        index[key] = (rank, page)
    return {k: page for k, (_, page) in index.items()}
