"""Tests for the HTTP download layer.

Everything talks only to servers started here on 127.0.0.1; DNS is replaced by
a fake table (autouse fixture) so no test can ever trigger a real lookup.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import ipaddress
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import aiohappyeyeballs
import pytest
from aiohttp import web
from PIL import Image

from mmc4_assets.fetch import http as fh
from mmc4_assets.fetch.http import (
    BlockedAddressError,
    FetchSettings,
    GuardedResolver,
    fetch_all,
    fetch_many,
    is_blocked_address,
    is_image_content_type,
    is_opted_out,
    iter_fetch,
    literal_ip,
    parse_retry_after,
    rewrite_url,
)
from mmc4_assets.fetch.sniff import sniff_image_format
from mmc4_assets.testing.loopback import LoopbackServer

pytestmark = pytest.mark.timeout(15)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (2, 2), (255, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()
UA = "mmc4-assets-test/1.0"
JPEG_MAGIC = b"\xff\xd8\xff\xe0"


GZIP_BOMB = gzip.compress(PNG[:8] + bytes(64 * 1024 * 1024), compresslevel=9)


def img_body(name: str) -> bytes:
    """What /img/{name} serves: a JPEG signature (the download layer sniffs) and the name."""
    return JPEG_MAGIC + f"image:{name}".encode()


def settings(**overrides) -> FetchSettings:
    """Fast, loopback-allowed defaults for tests against the local server."""
    base = dict(
        allow_private=True,
        backoff_base=0.01,
        connect_timeout=2.0,
        read_timeout=2.0,
        total_timeout=5.0,
        user_agent=UA,
        per_host_rps=0.0,  # the politeness tests set their own rate
    )
    base.update(overrides)
    return FetchSettings(**base)


# --------------------------------------------------------------------------- test server


class ImageServer(LoopbackServer):
    """The hostile and friendly endpoints the download layer is tested against."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.hits: Counter[str] = Counter()
        self.bytes_sent: dict[str, int] = {}
        super().__init__(
            routes=[
                web.get("/img/{name}", self.img),
                web.get("/pixel.png", self.pixel),
                web.get("/status/{code}", self.status),
                web.get("/flaky/{key}", self.flaky),
                web.get("/ratelimited/{key}", self.ratelimited),
                web.get("/trickle/{key}", self.trickle),
                web.get("/huge-cl", self.huge_content_length),
                web.get("/huge-chunked", self.huge_chunked),
                web.get("/html", self.html),
                web.get("/empty", self.empty),
                web.get("/redirect/{n}", self.redirect),
                web.get("/loop", self.loop_redirect),
                web.get("/goto", self.goto),
                web.get("/robots", self.robots),
                web.get("/html-as-jpeg", self.html_as_jpeg),
                web.get("/gzip-bomb", self.gzip_bomb),
            ],
            middlewares=[self._record],
        )

    def reset(self) -> None:
        self.requests.clear()
        self.hits.clear()
        self.bytes_sent.clear()

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    @web.middleware
    async def _record(self, request: web.Request, handler):
        self.requests.append((request.path_qs, dict(request.headers)))
        self.hits[request.path] += 1
        return await handler(request)

    # handlers ----------------------------------------------------------------
    async def img(self, request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("delay", 0)))
        body = img_body(request.match_info["name"])
        return web.Response(body=body, content_type="image/jpeg")

    async def pixel(self, request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    async def status(self, request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="nope")

    async def flaky(self, request: web.Request) -> web.Response:
        """Fail ``fails`` times with ``code`` (default 503), then serve the image."""
        fails = int(request.query.get("fails", 2))
        if self.hits[request.path] <= fails:
            return web.Response(status=int(request.query.get("code", 503)))
        return web.Response(body=PNG, content_type="image/png")

    async def ratelimited(self, request: web.Request) -> web.Response:
        if self.hits[request.path] == 1:
            headers = {"Retry-After": request.query.get("after", "1")}
            return web.Response(status=429, headers=headers)
        return web.Response(body=PNG, content_type="image/png")

    async def trickle(self, request: web.Request) -> web.StreamResponse:
        """Headers and a PNG signature at once, then one byte per ``interval`` seconds."""
        interval = float(request.query.get("interval", 0.1))
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        await resp.prepare(request)
        try:
            await resp.write(PNG[:8])
            for _ in range(200):
                await resp.write(b"x")
                await asyncio.sleep(interval)
        except (ConnectionError, RuntimeError):
            pass  # client gave up, as it should
        return resp

    async def huge_content_length(self, request: web.Request) -> web.StreamResponse:
        """Claims 100 MiB; sends 1 KiB and stalls."""
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        resp.content_length = 100 * 1024 * 1024
        await resp.prepare(request)
        await resp.write(b"x" * 1024)
        await asyncio.sleep(1)
        return resp

    async def huge_chunked(self, request: web.Request) -> web.StreamResponse:
        """Streams up to 64 MiB in chunks, counting what it managed to send."""
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        chunk = b"x" * 65536
        self.bytes_sent["chunked"] = 0
        try:
            await resp.write(PNG[:8])
            for _ in range(1024):
                await resp.write(chunk)
                self.bytes_sent["chunked"] += len(chunk)
        except (ConnectionError, RuntimeError):
            pass
        return resp

    async def html(self, request: web.Request) -> web.Response:
        return web.Response(text="<html></html>", content_type="text/html")

    async def empty(self, request: web.Request) -> web.Response:
        return web.Response(body=b"", content_type="image/png")

    async def redirect(self, request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if n == 0:
            return web.Response(body=PNG, content_type="image/png")
        raise web.HTTPFound(f"/redirect/{n - 1}")  # relative Location on purpose

    async def loop_redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def goto(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def html_as_jpeg(self, request: web.Request) -> web.StreamResponse:
        """A 64 MiB HTML page that claims to be a JPEG."""
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        chunk = b"<html>" + b"a" * 65530
        self.bytes_sent["html"] = 0
        try:
            for _ in range(1024):
                await resp.write(chunk)
                self.bytes_sent["html"] += len(chunk)
        except (ConnectionError, RuntimeError):
            pass
        return resp

    async def gzip_bomb(self, request: web.Request) -> web.Response:
        """~64 KiB on the wire that inflates to a PNG signature plus 64 MiB of zeros."""
        headers = {"Content-Type": "image/png", "Content-Encoding": "gzip"}
        return web.Response(body=GZIP_BOMB, headers=headers)

    async def robots(self, request: web.Request) -> web.Response:
        headers = {"X-Robots-Tag": request.query["tag"]}
        return web.Response(body=PNG, content_type="image/png", headers=headers)


@pytest.fixture(scope="module")
def _server_instance():
    srv = ImageServer()
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def server(_server_instance):
    _server_instance.reset()
    return _server_instance


@pytest.fixture
def sentinel():
    """A listening socket nobody should ever connect to; yields its port.

    Connections queue in the backlog even though we never accept, so a
    non-blocking accept() afterwards tells us whether anything got through.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    yield port
    try:
        conn, _ = sock.accept()
        conn.close()
        reached = True
    except BlockingIOError:
        reached = False
    finally:
        sock.close()
    assert not reached, "a blocked fetch opened a connection to the sentinel"


# --------------------------------------------------------------------------- fake DNS

DNS_LOOKUPS: Counter[str] = Counter()
FAKE_DNS = {
    "localhost": ["127.0.0.1"],
    "img.test": ["127.0.0.1"],
    "rebind.test": ["127.0.0.1"],
    "internal.test": ["10.0.0.1", "192.168.1.1"],
    "mixed.test": ["10.0.0.1", "93.184.216.34"],
}


def _resolve_result(host: str, address: str, port: int) -> dict:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return {
        "hostname": host,
        "host": address,
        "port": port,
        "family": family,
        "proto": 0,
        "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
    }


@pytest.fixture(autouse=True)
def fake_dns(monkeypatch):
    """Replace the real lookup for every test: unknown names fail like NXDOMAIN."""

    async def lookup(self, host, port, family):
        DNS_LOOKUPS[host] += 1
        if host == "slowdns.test":  # a resolver that never answers
            await asyncio.sleep(30)
        if host not in FAKE_DNS:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [_resolve_result(host, addr, port) for addr in FAKE_DNS[host]]

    DNS_LOOKUPS.clear()
    monkeypatch.setattr(GuardedResolver, "_lookup", lookup)


@pytest.fixture(autouse=True)
def loopback_only_network(monkeypatch):
    """Safety net: refuse (and fail the test on) any connect not to 127.0.0.1.

    Even if the address policy regressed, a test could then never send traffic
    to 10.0.0.1, 169.254.169.254 or anywhere else off this machine.
    """
    violations = []
    real_start = aiohappyeyeballs.start_connection

    async def start_connection(addr_infos, **kwargs):
        outside = [info[4][0] for info in addr_infos if info[4][0] != "127.0.0.1"]
        if outside:
            violations.extend(outside)
            raise ConnectionRefusedError(f"test network jail: {outside}")
        return await real_start(addr_infos, **kwargs)

    monkeypatch.setattr(aiohappyeyeballs, "start_connection", start_connection)
    yield
    assert not violations, f"attempted connections outside loopback: {violations}"


@pytest.fixture
def public_alias(monkeypatch):
    """'public.test' stands for an allowed public host that happens to be our server.

    It skips the address filter so the *first* hop is allowed with
    allow_private=False; every other name still goes through the real filter.
    """
    original = GuardedResolver.resolve

    async def resolve(self, host, port=0, family=socket.AF_INET):
        if host == "public.test":
            return [_resolve_result(host, "127.0.0.1", port)]
        return await original(self, host, port, family)

    monkeypatch.setattr(GuardedResolver, "resolve", resolve)


# --------------------------------------------------------------------------- basic statuses


def test_ok_image_with_body_and_user_agent(server):
    [r] = fetch_all([server.url("/pixel.png")], settings())
    assert r.status == "ok"
    assert r.http_status == 200
    assert r.body == PNG
    assert r.content_type == "image/png"
    assert r.final_url == server.url("/pixel.png")
    assert r.attempts == 1
    assert r.elapsed_ms > 0
    assert server.requests[0][1]["User-Agent"] == UA


def test_404_is_not_retried(server):
    [r] = fetch_all([server.url("/status/404")], settings(retries=3))
    assert (r.status, r.http_status, r.body, r.attempts) == ("http_404", 404, None, 1)
    assert server.hits["/status/404"] == 1


def test_503_twice_then_ok(server):
    [r] = fetch_all([server.url("/flaky/a?fails=2")], settings(retries=2))
    assert (r.status, r.attempts, r.body) == ("ok", 3, PNG)


def test_503_forever_gives_up_after_retries(server):
    [r] = fetch_all([server.url("/status/503")], settings(retries=2))
    assert (r.status, r.http_status, r.attempts) == ("http_503", 503, 3)
    assert server.hits["/status/503"] == 3


def test_429_honours_retry_after(server):
    start = time.monotonic()
    [r] = fetch_all([server.url("/ratelimited/a?after=1")], settings())
    waited = time.monotonic() - start
    assert (r.status, r.attempts) == ("ok", 2)
    assert 0.9 <= waited < 3


def test_retry_after_is_capped(server):
    start = time.monotonic()
    [r] = fetch_all([server.url("/ratelimited/b?after=100")], settings(max_retry_after=0.2))
    assert (r.status, r.attempts) == ("ok", 2)
    assert time.monotonic() - start < 2


def test_retry_after_beyond_budget_stops_early(server):
    start = time.monotonic()
    cfg = settings(total_timeout=2.0, max_retry_after=10.0)
    [r] = fetch_all([server.url("/ratelimited/c?after=5")], cfg)
    assert (r.status, r.attempts) == ("http_429", 1)
    assert time.monotonic() - start < 1.5


def test_read_timeout_is_retried_then_reported(server):
    start = time.monotonic()
    cfg = settings(read_timeout=0.3, retries=1)
    [r] = fetch_all([server.url("/trickle/a?interval=2")], cfg)
    assert (r.status, r.attempts, r.body) == ("timeout", 2, None)
    assert time.monotonic() - start < 3


def test_total_timeout_bounds_a_slow_trickle(server):
    # Each byte arrives well within read_timeout; only the total budget stops it.
    start = time.monotonic()
    cfg = settings(read_timeout=5.0, total_timeout=1.0, retries=3)
    [r] = fetch_all([server.url("/trickle/b?interval=0.05")], cfg)
    elapsed = time.monotonic() - start
    assert r.status == "timeout"
    assert r.attempts == 1  # no budget left for another try
    assert 0.9 <= elapsed < 2.5


def test_content_length_over_cap_is_too_large_without_reading(server):
    start = time.monotonic()
    [r] = fetch_all([server.url("/huge-cl")], settings(max_bytes=1024 * 1024))
    assert (r.status, r.body) == ("too_large", None)
    assert time.monotonic() - start < 0.9  # did not wait for the stalled body


def test_chunked_body_over_cap_stops_reading(server):
    start = time.monotonic()
    [r] = fetch_all([server.url("/huge-chunked")], settings(max_bytes=256 * 1024))
    assert (r.status, r.body) == ("too_large", None)
    assert time.monotonic() - start < 5
    # The server could not push the whole 64 MiB: we hung up near the cap.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and server.bytes_sent.get("chunked", 0) == 0:
        time.sleep(0.05)
    assert server.bytes_sent["chunked"] < 32 * 1024 * 1024


def test_body_exactly_at_cap_is_ok(server):
    [r] = fetch_all([server.url("/pixel.png")], settings(max_bytes=len(PNG)))
    assert r.status == "ok"


def test_html_is_not_an_image(server):
    [r] = fetch_all([server.url("/html")], settings())
    assert (r.status, r.http_status, r.content_type, r.body) == (
        "not_an_image",
        200,
        "text/html",
        None,
    )


def test_empty_body(server):
    [r] = fetch_all([server.url("/empty")], settings())
    assert r.status == "empty_body"


def test_html_bytes_behind_image_type_stop_after_first_chunk(server):
    start = time.monotonic()
    [r] = fetch_all([server.url("/html-as-jpeg")], settings())
    assert (r.status, r.content_type, r.body) == ("not_an_image", "image/jpeg", None)
    assert time.monotonic() - start < 3
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and server.bytes_sent.get("html", 0) == 0:
        time.sleep(0.05)
    assert server.bytes_sent["html"] < 32 * 1024 * 1024  # we hung up long before 64 MiB


def test_gzip_bomb_is_capped_after_inflating(server):
    [r] = fetch_all([server.url("/gzip-bomb")], settings(max_bytes=1024 * 1024))
    assert (r.status, r.body) == ("too_large", None)


@pytest.mark.parametrize(
    "head, ok",
    [
        (b"\xff\xd8\xff\xdb", True),
        (PNG[:8], True),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", True),
        (b"<!DOCTYPE html>", False),
        (b'{"error": 1}', False),
    ],
)
def test_body_sniffing_decides_not_the_header(head, ok):
    assert (sniff_image_format(head) is not None) is ok


# --------------------------------------------------------------------------- politeness


def test_per_host_rate_limit_spaces_request_starts(server):
    urls = [server.url(f"/img/r{i}") for i in range(6)]
    start = time.monotonic()
    results = fetch_all(urls, settings(per_host_rps=5.0, per_host=8))
    elapsed = time.monotonic() - start
    assert [r.status for r in results] == ["ok"] * 6
    assert 0.9 <= elapsed < 3  # five gaps of 0.2 s


def test_unthrottled_hosts_skip_the_rate_limit(server):
    urls = [server.url(f"/img/u{i}") for i in range(6)]
    start = time.monotonic()
    results = fetch_all(urls, settings(per_host_rps=1.0, unthrottled_hosts=frozenset({"127.0.0.1"})))
    assert [r.status for r in results] == ["ok"] * 6
    assert time.monotonic() - start < 0.9


def test_redirect_hops_and_retries_are_paced_too(server):
    start = time.monotonic()
    [r] = fetch_all([server.url("/redirect/2")], settings(per_host_rps=4.0, max_redirects=5))
    assert r.status == "ok"
    assert time.monotonic() - start >= 0.45  # three requests to one host, 0.25 s apart


# --------------------------------------------------------------------------- redirects


def test_redirect_chain_ok(server):
    [r] = fetch_all([server.url("/redirect/3")], settings(max_redirects=5))
    assert (r.status, r.body, r.attempts) == ("ok", PNG, 1)
    assert r.final_url == server.url("/redirect/0")
    assert server.paths() == ["/redirect/3", "/redirect/2", "/redirect/1", "/redirect/0"]


def test_redirect_chain_longer_than_limit(server):
    [r] = fetch_all([server.url("/redirect/3")], settings(max_redirects=2))
    assert r.status == "too_many_redirects"


def test_redirect_loop(server):
    [r] = fetch_all([server.url("/loop")], settings(max_redirects=5))
    assert r.status == "too_many_redirects"
    assert server.hits["/loop"] == 6  # first request + 5 followed hops


def test_redirect_to_non_http_scheme_is_invalid(server):
    [r] = fetch_all([server.url("/goto?to=ftp://example.invalid/a.jpg")], settings())
    assert r.status == "invalid_url"


# --------------------------------------------------------------------------- SSRF policy


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "localhost", "LOCALHOST.", "127.1", "2130706433", "0x7f.0.0.1", "rebind.test"],
)
def test_private_target_blocked_before_connecting(host, sentinel):
    # 'rebind.test' resolves (fake DNS) to 127.0.0.1: the resolver filter must catch it.
    url = f"http://{host}:{sentinel}/img/a"
    [r] = fetch_all([url], settings(allow_private=False))
    assert r.status == "blocked_address"
    assert r.body is None


def test_name_resolving_only_to_private_ranges_is_blocked(sentinel):
    [r] = fetch_all([f"http://internal.test:{sentinel}/a.jpg"], settings(allow_private=False))
    assert r.status == "blocked_address"


def test_unknown_name_is_dns_error():
    [r] = fetch_all(["http://nxdomain.test/a.jpg"], settings(allow_private=False))
    assert (r.status, r.attempts) == ("dns_error", 1)


def test_dead_domain_is_looked_up_once():
    urls = [f"http://nxdomain.test/{i}.jpg" for i in range(5)]
    results = fetch_all(urls, settings(allow_private=False, per_host=1))
    assert [r.status for r in results] == ["dns_error"] * 5
    assert DNS_LOOKUPS["nxdomain.test"] == 1  # negative cache


def test_stalled_dns_is_a_bounded_timeout():
    start = time.monotonic()
    [r] = fetch_all(["http://slowdns.test/a.jpg"], settings(dns_timeout=0.3, retries=1))
    assert (r.status, r.attempts) == ("timeout", 2)
    assert time.monotonic() - start < 2


def test_name_is_fetched_through_resolver_when_private_allowed(server):
    [r] = fetch_all([server.url("/pixel.png", host="img.test")], settings(allow_private=True))
    assert (r.status, r.body) == ("ok", PNG)


@pytest.mark.usefixtures("public_alias")
def test_allowed_first_hop_works(server):
    [r] = fetch_all([server.url("/pixel.png", host="public.test")], settings(allow_private=False))
    assert (r.status, r.body) == ("ok", PNG)


@pytest.mark.usefixtures("public_alias")
@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:{sentinel}/img/a",
        "http://localhost:{sentinel}/img/a",
        "http://rebind.test:{sentinel}/img/a",
        "http://[::ffff:127.0.0.1]:{sentinel}/img/a",
        "http://10.0.0.1/a.jpg",
        "http://169.254.169.254/latest/meta-data/",
    ],
)
def test_redirect_to_private_address_is_blocked(server, sentinel, target):
    location = target.format(sentinel=sentinel)
    first_hop = server.url(f"/goto?to={location}", host="public.test")
    [r] = fetch_all([first_hop], settings(allow_private=False, retries=2))
    assert r.status == "blocked_address"
    assert r.attempts == 1  # a policy refusal is not retried
    assert server.hits["/goto"] == 1  # only the allowed first hop reached a server


# ------------------------------------------------------------- opt-out, rewrites, urls


@pytest.mark.parametrize(
    "tag",
    ["noai", "NoImageAI", "noindex, noai", "mmc4-assets-test: noai", "IMG2DATASET: noimageai"],
)
def test_x_robots_tag_opt_out(server, tag):
    url = server.url(f"/robots?tag={tag}")
    [r] = fetch_all([url], settings())
    assert (r.status, r.body) == ("opted_out", None)
    [r] = fetch_all([url], settings(respect_opt_out=False))
    assert (r.status, r.body) == ("ok", PNG)


@pytest.mark.parametrize("tag", ["noindex", "otherbot: noai", "googlebot: noindex, noimageai"])
def test_harmless_or_foreign_x_robots_tag_is_ok(server, tag):
    # a directive scoped to another bot does not apply to us (img2dataset's rule)
    [r] = fetch_all([server.url(f"/robots?tag={tag}")], settings())
    assert r.status == "ok"


def test_url_rewrites_longest_prefix_wins_and_raw_url_is_kept(server):
    rewrites = {
        "http://mirror.test/": server.url("/status/404?"),
        "http://mirror.test/images/": server.url("/img/"),
    }
    raw = "http://mirror.test/images/cat"
    [r] = fetch_all([raw], settings(url_rewrites=rewrites))
    assert (r.status, r.raw_url, r.body) == ("ok", raw, img_body("cat"))
    assert r.final_url == server.url("/img/cat")


@pytest.mark.parametrize(
    "url",
    [
        "ftp://x/a.jpg",
        "not a url",
        "",
        "http://",
        "//example.invalid/a.jpg",
        "http://exa mple.invalid/a.jpg",
        "http://example.invalid:99999/a.jpg",
        "javascript:alert(1)",
        None,
    ],
)
def test_invalid_urls(url):
    [r] = fetch_all([url], settings())
    assert (r.status, r.raw_url, r.attempts, r.body) == ("invalid_url", url, 0, None)


def test_order_preserved_for_mixed_concurrent_urls(server):
    rng = random.Random(7)
    urls, expected = [], []
    for i in range(50):
        kind = i % 5
        if kind in (0, 1):
            urls.append(server.url(f"/img/n{i}?delay={rng.uniform(0, 0.1):.3f}"))
            expected.append(("ok", img_body(f"n{i}")))
        elif kind == 2:
            urls.append(server.url(f"/status/{404 if i % 2 else 410}"))
            expected.append((f"http_{404 if i % 2 else 410}", None))
        elif kind == 3:
            urls.append(server.url("/html"))
            expected.append(("not_an_image", None))
        else:
            urls.append(f"ftp://x/{i}.jpg")
            expected.append(("invalid_url", None))
    progress = []
    results = fetch_all(
        urls,
        settings(concurrency=8, per_host=4),
        on_progress=lambda done, total: progress.append((done, total)),
    )
    assert [r.raw_url for r in results] == urls
    assert [(r.status, r.body) for r in results] == expected
    assert progress[-1] == (50, 50) and len(progress) == 50


def test_duplicates_fetched_once(server):
    url = server.url("/img/dup")
    results = fetch_all([url, url, url], settings())
    assert [r.status for r in results] == ["ok"] * 3
    assert server.hits["/img/dup"] == 1
    assert results[0] is not results[1]  # independent objects for callers that mutate


def test_fetch_many_async_core_reports_each_result(server):
    seen = []
    urls = [server.url("/img/a"), server.url("/status/404")]
    results = asyncio.run(fetch_many(urls, settings(), on_result=lambda i, r: seen.append(i)))
    assert [r.status for r in results] == ["ok", "http_404"]
    assert sorted(seen) == [0, 1]


def test_iter_fetch_streams_in_order(server):
    urls = [server.url(f"/img/s{i}") for i in range(7)]
    results = list(iter_fetch(iter(urls), settings(), batch_size=3))
    assert [r.body for r in results] == [img_body(f"s{i}") for i in range(7)]


def test_fetch_all_inside_running_loop(server):
    async def caller():
        return fetch_all([server.url("/img/a")], settings())

    [r] = asyncio.run(caller())
    assert r.status == "ok"


# --------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize(
    "address",
    [
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "127.0.0.1",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "fe80::1",
        "fc00::1",
        "224.0.0.1",
        "ff02::1",
        "0.0.0.0",
        "::",
        "100.64.0.1",
        "240.0.0.1",
        "64:ff9b::a00:1",  # NAT64 for 10.0.0.1
    ],
)
def test_blocked_addresses(address):
    assert is_blocked_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1"])
def test_public_addresses_allowed(address):
    assert not is_blocked_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "host, expected",
    [
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("127.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("10.0.0.1.", "10.0.0.1"),
        ("example.invalid", None),
        ("cafe.be", None),
    ],
)
def test_literal_ip(host, expected):
    ip = literal_ip(host)
    assert (str(ip) if ip else None) == expected


def test_resolver_filters_blocked_addresses():
    async def scenario():
        resolver = GuardedResolver(allow_private=False)
        mixed = await resolver.resolve("mixed.test", 80)
        with pytest.raises(BlockedAddressError):
            await resolver.resolve("internal.test", 80)
        with pytest.raises(BlockedAddressError):
            await resolver.resolve("localhost", 80)
        permissive = await GuardedResolver(allow_private=True).resolve("internal.test", 80)
        return mixed, permissive

    mixed, permissive = asyncio.run(scenario())
    assert [r["host"] for r in mixed] == ["93.184.216.34"]
    assert [r["host"] for r in permissive] == ["10.0.0.1", "192.168.1.1"]


def test_is_opted_out():
    assert is_opted_out(["noai"])
    assert is_opted_out(["index", "NOIMAGEAI"])
    assert is_opted_out(["mybot: noindex, noai"], tokens=["MyBot"])
    assert not is_opted_out(["otherbot: noindex, noai"], tokens=["mybot"])
    assert not is_opted_out(["otherbot: noindex, noai"])
    assert is_opted_out(["otherbot: noindex", "noai"], tokens=["mybot"])
    assert not is_opted_out(["noindex, nofollow"])
    assert not is_opted_out(["unavailable_after: 25 Jun 2010 15:00:00 PST"])
    # a valued directive before the opt-out is no bot scope (img2dataset misreads this one)
    assert is_opted_out(["unavailable_after: 25 Jun 2010 15:00:00 PST, noai"])
    assert is_opted_out(["max-image-preview: large, noimageai"])
    assert not is_opted_out([])


@pytest.mark.parametrize(
    "user_agent, token",
    [
        ("mmc4-assets/0.1 (+https://example.invalid)", "mmc4-assets"),
        ("Mozilla/5.0 (compatible; MyBot/2.1; +https://example.invalid/bot)", "mybot"),
        ("plainname", "plainname"),
    ],
)
def test_user_agent_token(user_agent, token):
    assert fh.user_agent_token(user_agent) == token
    assert token in FetchSettings(user_agent=user_agent).robots_tokens


@pytest.mark.parametrize(
    "value, ok",
    [
        ("image/jpeg", True),
        ("IMAGE/WEBP; q=1", True),
        ("application/octet-stream", True),
        ("binary/octet-stream", True),
        (None, True),
        ("", True),
        ("text/html; charset=utf-8", False),
        ("application/json", False),
        ("video/mp4", False),
    ],
)
def test_is_image_content_type(value, ok):
    assert is_image_content_type(value) is ok


def test_parse_retry_after():
    now = datetime(2024, 1, 1, tzinfo=UTC)
    assert parse_retry_after("1") == 1.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=7), usegmt=True), now) == 7.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=7), usegmt=True), now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after(None) is None


def test_rewrite_url_longest_prefix():
    rewrites = {"http://a/": "http://m1/", "http://a/b/": "http://m2/"}
    assert rewrite_url("http://a/b/c.jpg", rewrites) == "http://m2/c.jpg"
    assert rewrite_url("http://a/x.jpg", rewrites) == "http://m1/x.jpg"
    assert rewrite_url("http://z/x.jpg", rewrites) == "http://z/x.jpg"


def test_settings_validation():
    with pytest.raises(ValueError):
        FetchSettings(concurrency=0)
    with pytest.raises(ValueError):
        FetchSettings(total_timeout=0)


def test_module_has_no_dagster_dependency():
    # A fresh interpreter: in this one other tests have long imported Dagster. Any way in
    # (import dagster as dg, from dagster import ..., a helper module that does) counts.
    modules = [f"mmc4_assets.fetch.{m}" for m in ("http", "guard", "politeness", "client", "pipeline", "shard")]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "    leaked = sorted(m for m in sys.modules if m.split('.')[0].startswith('dagster'))\n"
        "    assert not leaked, f'{name} imports {leaked[:3]}'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
