"""The shard-level fetch step against a hostile server: final statuses, overlap, resumability.

Everything runs against an aiohttp server this module starts on 127.0.0.1. The network
safety net, the fake DNS and the 'public.test' alias come from test_fetch_http: no test
here can connect anywhere but 127.0.0.1, even if the address policy regressed.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from aiohttp import web
from PIL import Image

from mmc4_assets.fetch import pipeline as pipeline_mod
from mmc4_assets.fetch.http import FetchSettings
from mmc4_assets.fetch.images import ImageLimits
from mmc4_assets.fetch.log import LOG_TABLE, FetchLog, fingerprint, reusable
from mmc4_assets.fetch.shard import FETCHED_SCHEMA, FetchProgress, ShardOptions, fetch_documents
from mmc4_assets.stats import StepStats
from mmc4_assets.storage import ShardStore
from mmc4_assets.testing.loopback import LoopbackServer
from test_fetch_http import fake_dns, loopback_only_network, public_alias  # noqa: F401  (fixtures)
from test_images import png_bomb

pytestmark = pytest.mark.timeout(30)
SHARD = "shard-0"


def _jpeg(w: int, h: int, color=(200, 30, 30), fmt: str = "JPEG") -> bytes:
    img = Image.linear_gradient("L").resize((w, h)).convert("RGB")
    img.paste(color, (0, 0, w // 3, h // 3))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


OK_JPEG = _jpeg(400, 300)
BIG_JPEG = _jpeg(2000, 1200, (20, 200, 20))
PNG_BODY = _jpeg(300, 300, (0, 0, 255), "PNG")
TIFF_BODY = _jpeg(300, 300, (0, 0, 255), "TIFF")
BODIES = {  # name -> (body, Content-Type)
    "ok.jpg": (OK_JPEG, "image/jpeg"),
    "big.jpg": (BIG_JPEG, "image/jpeg"),
    "png-behind.jpg": (PNG_BODY, "image/jpeg"),  # the bytes decide: fine
    "octet.jpg": (OK_JPEG, "application/octet-stream"),
    "html-behind.jpg": (b"<!doctype html><html><body>gone</body></html>", "image/jpeg"),
    "jpeg-as-html.jpg": (OK_JPEG, "text/html"),
    "truncated.jpg": (BIG_JPEG[: len(BIG_JPEG) // 2], "image/jpeg"),
    "bomb.png": (png_bomb(20000, 20000), "image/png"),
    "tiny.jpg": (_jpeg(100, 100), "image/jpeg"),
    "wide.jpg": (_jpeg(900, 300), "image/jpeg"),
    "scan.tif": (TIFF_BODY, "image/tiff"),
    "empty.jpg": (b"", "image/jpeg"),
}


class HostileServer(LoopbackServer):
    """Counts requests per path and query; names resolve to it through 'public.test'."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        super().__init__(
            routes=[
                web.get("/img/{name}", self.img),
                web.get("/status/{code}", self.status),
                web.get("/flaky/{key}", self.flaky),
                web.get("/slow/{key}", self.slow),
                web.get("/trickle", self.trickle),
                web.get("/huge", self.huge),
                web.get("/huge-chunked", self.huge_chunked),
                web.get("/loop", self.loop_redirect),
                web.get("/goto", self.goto),
                web.get("/optout", self.optout),
                web.get("/reset", self.reset),
            ],
            middlewares=[self._count],
        )

    def url(self, path: str, host: str = "public.test") -> str:
        return super().url(path, host)

    @web.middleware
    async def _count(self, request: web.Request, handler):
        self.hits[request.path_qs] += 1
        return await handler(request)

    async def img(self, request: web.Request) -> web.Response:
        body, ctype = BODIES[request.match_info["name"]]
        return web.Response(body=body, headers={"Content-Type": ctype})

    async def status(self, request: web.Request) -> web.Response:
        headers = {"Retry-After": request.query["after"]} if "after" in request.query else {}
        return web.Response(status=int(request.match_info["code"]), headers=headers)

    async def flaky(self, request: web.Request) -> web.Response:
        if self.hits[request.path_qs] == 1:
            return web.Response(status=503)
        return web.Response(body=OK_JPEG, content_type="image/jpeg")

    async def slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("delay", 0.2)))
        key = request.match_info["key"]
        body = _SLOW_BODIES.setdefault(key, _jpeg(320, 240, (hash(key) % 256, 90, 160)))
        return web.Response(body=body, content_type="image/jpeg")

    async def trickle(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        await resp.prepare(request)
        try:
            await resp.write(PNG_BODY[:16])
            for _ in range(100):
                await resp.write(b"x")
                await asyncio.sleep(0.1)
        except (ConnectionError, RuntimeError):
            pass
        return resp

    async def huge(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        resp.content_length = 100 * 1024 * 1024
        await resp.prepare(request)
        await resp.write(OK_JPEG[:1024])
        await asyncio.sleep(1)
        return resp

    async def huge_chunked(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            await resp.write(OK_JPEG[:16])
            for _ in range(1024):
                await resp.write(b"\0" * 65536)
        except (ConnectionError, RuntimeError):
            pass
        return resp

    async def loop_redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def goto(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def optout(self, request: web.Request) -> web.Response:
        return web.Response(body=OK_JPEG, headers={"Content-Type": "image/jpeg", "X-Robots-Tag": request.query["tag"]})

    async def reset(self, request: web.Request) -> web.Response:
        request.transport.close()  # hang up without an answer
        await asyncio.sleep(0.1)
        return web.Response(status=500)


_SLOW_BODIES: dict[str, bytes] = {}


@pytest.fixture(scope="module")
def hostile():
    srv = HostileServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def server(hostile):
    hostile.hits.clear()
    return hostile


def fast_settings(**overrides) -> FetchSettings:
    base = dict(
        allow_private=False,
        connect_timeout=1.0,
        read_timeout=1.0,
        total_timeout=2.0,
        retries=1,
        backoff_base=0.01,
        max_retry_after=0.3,
        max_bytes=2 * 1024 * 1024,
        per_host_rps=0.0,
        user_agent="mmc4-assets-test/1.0",
    )
    base.update(overrides)
    return FetchSettings(**base)


def run_shard(
    store: ShardStore,
    docs: list[dict],
    settings: FetchSettings | None = None,
    limits: ImageLimits = ImageLimits(),
    **options,
) -> tuple[list[dict], StepStats, FetchProgress]:
    stats, seen = StepStats(), []
    rows = list(
        fetch_documents(
            iter(docs),
            store=store,
            shard=SHARD,
            settings=settings or fast_settings(),
            limits=limits,
            stats=stats,
            options=ShardOptions(**options),
            total=sum(len(d["image_urls"]) for d in docs),
            on_progress=seen.append,
        )
    )
    return rows, stats, seen[-1]


def docs_for(urls: list[str], per_doc: int = 3) -> list[dict]:
    return [
        {"doc_id": f"doc:{i // per_doc}", "image_urls": urls[i : i + per_doc]} for i in range(0, len(urls), per_doc)
    ]


# --------------------------------------------------------------------------- final statuses

ADVERSARIAL = {  # path on the hostile server -> the row's final status
    "/img/ok.jpg": "ok",
    "/img/big.jpg": "ok",
    "/img/png-behind.jpg": "ok",
    "/img/octet.jpg": "ok",
    "/flaky/a": "ok",
    "/img/html-behind.jpg": "not_an_image",
    "/img/jpeg-as-html.jpg": "not_an_image",
    "/img/truncated.jpg": "undecodable",
    "/img/bomb.png": "decompression_bomb",
    "/img/tiny.jpg": "too_small",
    "/img/wide.jpg": "bad_aspect",
    "/img/scan.tif": "unsupported_format",
    "/img/empty.jpg": "empty_body",
    "/huge": "too_large",
    "/huge-chunked": "too_large",
    "/trickle": "timeout",
    "/loop": "too_many_redirects",
    "/goto?to=http://10.0.0.1/a.jpg": "blocked_address",
    "/goto?to=http://169.254.169.254/latest/meta-data/": "blocked_address",
    "/goto?to=http://localhost/a.jpg": "blocked_address",
    "/status/404": "http_404",
    "/status/410": "http_410",
    "/status/429?after=0.1": "http_429",
    "/status/503": "http_503",
    "/status/500?after=soon": "http_500",
    "/optout?tag=noai": "opted_out",
    "/optout?tag=otherbot:%20noai": "ok",
    "/reset": "connection_error",
}


@pytest.mark.usefixtures("public_alias")
@pytest.mark.timeout(20)
def test_every_hostile_candidate_ends_with_its_final_status(server, tmp_path):
    store = ShardStore(tmp_path)
    urls = [server.url(path) for path in ADVERSARIAL] + ["ftp://x/a.jpg", "http://10.0.0.2/b.jpg"]
    start = time.monotonic()
    rows, stats, progress = run_shard(store, docs_for(urls))
    assert time.monotonic() - start < 12  # every URL is bounded by total_timeout
    got = {row["raw_url"]: row["status"] for row in rows}
    want = {server.url(p): s for p, s in ADVERSARIAL.items()} | {
        "ftp://x/a.jpg": "invalid_url",
        "http://10.0.0.2/b.jpg": "blocked_address",
    }
    assert got == want
    assert [(r["doc_id"], r["image_index"]) for r in rows] == [
        (f"doc:{i // 3}", i % 3) for i in range(len(urls))
    ]  # document order
    # 4xx never retried; 5xx/429 retried once (retries=1); a policy refusal never reaches a server
    assert server.hits["/status/404"] == 1 and server.hits["/status/410"] == 1
    assert server.hits["/status/503"] == 2 and server.hits["/status/429?after=0.1"] == 2
    assert server.hits["/goto?to=http://10.0.0.1/a.jpg"] == 1
    # counts for the asset metadata, and ok rows carry a stored, content-addressed image
    assert stats.kept == sum(s == "ok" for s in want.values()) == progress.ok
    assert stats.dropped["blocked_address"] == 4 and progress.done == len(urls)
    for row in rows:
        if row["status"] == "ok":
            assert max(row["width"], row["height"]) <= 800 and row["phash"]
            stored = store.get_blob(row["image_name"])
            assert Image.open(io.BytesIO(stored)).size == (row["width"], row["height"])
        else:
            assert row["image_name"] is None
    big = next(r for r in rows if r["raw_url"].endswith("/img/big.jpg"))
    assert (big["orig_width"], big["width"], big["height"]) == (2000, 800, 480)
    assert set(rows[0]) == set(FETCHED_SCHEMA)
    _assert_only_blobs_and_log(tmp_path)


def _assert_only_blobs_and_log(root: Path) -> None:
    """Nothing outside images/{xx}/{sha256}.jpg and tables/fetch_log/{shard}/part-*.parquet."""
    for path in root.rglob("*"):
        if path.is_dir():
            continue
        rel = path.relative_to(root).parts
        if rel[0] == "images":
            assert len(rel) == 3 and rel[2][:2] == rel[1] and len(rel[2]) == 68, rel
            int(rel[2][:64], 16)
        else:
            assert rel[:3] == ("tables", LOG_TABLE, SHARD) and rel[3].startswith("part-"), rel


@pytest.mark.timeout(15)
def test_duplicate_urls_in_a_shard_cost_one_request(server, tmp_path):
    url = server.url("/slow/dup?delay=0.2", host="127.0.0.1")
    docs = [{"doc_id": "a", "image_urls": [url, url]}, {"doc_id": "b", "image_urls": [url]}]
    rows, stats, _ = run_shard(ShardStore(tmp_path), docs, fast_settings(allow_private=True))
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert len({r["image_name"] for r in rows}) == 1
    assert server.hits["/slow/dup?delay=0.2"] == 1


# --------------------------------------------------------------------------- overlap and bounds


class RecordingStore(ShardStore):
    def __init__(self, root):
        super().__init__(root)
        self.put_times: list[float] = []

    def put_blob(self, digest, data, ext="jpg"):
        self.put_times.append(time.monotonic())
        return super().put_blob(digest, data, ext)


@pytest.mark.timeout(15)
def test_decoding_starts_while_slow_downloads_are_still_running(server, tmp_path):
    store = RecordingStore(tmp_path)
    slow = server.url("/slow/head?delay=1.5", host="127.0.0.1")
    fast = [server.url(f"/slow/f{i}?delay=0", host="127.0.0.1") for i in range(4)]
    start = time.monotonic()
    rows, _, _ = run_shard(
        store,
        [{"doc_id": "d", "image_urls": [slow, *fast]}],
        fast_settings(allow_private=True, total_timeout=5.0, read_timeout=3.0),
    )
    assert [r["raw_url"] for r in rows] == [slow, *fast]  # still in input order
    assert all(r["status"] == "ok" for r in rows)
    assert len(store.put_times) == 5
    assert min(store.put_times) - start < 1.0  # a fast image was stored before the slow one arrived


@pytest.mark.timeout(15)
def test_a_busy_decode_pool_throttles_downloads(server, tmp_path, monkeypatch):
    gate = threading.Event()
    real = pipeline_mod.process_image

    def blocked(body, limits):
        gate.wait(10)
        return real(body, limits)

    monkeypatch.setattr(pipeline_mod, "process_image", blocked)
    urls = [server.url(f"/slow/b{i}?delay=0", host="127.0.0.1") for i in range(12)]
    result: list = []
    worker = threading.Thread(
        target=lambda: result.append(
            run_shard(ShardStore(tmp_path), docs_for(urls), fast_settings(allow_private=True, concurrency=3), workers=1)
        )
    )
    worker.start()
    time.sleep(0.8)
    in_memory = sum(n for path, n in server.hits.items() if path.startswith("/slow/b"))
    gate.set()
    worker.join(10)
    assert in_memory <= 3  # bodies held = concurrency: the rest wait instead of piling up
    rows, _, _ = result[0]
    assert [r["status"] for r in rows] == ["ok"] * 12


def test_progress_reports_done_rate_and_errors(server, tmp_path):
    urls = [server.url("/img/ok.jpg", host="127.0.0.1"), server.url("/status/404", host="127.0.0.1")]
    calls: list[FetchProgress] = []
    list(
        fetch_documents(
            docs_for(urls),
            store=ShardStore(tmp_path),
            shard=SHARD,
            settings=fast_settings(allow_private=True),
            limits=ImageLimits(),
            stats=StepStats(),
            options=ShardOptions(progress_every=0.0),
            total=2,
            on_progress=calls.append,
        )
    )
    final = calls[-1]
    assert (final.done, final.total, final.ok, final.reused) == (2, 2, 1, 0)
    assert final.error_rate == 0.5 and final.rate > 0
    assert "2/2 (100%) images" in final.describe() and "50.0% not ok" in final.describe()


# --------------------------------------------------------------------------- resumability

RESUME_PATHS = ["/img/ok.jpg", "/img/big.jpg", "/status/404", "/status/503", "/optout?tag=noai", "/img/tiny.jpg"]


def _requests(server) -> Counter:
    return Counter({p: n for p, n in server.hits.items() if n})


@pytest.mark.timeout(20)
def test_rerun_reuses_the_log_according_to_refetch(server, tmp_path):
    store = ShardStore(tmp_path)
    urls = [server.url(p, host="127.0.0.1") for p in RESUME_PATHS]
    docs = docs_for(urls)
    settings = fast_settings(allow_private=True)
    first, _, _ = run_shard(store, docs, settings)
    statuses = [r["status"] for r in first]
    assert statuses == ["ok", "ok", "http_404", "http_503", "opted_out", "too_small"]

    def rerun(refetch: str) -> Counter:
        server.hits.clear()
        rows, stats, progress = run_shard(store, docs, settings, refetch=refetch)
        assert [r["status"] for r in rows] == statuses
        assert [r["image_name"] for r in rows] == [r["image_name"] for r in first]
        assert stats.seen == len(urls)
        return _requests(server)

    # default: only the transient failure is asked again (retries=1: two requests)
    assert rerun("transient") == Counter({"/status/503": 2})
    assert rerun("none") == Counter()
    assert rerun("failures") == Counter({"/status/404": 1, "/status/503": 2, "/optout?tag=noai": 1, "/img/tiny.jpg": 1})
    assert set(rerun("all")) == set(RESUME_PATHS)


def test_rerun_refetches_an_ok_row_whose_image_is_gone(server, tmp_path):
    store = ShardStore(tmp_path)
    urls = [server.url("/img/ok.jpg", host="127.0.0.1"), server.url("/img/big.jpg", host="127.0.0.1")]
    settings = fast_settings(allow_private=True)
    first, _, _ = run_shard(store, docs_for(urls), settings)
    store.blob_path(first[1]["image_name"][:64]).unlink()
    server.hits.clear()
    rows, _, progress = run_shard(store, docs_for(urls), settings, refetch="none")
    assert _requests(server) == Counter({"/img/big.jpg": 1})
    assert progress.reused == 1 and store.blob_path(rows[1]["image_name"][:64]).exists()


def test_changed_decisive_settings_invalidate_the_log(server, tmp_path):
    store = ShardStore(tmp_path)
    urls = [server.url("/img/ok.jpg", host="127.0.0.1")]
    settings = fast_settings(allow_private=True)
    run_shard(store, docs_for(urls), settings)
    server.hits.clear()
    rows, _, _ = run_shard(store, docs_for(urls), settings, limits=ImageLimits(min_side=350), refetch="none")
    assert rows[0]["status"] == "too_small" and _requests(server) == Counter({"/img/ok.jpg": 1})
    assert fingerprint(settings, ImageLimits()) != fingerprint(settings, ImageLimits(min_side=350))
    # timeouts only change transient outcomes: same fingerprint
    assert fingerprint(settings, ImageLimits()) == fingerprint(
        fast_settings(allow_private=True, total_timeout=99.0), ImageLimits()
    )


def test_finished_shard_compacts_its_log(server, tmp_path):
    store = ShardStore(tmp_path)
    urls = [server.url(f"/slow/c{i}?delay=0", host="127.0.0.1") for i in range(9)]
    run_shard(store, docs_for(urls), fast_settings(allow_private=True), log_flush_rows=2)
    flog = FetchLog(store, SHARD, "unused")
    assert len(flog.parts()) == 1 and flog.read_all().height == 9


@pytest.mark.parametrize(
    "status, none, transient, failures",
    [
        ("ok", True, True, True),
        ("http_404", True, True, False),
        ("http_503", True, False, False),
        ("http_429", True, False, False),
        ("timeout", True, False, False),
        ("connection_error", True, False, False),
        ("dns_error", True, True, False),
        ("blocked_address", True, True, False),
        ("opted_out", True, True, False),
    ],
)
def test_refetch_policy(status, none, transient, failures):
    assert (
        reusable(status, "none"),
        reusable(status, "transient"),
        reusable(status, "failures"),
        reusable(status, "all"),
    ) == (none, transient, failures, False)
    with pytest.raises(ValueError):
        reusable(status, "sometimes")


# --------------------------------------------------------------------------- crash and resume

CHILD = textwrap.dedent("""
    import json, sys
    import aiohappyeyeballs
    from mmc4_assets.fetch.http import FetchSettings
    from mmc4_assets.fetch.images import ImageLimits
    from mmc4_assets.fetch.shard import ShardOptions, fetch_documents
    from mmc4_assets.stats import StepStats
    from mmc4_assets.storage import ShardStore

    real_start = aiohappyeyeballs.start_connection

    async def loopback_only(addr_infos, **kwargs):  # the same safety net as the tests
        outside = [info[4][0] for info in addr_infos if info[4][0] != "127.0.0.1"]
        if outside:
            sys.stderr.write(f"VIOLATION {outside}\\n")
            raise SystemExit(3)
        return await real_start(addr_infos, **kwargs)

    aiohappyeyeballs.start_connection = loopback_only
    root, shard, docs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    settings = FetchSettings(allow_private=True, concurrency=2, per_host=2, per_host_rps=0)
    options = ShardOptions(log_flush_rows=3, log_flush_seconds=0.2)
    for row in fetch_documents(docs, store=ShardStore(root), shard=shard, settings=settings,
                               limits=ImageLimits(), stats=StepStats(), options=options):
        pass
    print("DONE")
""")


@pytest.mark.timeout(40)
def test_sigkill_mid_shard_loses_nothing_already_logged(server, tmp_path):
    urls = [server.url(f"/slow/k{i}?delay=0.15", host="127.0.0.1") for i in range(40)]
    docs = docs_for(urls, per_doc=4)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    root = tmp_path / "store"
    child = subprocess.Popen(
        [sys.executable, str(script), str(root), SHARD, json.dumps(docs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    log_dir = root / "tables" / LOG_TABLE / SHARD
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if log_dir.exists() and len(list(log_dir.glob("part-*.parquet"))) >= 2:
                break
            assert child.poll() is None, child.stderr.read().decode()
            time.sleep(0.05)
        else:
            pytest.fail("the child never flushed its fetch log")
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # no chance to flush or compact
        child.wait(10)
    out, err = child.communicate()
    assert b"DONE" not in out and b"VIOLATION" not in err

    store = ShardStore(root)
    logged = FetchLog(store, SHARD, "unused").read_all()
    logged_paths = {u.split(f":{server.port}", 1)[1] for u in logged["raw_url"].to_list()}
    assert 0 < len(logged_paths) < len(urls)
    requested_before = set(_requests(server))
    assert logged_paths <= requested_before

    server.hits.clear()
    stats = StepStats()
    with store.table_writer("fetched_images", SHARD, FETCHED_SCHEMA) as out:
        for row in fetch_documents(
            docs,
            store=store,
            shard=SHARD,
            stats=stats,
            # same decisive settings as the child: its log applies
            settings=FetchSettings(allow_private=True, per_host=4, per_host_rps=0),
            limits=ImageLimits(),
        ):
            out.append(row)
    requested_again = set(_requests(server))
    assert not (requested_again & logged_paths)  # nothing already logged was fetched again
    assert requested_again == {u.split(f":{server.port}", 1)[1] for u in urls} - logged_paths
    table = store.read_table("fetched_images", SHARD)
    assert table.height == len(urls) and set(table["status"]) == {"ok"}
    assert table["raw_url"].to_list() == urls
    for name in table["image_name"]:
        assert store.blob_path(name[:64]).exists()
