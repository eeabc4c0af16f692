"""Tests for the bundled sample: generator determinism, committed data, archives, image server."""

from __future__ import annotations

import gzip
import http.client
import io
import json
import socket
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from PIL import Image
from warcio.archiveiterator import ArchiveIterator

import sample_build as build  # tests/sample_build.py: the generator lives with the tests, its data in the package
from mmc4_assets.sample.server import (
    IMAGE_URL_PREFIX,
    SAMPLE_DIR,
    SampleImageServer,
    load_expected,
    sample_images_dir,
    sample_page_archives,
    sample_shard_path,
)


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _gunzip(path: Path) -> bytes:
    # Multi-member aware, so this also works for per-record gzipped WARCs.
    return gzip.decompress(path.read_bytes())


@pytest.fixture(scope="module")
def fresh_builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    # verify=False: the pHash self-check does not change any output and costs time.
    a = tmp_path_factory.mktemp("sample-a")
    b = tmp_path_factory.mktemp("sample-b")
    build.build(a, verify=False)
    build.build(b, verify=False)
    return a, b


@pytest.fixture(scope="module")
def expected() -> dict:
    return load_expected()


# --- generator ---------------------------------------------------------------


def test_generator_is_deterministic(fresh_builds: tuple[Path, Path]) -> None:
    a, b = fresh_builds
    assert _files(a) == _files(b)
    # Same process, same libraries: every file must be byte-identical.
    for rel in sorted(_files(a)):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_committed_data_matches_fresh_build(fresh_builds: tuple[Path, Path]) -> None:
    fresh, _ = fresh_builds
    assert _files(SAMPLE_DIR) == _files(fresh), "run `python -m tests.sample_build`"
    assert load_expected(SAMPLE_DIR) == load_expected(fresh)
    # Compare decompressed content: gzip bytes may differ across zlib versions.
    assert _gunzip(sample_shard_path()) == _gunzip(sample_shard_path(fresh))
    for committed, rebuilt in zip(sample_page_archives(), sample_page_archives(fresh)):
        assert _gunzip(committed) == _gunzip(rebuilt), committed.name


def test_shard_lines_match_expected_outcomes(expected: dict) -> None:
    lines = _gunzip(sample_shard_path()).decode("utf-8").split("\n")
    assert lines[-1] == ""  # trailing newline
    lines = lines[:-1]
    assert len(lines) == len(expected["lines"]) == expected["totals"]["lines"]
    for raw, truth in zip(lines, expected["lines"]):
        if truth["raw_c4"] == "blank_line":
            assert raw.strip() == ""
            continue
        if truth["raw_c4"] == "malformed_json":
            with pytest.raises(json.JSONDecodeError):
                json.loads(raw)
            continue
        doc = json.loads(raw)
        if truth["raw_c4"] == "missing_field":
            assert "url" not in doc and "text" in doc
            continue
        assert list(doc) == ["text", "timestamp", "url"]
        assert doc["url"] == truth["url"]
        assert urlsplit(doc["url"]).hostname.endswith(".test")


def test_expected_totals_cover_the_required_cases(expected: dict) -> None:
    totals = expected["totals"]
    for outcome in ("ok", "malformed_json", "missing_field", "no_page_record", "no_candidate_images"):
        assert totals["raw_c4"].get(outcome, 0) >= 1, outcome
    for outcome in ("ok", "http_404", "not_an_image", "undecodable", "too_small", "bad_aspect"):
        assert totals["fetch"].get(outcome, 0) >= 1, outcome
    assert set(totals["url_filtered"]) == {"bad_extension", "keyword"}
    assert totals["in_document_duplicates"] >= 2
    assert totals["dropped_no_images"] >= 1
    urls = [line["url"] for line in expected["lines"] if line["url"]]
    assert len(urls) - len(set(urls)) == 1  # exactly one duplicated page URL
    ok = [c for line in expected["lines"] for c in line["candidates"] if c["fetch"] == "ok"]
    assert any(c["size"] != c["original_size"] for c in ok)  # the resize case


# --- archives ------------------------------------------------------------------


def _records(path: Path) -> list[tuple[str, dict[str, str], bytes, object]]:
    out = []
    with path.open("rb") as fh:
        for record in ArchiveIterator(fh):
            headers = dict(record.rec_headers.headers)
            out.append((record.rec_type, headers, record.content_stream().read(), record.http_headers))
    return out


class _ImgCollector(HTMLParser):
    """Minimal reference extractor: <base href> and <img src> in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.base: str | None = None
        self.srcs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "base" and values.get("href") and self.base is None:
            self.base = values["href"]
        elif tag == "img" and values.get("src"):
            self.srcs.append(values["src"])


def _page_images_from_archives() -> dict[str, list[str]]:
    """page URL -> resolved, de-duplicated image URLs, read back from both archives."""
    warc_path, wat_path = sample_page_archives()
    pages: dict[str, list[str]] = {}
    for rec_type, headers, body, http_headers in _records(warc_path):
        content_type = http_headers.get_header("Content-Type", "") if http_headers else ""
        if rec_type != "response" or not content_type.startswith("text/html"):
            continue
        url = headers["WARC-Target-URI"]
        parser = _ImgCollector()
        parser.feed(body.decode("utf-8"))
        pages[url] = [urljoin(parser.base or url, src) for src in parser.srcs]
    for rec_type, _headers, body, _ in _records(wat_path):
        if rec_type != "metadata":
            continue
        envelope = json.loads(body)["Envelope"]
        if envelope["WARC-Header-Metadata"]["WARC-Type"] != "response":
            continue
        url = envelope["WARC-Header-Metadata"]["WARC-Target-URI"]
        links = envelope["Payload-Metadata"]["HTTP-Response-Metadata"]["HTML-Metadata"]["Links"]
        pages[url] = [urljoin(url, link["url"]) for link in links if link["path"] == "IMG@/src"]
    return {url: list(dict.fromkeys(urls)) for url, urls in pages.items()}


def test_warcio_reads_every_record() -> None:
    warc_path, wat_path = sample_page_archives()
    warc = _records(warc_path)
    assert warc[0][0] == "warcinfo"
    kinds = [r[0] for r in warc]
    assert kinds.count("request") >= 2 and kinds.count("response") >= 20
    content_types = {r[3].get_header("Content-Type") for r in warc if r[0] == "response"}
    assert any(ct.startswith("text/plain") for ct in content_types)  # the robots.txt to skip

    wat = _records(wat_path)
    assert wat[0][0] == "warcinfo"
    envelopes = [json.loads(body)["Envelope"] for kind, _, body, _ in wat if kind == "metadata"]
    assert all(h["Content-Type"] == "application/json" for kind, h, _, _ in wat if kind == "metadata")
    types = [e["WARC-Header-Metadata"]["WARC-Type"] for e in envelopes]
    assert types.count("response") >= 5 and "request" in types
    # Every record id is unique (fixed, derived ids must not collide).
    ids = [h["WARC-Record-ID"] for _, h, _, _ in warc + wat]
    assert len(ids) == len(set(ids))


def test_archives_agree_with_expected(expected: dict) -> None:
    pages = _page_images_from_archives()
    for line in expected["lines"]:
        if line["raw_c4"] in ("blank_line", "malformed_json", "missing_field"):
            continue
        if line["raw_c4"] == "no_page_record":
            assert line["url"] not in pages
            continue
        listed = [c["url"] for c in line["candidates"]] + [f["url"] for f in line["url_filtered"]]
        assert sorted(pages[line["url"]]) == sorted(listed), line["url"]
        # Candidates keep page order.
        order = [u for u in pages[line["url"]] if u in {c["url"] for c in line["candidates"]}]
        assert order == [c["url"] for c in line["candidates"]], line["url"]


def test_image_files_agree_with_expected(expected: dict) -> None:
    """Classify the served files independently of the builder's tables."""
    root = sample_images_dir()
    for line in expected["lines"]:
        for cand in line["candidates"]:
            assert cand["url"].startswith(IMAGE_URL_PREFIX)
            path = root / cand["path"]
            if cand["fetch"] == "http_404":
                assert not path.exists(), path
                continue
            data = path.read_bytes()
            if cand["fetch"] == "not_an_image":
                assert data.lstrip().startswith(b"<")
                continue
            image = Image.open(io.BytesIO(data))
            if cand["fetch"] == "undecodable":
                with pytest.raises(OSError):
                    image.load()
                continue
            image.load()
            w, h = image.size
            if cand["fetch"] == "too_small":
                assert min(w, h) < 150
            elif cand["fetch"] == "bad_aspect":
                assert min(w, h) >= 150 and max(w, h) / min(w, h) > 2
            else:
                assert cand["fetch"] == "ok" and [w, h] == cand["original_size"]
                image.thumbnail((800, 800))
                assert list(image.size) == cand["size"]


# --- image server --------------------------------------------------------------


def _get(server: SampleImageServer, path: str) -> tuple[int, str, bytes]:
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", path)  # sent verbatim, so traversal attempts reach the server
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        conn.close()


def test_server_serves_sample_images() -> None:
    with SampleImageServer() as server:
        assert server.address[0] == "127.0.0.1"
        assert server.base_url.startswith("http://127.0.0.1:")
        assert server.rewrites == {IMAGE_URL_PREFIX: server.base_url}

        status, ctype, body = _get(server, "/garden/tomato-01.jpg")
        assert (status, ctype) == (200, "image/jpeg")
        assert body == (sample_images_dir() / "garden/tomato-01.jpg").read_bytes()

        assert _get(server, "/garden/tomato-02.png")[:2] == (200, "image/png")
        # Content type follows the bytes, not the .jpg name.
        assert _get(server, "/birds/feeder-cam.jpg")[1].startswith("text/html")
        # Query strings are ignored; the upper-case extension is a real file name.
        assert _get(server, "/camping/tent-pitch.JPG?w=600&fit=crop")[:2] == (200, "image/jpeg")
        assert _get(server, "/travel/lisbon/miradouro-view.jpg")[0] == 404
        assert _get(server, "/no/such/file.png")[0] == 404
        assert _get(server, "/")[0] == 404  # directories are not listed


def test_server_rejects_paths_outside_its_directory(tmp_path: Path) -> None:
    served = tmp_path / "images"
    served.mkdir()
    (served / "ok.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 16)
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    (served / "link.txt").symlink_to(secret)

    with SampleImageServer(served) as server:
        assert _get(server, "/ok.png")[0] == 200
        for attempt in (
            "/../secret.txt",
            "/%2e%2e/secret.txt",
            "/images/../../secret.txt",
            "//" + secret.as_posix().lstrip("/"),
            "/" + secret.as_posix(),
            "/link.txt",
        ):
            assert _get(server, attempt)[0] == 404, attempt


def test_server_stops_cleanly() -> None:
    server = SampleImageServer().start()
    host, port = server.address
    thread = server._thread
    assert _get(server, "/garden/tomato-01.jpg")[0] == 200
    server.stop()
    assert not server.running
    assert thread is not None and not thread.is_alive()
    with pytest.raises(OSError):
        socket.create_connection((host, port), timeout=1).close()
    server.stop()  # idempotent
