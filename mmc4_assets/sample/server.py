"""Loopback HTTP server for the bundled sample images, plus paths into the sample data.

The sample documents reference images on ``https://img.mmc4-sample.test/``, a host that
does not exist. Tests and local runs start a :class:`SampleImageServer` and hand its
``rewrites`` mapping to the image fetcher, which swaps the URL prefix at fetch time only;
the published ``raw_url`` keeps the original https URL.

Usage::

    from mmc4_assets.sample.server import SampleImageServer

    with SampleImageServer() as server:
        fetch_images(..., url_rewrites=server.rewrites)

The server is the project's one loopback server (:mod:`mmc4_assets.testing.loopback`, aiohttp);
importing this module never pulls in Pillow or warcio.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from aiohttp import web

from mmc4_assets.testing.loopback import LoopbackServer

SAMPLE_DIR: Path = Path(__file__).resolve().parent / "data"
IMAGE_URL_PREFIX = "https://img.mmc4-sample.test/"

SHARD_RELPATH = "c4/c4-sample.00000-of-00001.json.gz"
WARC_RELPATH = "pages/sample-pages.warc.gz"
WAT_RELPATH = "pages/sample-pages.wat.gz"
IMAGES_RELPATH = "images"
EXPECTED_RELPATH = "expected.json"


def sample_shard_path(data_dir: Path = SAMPLE_DIR) -> Path:
    """The single C4-format shard (gzipped JSON lines)."""
    return Path(data_dir) / SHARD_RELPATH


def sample_page_archives(data_dir: Path = SAMPLE_DIR) -> list[Path]:
    """The page archives: the WARC of HTML responses and the Common Crawl style WAT."""
    return [Path(data_dir) / WARC_RELPATH, Path(data_dir) / WAT_RELPATH]


def sample_images_dir(data_dir: Path = SAMPLE_DIR) -> Path:
    """Directory mirrored by ``IMAGE_URL_PREFIX`` (URL path == path below this dir)."""
    return Path(data_dir) / IMAGES_RELPATH


def load_expected(data_dir: Path = SAMPLE_DIR) -> dict[str, Any]:
    """Ground truth written by the builder (see ``tests/sample_build.py`` for the layout)."""
    return json.loads((Path(data_dir) / EXPECTED_RELPATH).read_text(encoding="utf-8"))


def sniff_content_type(head: bytes) -> str:
    """Content type from the leading bytes, not the file name.

    The sample deliberately has a ``.jpg`` that is really an HTML page; the fetcher
    must see what a misconfigured real server would send for it.
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head.lstrip()[:1] == b"<":
        return "text/html; charset=utf-8"
    return "application/octet-stream"


def resolve_below(root: Path, raw_path: str) -> Path | None:
    """The file below ``root`` a request path names, or None (then the answer is a 404).

    The query string is ignored, like a static file server would (photo.JPG?w=600).
    """
    path = unquote(urlsplit(raw_path).path)
    if not path.startswith("/"):
        return None
    rel = path[1:]
    parts = PurePosixPath(rel).parts
    # Reject traversal and anything that looks absolute ("//etc/passwd", "C:\\...").
    if not rel or rel.startswith("/") or "\\" in rel or "\x00" in rel or ":" in rel or ".." in parts:
        return None
    candidate = (root / rel).resolve()
    # Symlinks could still point outside the root; check the resolved path.
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    return candidate


class SampleImageServer(LoopbackServer):
    """Serve ``directory`` (default: the bundled sample images) on 127.0.0.1, random port.

    Files below the directory answer GET and HEAD; anything else is a 404. Use as a
    context manager, or call :meth:`start` / :meth:`stop` explicitly.
    """

    def __init__(self, directory: Path | str | None = None) -> None:
        self.directory = Path(directory if directory is not None else sample_images_dir()).resolve()
        super().__init__(routes=[web.get("/{path:.*}", self._serve)], name="sample-image-server")

    def start(self) -> SampleImageServer:
        if not self.running and not self.directory.is_dir():
            raise FileNotFoundError(f"sample image directory not found: {self.directory}")
        super().start()
        return self

    def __enter__(self) -> SampleImageServer:
        return self.start()

    async def _serve(self, request: web.Request) -> web.Response:
        # raw_path: the request target as sent, so traversal attempts are judged unnormalised
        target = resolve_below(self.directory, request.raw_path)
        if target is None:
            raise web.HTTPNotFound()
        body = target.read_bytes()
        return web.Response(body=body, headers={"Content-Type": sniff_content_type(body[:16])})

    @property
    def rewrites(self) -> dict[str, str]:
        """URL prefix map for the fetcher: sample image host -> this server."""
        return {IMAGE_URL_PREFIX: self.base_url}

    def url_for(self, url: str) -> str:
        """Apply :attr:`rewrites` to one URL (handy in tests and ad-hoc scripts)."""
        for prefix, replacement in self.rewrites.items():
            if url.startswith(prefix):
                return replacement + url[len(prefix) :]
        return url
