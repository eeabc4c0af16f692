"""Common Crawl as a page source: a local CDX index server and a crawl bucket on loopback S3.

The sample's WARC and WAT are laid out as Common Crawl lays out its crawl
(``crawl-data/CC-MAIN-2019-18/segments/.../warc/...warc.gz``) in a moto bucket, and a
small server on 127.0.0.1 answers the CDX JSON API of index.commoncrawl.org for their
records (url, timestamp, filename, offset, length, status, mime). raw_c4 without any
local archive must then find the same pages as raw_c4 over the archives themselves.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import dagster as dg
import pytest
from warcio.archiveiterator import ArchiveIterator

from mmc4_assets.defs.partitions import shards
from mmc4_assets.defs.raw_c4 import raw_c4, raw_c4_documents_well_formed
from mmc4_assets.defs.resources import CommonCrawlConfig, sample_resources
from mmc4_assets.pages.archives import normalize_url
from mmc4_assets.pages.cc_index import (
    Capture,
    CommonCrawlPages,
    CommonCrawlSettings,
    bounded_map,
    cdx_timestamp,
    choose_capture,
)
from mmc4_assets.pages.recovery import CC_PAGES_TABLE
from mmc4_assets.sample.server import sample_page_archives
from mmc4_assets.stats import StepStats
from mmc4_assets.storage import ShardStore
from test_s3_support import s3_server  # noqa: F401  (fixture)

SHARD = "c4-sample.00000-of-00001"
COLLECTION = "CC-MAIN-2019-18"
CRAWL_BUCKET, OUT_BUCKET = "commoncrawl", "mmc4-cc"
SEGMENT = f"crawl-data/{COLLECTION}/segments/1555578517558.8"
FILES = {  # sample archive -> where Common Crawl would keep it
    "sample-pages.warc.gz": f"{SEGMENT}/warc/{COLLECTION}-20190418101243-20190418123243-00000.warc.gz",
    "sample-pages.wat.gz": f"{SEGMENT}/wat/{COLLECTION}-20190418101243-20190418123243-00000.warc.wat.gz",
}


def build_cdx(paths) -> list[dict]:
    """CDX lines for the page records of the archives, in archive order (as CC's index is built)."""
    rows = []
    for path in paths:
        with open(path, "rb") as fh:
            it = ArchiveIterator(fh)
            for record in it:
                url = record.rec_headers.get_header("WARC-Target-URI")
                kind = record.rec_type
                mime = ""
                if kind == "response" and record.http_headers is not None:
                    mime = (record.http_headers.get_header("Content-Type") or "").split(";")[0]
                    status = record.http_headers.get_statuscode()
                elif kind == "metadata":
                    mime, status = "text/html", "200"  # a WAT envelope describes an HTML response
                record.content_stream().read()
                if kind not in ("response", "metadata") or not url:
                    continue
                date = record.rec_headers.get_header("WARC-Date")
                rows.append(
                    {
                        "urlkey": normalize_url(url),
                        "timestamp": cdx_timestamp(date),
                        "url": url,
                        "mime": mime,
                        "status": status,
                        "filename": FILES[path.name],
                        "offset": str(it.get_record_offset()),
                        "length": str(it.get_record_length()),
                    }
                )
    return rows


class CdxServer:
    """``GET /{collection}-index?url=...&output=json`` on 127.0.0.1, like pywb's CDX API."""

    def __init__(self, rows, fail_urls=()):
        self.rows, self.fail_urls = rows, set(fail_urls)
        self.requests, self.in_flight, self.max_in_flight = 0, 0, 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                with server._lock:
                    server.requests += 1
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(0.01)  # long enough for concurrent lookups to overlap
                    self._answer()
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _answer(self):
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                url = query.get("url", [""])[0]
                if parts.path != f"/{COLLECTION}-index" or query.get("output") != ["json"]:
                    return self._send(400, b'{"message": "bad request"}')
                if url in server.fail_urls:
                    return self._send(503, b"Slow Down")
                hits = [r for r in server.rows if r["urlkey"] == normalize_url(url)]
                if not hits:
                    return self._send(404, json.dumps({"message": f"No Captures found for: {url}"}).encode())
                self._send(200, b"".join(json.dumps(r).encode() + b"\n" for r in hits))

            def _send(self, status, body):
                self.send_response(status)
                self.send_header("Content-Type", "text/x-ndjson")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def crawl(s3_server):
    s3_server.create_bucket(CRAWL_BUCKET)
    client = s3_server.client()
    for path in sample_page_archives():
        client.upload_file(str(path), CRAWL_BUCKET, FILES[path.name])
    rows = build_cdx(sample_page_archives())
    with CdxServer(rows) as server:
        yield server, rows


def _cc_config(s3_server, server, **kw) -> CommonCrawlConfig:
    return CommonCrawlConfig(
        index_url=server.url,
        collections=[COLLECTION],
        archive_root=f"s3://{CRAWL_BUCKET}/",
        endpoint_url=s3_server.endpoint,
        concurrency=4,
        **kw,
    )


def _run_raw_c4(resources):
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(shards.name, [SHARD])
    return dg.materialize(
        [raw_c4, raw_c4_documents_well_formed],
        partition_key=SHARD,
        instance=instance,
        resources=resources,
        raise_on_error=False,
    )


def test_capture_choice_and_timestamps():
    def cap(ts, status="200", mime="text/html"):
        return Capture("https://a.test/", ts, f"f{ts}", 0, 10, status, mime)

    assert cdx_timestamp("2019-04-25T12:57:54Z") == "20190425125754"
    assert cdx_timestamp(None) is None and cdx_timestamp("soon") is None
    caps = [
        cap("20190101000000"),
        cap("20190420000000"),
        cap("20190425000000", status="404"),
        cap("20190426000000", mime="image/jpeg"),
    ]
    assert choose_capture(caps, "20190425125754").timestamp == "20190420000000"
    assert choose_capture(caps, None).timestamp == "20190101000000"
    assert choose_capture(caps[2:], "20190425125754") is None


def test_bounded_map_keeps_at_most_n_in_flight():
    lock, state = threading.Lock(), {"now": 0, "max": 0}

    def work(i):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.005)
        with lock:
            state["now"] -= 1
        return i * 2

    assert sorted(bounded_map(work, range(40), 3)) == [i * 2 for i in range(40)]
    assert 1 < state["max"] <= 3


def test_lookups_run_concurrently_and_failures_are_counted(crawl, s3_server):
    server, rows = crawl
    page_urls = sorted({r["url"] for r in rows if r["filename"].endswith(".warc.gz")})[:6]
    settings = CommonCrawlSettings(
        index_url=server.url,
        collections=(COLLECTION,),
        archive_root=f"s3://{CRAWL_BUCKET}/",
        storage_options={"endpoint_url": s3_server.endpoint},
        concurrency=4,
        retries=1,
        backoff=0.01,
    )
    server.fail_urls = {page_urls[0]}
    wanted = {normalize_url(u): (u, "2019-04-25T00:00:00Z") for u in page_urls}
    wanted["https://nowhere.test/"] = ("https://nowhere.test/", None)
    stats = StepStats()
    before = server.requests
    try:
        with CommonCrawlPages(settings) as cc:
            results = {r.key: r for r in cc.lookup_many(wanted, stats)}
    finally:
        server.fail_urls = set()
    assert server.max_in_flight > 1  # not one sequential round trip per URL
    assert server.requests - before == len(wanted) + 1  # the 503 was retried once
    assert results[normalize_url(page_urls[0])].error == "index_error"
    assert results["https://nowhere.test/"].page is None and results["https://nowhere.test/"].error is None
    assert stats.dropped == {"index_error": 1, "not_in_crawl": 1}
    assert stats.kept == len(page_urls) - 1
    found = results[normalize_url(page_urls[1])]
    assert found.capture.filename.startswith(SEGMENT) and found.page.url == page_urls[1]


def test_raw_c4_from_common_crawl_matches_raw_c4_from_archives(crawl, s3_server, tmp_path):
    server, _ = crawl
    s3_server.create_bucket(OUT_BUCKET)
    local = _run_raw_c4(sample_resources(str(tmp_path)))
    root = f"s3://{OUT_BUCKET}/cc-run"
    resources = sample_resources(
        root, page_archives=[], s3=s3_server.s3_resource(), common_crawl=_cc_config(s3_server, server)
    )
    before = server.requests
    via_cc = _run_raw_c4(resources)
    assert local.success and via_cc.success
    store = ShardStore(root, s3_server.storage_options())
    want = ShardStore(tmp_path).read_table("raw_c4", SHARD)
    got = store.read_table("raw_c4", SHARD)
    assert got.drop("page_source").equals(want.drop("page_source"))
    quarantine = ShardStore(tmp_path).read_table("raw_c4_quarantine", SHARD)
    assert store.read_table("raw_c4_quarantine", SHARD).equals(quarantine)
    md = via_cc.get_asset_materialization_events()[0].step_materialization_data.materialization.metadata
    assert md["page_archives"].value == 0 and md["cc_pages_kept"].value == md["page_records_found"].value
    asked = server.requests - before
    assert asked > 0
    cache = store.read_table(CC_PAGES_TABLE, SHARD)
    assert cache.filter(cache["filename"].is_not_null())["filename"].str.starts_with(SEGMENT).all()

    # a retried run answers from the shard's cache table, not from the index
    again = _run_raw_c4(resources)
    assert again.success and server.requests - before == asked
    assert store.read_table("raw_c4", SHARD).equals(got)
