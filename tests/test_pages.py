import gzip
import io
import json
from pathlib import Path

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from mmc4_assets.pages.archives import build_page_index, images_from_html, iter_page_records, normalize_url
from mmc4_assets.pages.raw_docs import document_rows, iter_c4_lines
from mmc4_assets.stats import StepStats
from mmc4_assets.text.url_filter import UrlFilter

HTML = b"""<html><head><base href="https://cdn.test/assets/"></head><body>
<img src="a.jpg"><p>text</p><img data-src="lazy.png" src="data:image/gif;base64,AAAA">
<img src="https://other.test/b.JPG"><img><img src="a.jpg"></body></html>"""


def _warc(records) -> bytes:
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True)
    for kind, url, payload, ctype in records:
        if kind == "response":
            http = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
            rec = writer.create_warc_record(url, "response", payload=io.BytesIO(payload), http_headers=http)
        else:
            rec = writer.create_warc_record(url, "metadata", payload=io.BytesIO(payload), warc_content_type=ctype)
        writer.write_record(rec)
    return buf.getvalue()


def _wat(url, links):
    return json.dumps(
        {
            "Envelope": {
                "WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Target-URI": url},
                "Payload-Metadata": {"HTTP-Response-Metadata": {"HTML-Metadata": {"Links": links}}},
            }
        }
    ).encode()


def test_html_images_in_order_resolved_against_base_and_deduplicated():
    assert images_from_html(HTML, "https://site.test/post") == (
        "https://cdn.test/assets/a.jpg",
        "https://cdn.test/assets/lazy.png",
        "https://other.test/b.JPG",
    )


def test_warc_and_wat_records_both_yield_pages():
    data = _warc(
        [
            ("response", "https://site.test/post", HTML, "text/html; charset=utf-8"),
            ("response", "https://site.test/robots.txt", b"User-agent: *", "text/plain"),
            (
                "metadata",
                "https://wat.test/page",
                _wat(
                    "https://wat.test/page",
                    [
                        {"path": "A@/href", "url": "https://wat.test/next"},
                        {"path": "IMG@/src", "url": "/img/one.png"},
                        {"path": "IMG@/src", "url": "https://wat.test/img/two.jpg"},
                    ],
                ),
                "application/json",
            ),
            ("metadata", "https://bad.test/", b"{not json", "application/json"),
        ]
    )
    pages = list(iter_page_records(io.BytesIO(data)))
    assert [(p.url, p.source) for p in pages] == [("https://site.test/post", "warc"), ("https://wat.test/page", "wat")]
    assert pages[1].image_urls == ("https://wat.test/img/one.png", "https://wat.test/img/two.jpg")


def test_page_index_keeps_only_wanted_urls(tmp_path):
    path = tmp_path / "p.warc.gz"
    path.write_bytes(
        _warc(
            [
                ("response", "https://Site.test/post#frag", HTML, "text/html"),
                ("response", "https://site.test/other", HTML, "text/html"),
            ]
        )
    )
    index = build_page_index([str(path)], {normalize_url("https://site.test/post")}, lambda p: Path(p).open("rb"))  # noqa: SIM115 (the callee closes it)
    assert list(index) == ["https://site.test/post"]


def test_document_rows_quarantine_every_bad_line():
    lines = [
        json.dumps({"text": "One. Two.", "timestamp": "t", "url": "https://site.test/post"}),
        "{broken",
        json.dumps({"text": "x", "timestamp": "t"}),
        "",
        json.dumps({"text": "Lonely.", "timestamp": "t", "url": "https://nowhere.test/"}),
        json.dumps({"text": "   ", "timestamp": "t", "url": "https://site.test/post"}),
    ]
    shard = gzip.compress(("\n".join(lines) + "\n").encode())
    from mmc4_assets.pages.archives import PageRecord

    pages = {
        "https://site.test/post": PageRecord(
            "https://site.test/post", ("https://cdn.test/a.jpg", "https://cdn.test/logo.png"), "warc"
        )
    }
    docs, imgs, quarantined = StepStats(), StepStats(), []
    rows = list(
        document_rows(iter_c4_lines(io.BytesIO(shard)), pages, "s", UrlFilter(), docs, imgs, quarantined.append)
    )
    assert [r["doc_id"] for r in rows] == ["s:0000000"]
    assert rows[0]["text_list"] == ["One.", "Two."] and rows[0]["image_urls"] == ["https://cdn.test/a.jpg"]
    assert [q["reason"] for q in quarantined] == [
        "malformed_json",
        "missing_field",
        "blank_line",
        "no_page_record",
        "no_sentences",
    ]
    assert quarantined[0]["raw"] == "{broken\n" and quarantined[3]["raw"] is None
    assert imgs.dropped["keyword"] == 1 and docs.seen == len(lines)


def test_document_rows_quarantine_too_long_documents_before_splitting(monkeypatch):
    from mmc4_assets.pages import raw_docs
    from mmc4_assets.pages.archives import PageRecord

    split = raw_docs.split_sentences
    monkeypatch.setattr(
        raw_docs,
        "split_sentences",
        lambda text, **kw: split(text, **kw) if len(text) <= 40 else pytest.fail("split a long text"),
    )
    lines = [
        json.dumps({"text": t, "timestamp": "t", "url": "https://site.test/post"})
        for t in ("One. Two.", "A long one. " * 10, "x" * 40)
    ]
    pages = {"https://site.test/post": PageRecord("https://site.test/post", ("https://cdn.test/a.jpg",), "warc")}
    docs, quarantined = StepStats(), []
    rows = list(
        document_rows(
            iter_c4_lines(io.BytesIO(gzip.compress("\n".join(lines).encode()))),
            pages,
            "s",
            UrlFilter(),
            docs,
            StepStats(),
            quarantined.append,
            max_chars=40,
        )
    )
    assert [r["line_no"] for r in rows] == [0, 2]  # exactly max_chars passes
    assert [(q["line_no"], q["reason"]) for q in quarantined] == [(1, "too_long")]
    assert docs.dropped == {"too_long": 1}
    monkeypatch.undo()
    unlimited = list(
        document_rows(
            iter_c4_lines(io.BytesIO(gzip.compress(lines[1].encode()))),
            pages,
            "s",
            UrlFilter(),
            StepStats(),
            StepStats(),
            [].append,
            max_chars=None,
            splitter="pysbd",
        )
    )
    assert len(unlimited) == 1


def test_truncated_gzip_ends_the_shard_without_losing_earlier_lines():
    lines = "".join(
        json.dumps({"text": f"Doc {i}.", "timestamp": "t", "url": f"https://s.test/{i}"}) + "\n" for i in range(200)
    )
    data = gzip.compress(lines.encode())
    parsed = list(iter_c4_lines(io.BytesIO(data[: len(data) // 2])))
    assert parsed[-1].error == "truncated_source"
    assert all(p.error is None for p in parsed[:-1]) and len(parsed) > 1


def test_page_index_picks_the_capture_closest_to_the_c4_time_html_200_first(tmp_path):
    def capture(date, status="200 OK", img="x.jpg"):
        buf = io.BytesIO()
        writer = WARCWriter(buf, gzip=True)
        http = StatusAndHeaders(status, [("Content-Type", "text/html")], protocol="HTTP/1.1")
        writer.write_record(
            writer.create_warc_record(
                "https://site.test/post",
                "response",
                payload=io.BytesIO(f'<img src="{img}">'.encode()),
                http_headers=http,
                warc_headers_dict={"WARC-Date": date},
            )
        )
        return buf.getvalue()

    paths = []
    for i, data in enumerate(
        [
            capture("2019-01-01T00:00:00Z", img="far.jpg"),
            capture("2019-04-25T00:00:00Z", status="404 Not Found", img="404.jpg"),
            capture("2019-04-20T00:00:00Z", img="near.jpg"),
        ]
    ):
        paths.append(tmp_path / f"{i}.warc.gz")
        paths[-1].write_bytes(data)
    wanted = {"https://site.test/post": ("https://site.test/post", "2019-04-25T12:00:00Z")}
    index = build_page_index([str(p) for p in paths], wanted, lambda p: Path(p).open("rb"))  # noqa: SIM115 (the callee closes it)
    assert index["https://site.test/post"].image_urls == ("https://site.test/near.jpg",)
