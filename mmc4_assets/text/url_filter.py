"""MMC4's candidate image URL filter: extension allow-list and keyword block-list."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from urllib.parse import urlsplit

MMC4_EXTENSIONS = ("png", "jpg", "jpeg")
MMC4_BLOCKED_KEYWORDS = ("logo", "button", "icon", "plugin", "widget")


@dataclass(frozen=True)
class UrlFilter:
    extensions: tuple[str, ...] = MMC4_EXTENSIONS
    blocked_keywords: tuple[str, ...] = MMC4_BLOCKED_KEYWORDS

    def reason(self, url: str) -> str | None:
        """None when the URL is a candidate, otherwise a stable drop reason."""
        try:
            parts = urlsplit(url)
        except ValueError:
            return "invalid_url"
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return "invalid_url"
        ext = posixpath.splitext(parts.path.lower())[1].lstrip(".")
        if ext not in self.extensions:
            return "bad_extension"
        lowered = url.lower()
        if any(k in lowered for k in self.blocked_keywords):
            return "keyword"
        return None
