"""Loopback HTTP server for the bundled sample images, plus paths into the sample data.

The sample documents reference images on ``https://img.mmc4-sample.test/``, a host that
does not exist. Tests and local runs start a :class:`SampleImageServer` and hand its
``rewrites`` mapping to the image fetcher, which swaps the URL prefix at fetch time only;
the published ``raw_url`` keeps the original https URL.

Usage::

    from mmc4_assets.sample.server import SampleImageServer

    with SampleImageServer() as server:
        fetch_images(..., url_rewrites=server.rewrites)

Stdlib only, so importing this module is cheap and never pulls in Pillow or warcio.
"""

from __future__ import annotations

import json
import threading
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

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
    """Ground truth written by the builder (see ``build.py`` for the layout)."""
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


class _SampleRequestHandler(BaseHTTPRequestHandler):
    """Serves files below ``root``; anything else is a 404."""

    server_version = "mmc4-sample"

    def __init__(self, *args: Any, root: Path, **kwargs: Any) -> None:
        self.root = root
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: the pipeline makes many requests and tests capture stderr."""

    def _resolve(self) -> Path | None:
        # The query string is ignored, like a static file server would (photo.JPG?w=600).
        path = unquote(urlsplit(self.path).path)
        if not path.startswith("/"):
            return None
        rel = path[1:]
        parts = PurePosixPath(rel).parts
        # Reject traversal and anything that looks absolute ("//etc/passwd", "C:\...").
        if (
            not rel
            or rel.startswith("/")
            or "\\" in rel
            or "\x00" in rel
            or ":" in rel
            or ".." in parts
        ):
            return None
        candidate = (self.root / rel).resolve()
        # Symlinks could still point outside the root; check the resolved path.
        if not candidate.is_relative_to(self.root) or not candidate.is_file():
            return None
        return candidate

    def _serve(self, send_body: bool) -> None:
        target = self._resolve()
        if target is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        body = target.read_bytes()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", sniff_content_type(body[:16]))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)


class _QuietThreadingHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up early (timeouts, cancelled fetches) are not our problem."""


class SampleImageServer:
    """Serve ``directory`` (default: the bundled sample images) on 127.0.0.1, random port.

    Use as a context manager, or call :meth:`start` / :meth:`stop` explicitly.
    """

    HOST = "127.0.0.1"

    def __init__(self, directory: Path | str | None = None) -> None:
        self.directory = Path(directory if directory is not None else sample_images_dir()).resolve()
        self._httpd: _QuietThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "SampleImageServer":
        if self._httpd is not None:
            return self
        if not self.directory.is_dir():
            raise FileNotFoundError(f"sample image directory not found: {self.directory}")
        handler = partial(_SampleRequestHandler, root=self.directory)
        # Port 0 lets the OS pick a free port, so parallel test runs never collide.
        self._httpd = _QuietThreadingHTTPServer((self.HOST, 0), handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="sample-image-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> "SampleImageServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._httpd is not None

    @property
    def address(self) -> tuple[str, int]:
        if self._httpd is None:
            raise RuntimeError("SampleImageServer is not running")
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def base_url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}/"

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
