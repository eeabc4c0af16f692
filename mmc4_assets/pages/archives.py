"""Read page records from WARC and Common Crawl WAT files with warcio.

C4 keeps no HTML, so a document's images come from an archive of the same URL: either
the HTML itself (WARC ``response`` records) or Common Crawl's pre-extracted link lists
(WAT ``metadata`` records, the route MMC4 took). Both yield the page's image URLs in
document order, resolved to absolute URLs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urljoin, urlsplit, urlunsplit

from selectolax.lexbor import LexborHTMLParser
from warcio.archiveiterator import ArchiveIterator

log = logging.getLogger(__name__)

# HTML beyond this is not read: pages that large are almost always binary mislabels.
MAX_HTML_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class PageRecord:
    url: str
    image_urls: tuple[str, ...]
    source: str  # "warc" or "wat"


def normalize_url(url: str) -> str:
    """Key used to match a C4 URL to an archive record: fragment dropped, scheme/host lower-cased."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return url.strip()
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", parts.query, ""))


def _usable(src: str | None) -> bool:
    return bool(src) and not src.strip().lower().startswith(("data:", "javascript:", "about:"))


def _absolute(base: str, src: str) -> str | None:
    try:
        url = urljoin(base, src.strip())
    except ValueError:
        return None
    return url.split("#", 1)[0]


def _ordered_unique(urls: Iterable[str | None]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for url in urls:
        if url and url not in seen:
            seen[url] = None
    return tuple(seen)


def images_from_html(html: str | bytes, page_url: str) -> tuple[str, ...]:
    """Absolute <img> URLs in document order; lazy-loading pages keep the real one in data-src."""
    tree = LexborHTMLParser(html)
    base = page_url
    base_node = tree.css_first("base[href]")
    if base_node is not None and base_node.attributes.get("href"):
        base = _absolute(page_url, base_node.attributes["href"]) or page_url
    urls = []
    for node in tree.css("img"):
        attrs = node.attributes
        src = attrs.get("src")
        if not _usable(src):
            src = attrs.get("data-src")
        if _usable(src):
            urls.append(_absolute(base, src))
    return _ordered_unique(urls)


def images_from_wat(envelope: dict) -> tuple[str, str] | tuple[None, None]:
    """(page url, image-urls) from one WAT JSON envelope, or (None, None) if not an HTML response."""
    env = envelope.get("Envelope", {})
    header = env.get("WARC-Header-Metadata", {})
    if header.get("WARC-Type", "response") != "response":
        return None, None
    url = header.get("WARC-Target-URI")
    html_meta = env.get("Payload-Metadata", {}).get("HTTP-Response-Metadata", {}).get("HTML-Metadata")
    if not url or html_meta is None:
        return None, None
    base = html_meta.get("Head", {}).get("Base") or url
    base = _absolute(url, base) or url
    links = html_meta.get("Links", [])
    urls = [_absolute(base, link["url"]) for link in links
            if link.get("path") == "IMG@/src" and _usable(link.get("url"))]
    return url, _ordered_unique(urls)


def _is_html(record) -> bool:
    headers = record.http_headers
    if headers is None:
        return False
    ctype = (headers.get_header("Content-Type") or "").lower()
    return "html" in ctype


def iter_page_records(stream: BinaryIO, source_name: str = "") -> Iterator[PageRecord]:
    """Page records of one WARC or WAT stream; unreadable records are skipped and logged."""
    for record in ArchiveIterator(stream, arc2warc=True):
        rtype = record.rec_type
        try:
            if rtype == "response" and _is_html(record):
                url = record.rec_headers.get_header("WARC-Target-URI")
                body = record.content_stream().read(MAX_HTML_BYTES)
                yield PageRecord(url, images_from_html(body, url), "warc")
            elif rtype == "metadata":
                ctype = (record.rec_headers.get_header("Content-Type") or "").lower()
                if "json" not in ctype:
                    continue
                payload = json.loads(record.content_stream().read())
                url, images = images_from_wat(payload)
                if url is not None:
                    yield PageRecord(url, images, "wat")
        except Exception as exc:  # one corrupt record must not lose the rest of the archive
            log.warning("skipping unreadable %s record in %s: %s", rtype, source_name, exc)


def build_page_index(archives: Iterable[str], wanted: set[str],
                     opener: Callable[[str], BinaryIO]) -> dict[str, PageRecord]:
    """Page records for the normalized URLs in ``wanted``; the first record of a URL wins."""
    index: dict[str, PageRecord] = {}
    for path in archives:
        with opener(path) as stream:
            for page in iter_page_records(stream, path):
                key = normalize_url(page.url)
                if key in wanted and key not in index:
                    index[key] = page
    return index
