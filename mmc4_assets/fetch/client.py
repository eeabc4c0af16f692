"""The fetcher: one aiohttp session, redirects, retries and bounded body reads.

* Redirects are followed by hand so every hop's target goes through the address guard
  (:mod:`mmc4_assets.fetch.guard`).
* Every URL yields exactly one :class:`FetchResult`, bounded by ``total_timeout``
  (retries and back-off waits included); transient failures are retried with jittered
  exponential back-off or the server's Retry-After.
* A body whose first bytes are no image signature is dropped as ``not_an_image``
  after its first chunk, whatever its Content-Type said.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
from yarl import URL

from mmc4_assets.fetch.guard import BlockedAddressError, DnsTimeoutError, GuardedResolver, is_blocked_host
from mmc4_assets.fetch.politeness import HostLimiter, is_opted_out, user_agent_token
from mmc4_assets.fetch.sniff import SNIFF_BYTES, sniff_image_format

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- statuses

OK = "ok"
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
DNS_ERROR = "dns_error"
TOO_MANY_REDIRECTS = "too_many_redirects"
TOO_LARGE = "too_large"
NOT_AN_IMAGE = "not_an_image"
BLOCKED_ADDRESS = "blocked_address"
OPTED_OUT = "opted_out"
INVALID_URL = "invalid_url"
EMPTY_BODY = "empty_body"


def http_status_name(code: int) -> str:
    """Drop reason for a non-2xx final response, e.g. ``http_404``."""
    return f"http_{code}"


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class FetchSettings:
    concurrency: int = 64  # in-flight requests per process
    per_host: int = 8  # in-flight per host
    connect_timeout: float = 5.0
    read_timeout: float = 10.0  # between body chunks (sock_read)
    total_timeout: float = 30.0  # whole request incl. redirects, retries and waits
    max_bytes: int = 16 * 1024 * 1024
    max_redirects: int = 5
    retries: int = 2  # only on transient failures
    backoff_base: float = 0.5  # exponential back-off with jitter
    max_retry_after: float = 10.0  # cap on a server's Retry-After
    user_agent: str = "mmc4-assets/0.1 (+https://github.com/mmc4-assets/mmc4-assets)"
    allow_private: bool = False  # refuse non-public addresses unless True
    respect_opt_out: bool = True  # X-Robots-Tag noai / noimageai -> "opted_out"
    url_rewrites: Mapping[str, str] = field(default_factory=dict)  # prefix -> prefix
    per_host_rps: float = 10.0  # request starts per second to one host; 0 = unlimited
    unthrottled_hosts: frozenset[str] = frozenset()  # e.g. your own mirror: no rate limit
    dns_timeout: float = 5.0  # a stalled lookup becomes "timeout" instead of eating the budget
    # Bot names whose scoped X-Robots-Tag directives ("name: noai") apply to us, besides
    # the product token of user_agent; img2dataset's because sites used it to opt out of
    # exactly this kind of crawl.
    opt_out_tokens: tuple[str, ...] = ("img2dataset",)

    def __post_init__(self) -> None:
        # Fail fast on configs that would deadlock or never fetch anything.
        if self.concurrency < 1 or self.per_host < 1:
            raise ValueError("concurrency and per_host must be >= 1")
        if min(self.connect_timeout, self.read_timeout, self.total_timeout, self.dns_timeout) <= 0:
            raise ValueError("timeouts must be > 0")
        if self.per_host_rps < 0:
            raise ValueError("per_host_rps must be >= 0 (0 = unlimited)")
        if self.max_bytes < 1 or self.max_redirects < 0 or self.retries < 0:
            raise ValueError("max_bytes must be >= 1; max_redirects, retries >= 0")
        if self.backoff_base < 0 or self.max_retry_after < 0:
            raise ValueError("backoff_base and max_retry_after must be >= 0")

    @property
    def robots_tokens(self) -> frozenset[str]:
        """Lower-case bot names a scoped X-Robots-Tag directive must name to apply to us."""
        return frozenset({user_agent_token(self.user_agent), *(t.lower() for t in self.opt_out_tokens)}) - {""}


@dataclass
class FetchResult:
    raw_url: str
    status: str  # "ok" or a stable drop reason
    http_status: int | None
    body: bytes | None  # only when status == "ok"
    content_type: str | None
    final_url: str | None
    attempts: int
    elapsed_ms: float

    @property
    def ok(self) -> bool:
        return self.status == OK


# --------------------------------------------------------------------------- header/url helpers

# Generic binary types that servers commonly use for images.
_BINARY_TYPES = frozenset(
    {
        "application/octet-stream",
        "binary/octet-stream",
        "application/binary",
        "application/x-binary",
        "application/x-octet-stream",
        "application/force-download",
        "application/x-download",
        "application/download",
        "application/unknown",
    }
)
_HOSTNAME_CHARS = re.compile(r"[A-Za-z0-9._-]+")
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_HTTP_SCHEMES = frozenset({"http", "https"})


def media_type(content_type: str | None) -> str | None:
    """'image/png; charset=x' -> 'image/png'; None when absent or blank."""
    if content_type is None:
        return None
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime or None


def is_image_content_type(content_type: str | None) -> bool:
    """False only when the header clearly names a non-image type (e.g. text/html)."""
    mime = media_type(content_type)
    if mime is None or "/" not in mime:
        return True  # absent or malformed: let the decoder decide
    return mime.startswith("image/") or mime in _BINARY_TYPES


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds from now (delta-seconds or HTTP date); None if unusable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def rewrite_url(url: str, rewrites: Mapping[str, str]) -> str:
    """Apply the longest matching prefix rewrite (e.g. to a local mirror)."""
    prefix = max((p for p in rewrites if url.startswith(p)), key=len, default=None)
    return url if prefix is None else rewrites[prefix] + url[len(prefix) :]


def parse_http_url(text: str) -> URL | None:
    """A fetchable absolute http(s) URL, or None."""
    try:
        url = URL(text.strip())
        host = url.raw_host  # already IDNA-encoded, so plain ASCII for real names
        if url.scheme not in _HTTP_SCHEMES or not host:
            return None
        if ":" not in host and not _HOSTNAME_CHARS.fullmatch(host):
            return None  # spaces, percent-escapes and the like are not hosts
        url.port  # noqa: B018 - raises on an out-of-range port
    except (ValueError, TypeError):
        return None
    return url


def _resolve_location(current: URL, location: str) -> URL | None:
    try:
        target = current.join(URL(location.strip()))
    except (ValueError, TypeError):
        return None
    return parse_http_url(str(target))


@dataclass
class _Outcome:
    """Result of one attempt (a whole redirect chain), before retry bookkeeping."""

    status: str
    http_status: int | None = None
    body: bytes | None = None
    content_type: str | None = None
    final_url: str | None = None
    retriable: bool = False
    retry_after: float | None = None

    def to_result(self, raw_url: str, attempts: int, elapsed_ms: float) -> FetchResult:
        return FetchResult(
            raw_url=raw_url,
            status=self.status,
            http_status=self.http_status,
            body=self.body if self.status == OK else None,
            content_type=self.content_type,
            final_url=self.final_url,
            attempts=attempts,
            elapsed_ms=elapsed_ms,
        )


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """True if ``kind`` is ``exc``, its wrapped os_error, or in its cause chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, kind):
            return True
        if isinstance(current, aiohttp.ClientConnectorError) and isinstance(current.os_error, kind):
            return True
        current = current.__cause__
    return False


def _outcome_for_exception(exc: Exception, url: URL) -> _Outcome:
    """Map a network exception onto a stable status and whether to retry."""
    final = str(url)
    if _caused_by(exc, BlockedAddressError):
        return _Outcome(BLOCKED_ADDRESS, final_url=final)
    if isinstance(exc, TimeoutError) or _caused_by(exc, DnsTimeoutError):  # asyncio, aiohttp, DNS
        return _Outcome(TIMEOUT, final_url=final, retriable=True)
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return _Outcome(DNS_ERROR, final_url=final)
    if isinstance(exc, (aiohttp.InvalidURL, ValueError)):  # incl. IDNA/host encoding errors
        return _Outcome(INVALID_URL, final_url=final)
    if isinstance(exc, (aiohttp.ClientSSLError, aiohttp.ClientConnectorCertificateError)):
        # TLS problems do not fix themselves within seconds: no retry.
        return _Outcome(CONNECTION_ERROR, final_url=final)
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return _Outcome(CONNECTION_ERROR, final_url=final, retriable=True)
    raise exc


async def _read_body(stream: aiohttp.StreamReader, limit: int) -> tuple[str, bytes | None]:
    """(status, body): stops early on a body past ``limit`` or one whose head is no image."""
    buf = bytearray()
    sniffed = False
    async for chunk in stream.iter_chunked(64 * 1024):
        buf += chunk
        if len(buf) > limit:
            return TOO_LARGE, None
        if not sniffed and len(buf) >= SNIFF_BYTES:
            sniffed = True
            if sniff_image_format(bytes(buf[:SNIFF_BYTES])) is None:
                return NOT_AN_IMAGE, None  # an HTML page behind image/jpeg: stop downloading it
    if not buf:
        return EMPTY_BODY, None
    if not sniffed and sniff_image_format(bytes(buf)) is None:
        return NOT_AN_IMAGE, None
    return OK, bytes(buf)


ResultCallback = Callable[[int, FetchResult], None]
T = TypeVar("T")


class Fetcher:
    """Owns the session and the limits; fetches batches of URLs."""

    def __init__(self, settings: FetchSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(
            total=None,  # the overall budget is enforced per URL with asyncio.timeout_at
            sock_connect=settings.connect_timeout,
            sock_read=settings.read_timeout,
        )
        # Our own limits are taken *before* a URL's deadline starts, so queueing
        # behind a busy host never eats into that URL's timeout budget.
        self._global = asyncio.Semaphore(settings.concurrency)
        self._hosts = HostLimiter(settings.per_host, settings.per_host_rps, settings.unthrottled_hosts)
        self._tokens = settings.robots_tokens

    async def open(self) -> None:
        s = self.settings
        connector = aiohttp.TCPConnector(
            limit=s.concurrency,
            limit_per_host=s.per_host,
            ttl_dns_cache=300,
            resolver=GuardedResolver(allow_private=s.allow_private, timeout=s.dns_timeout),
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": s.user_agent, "Accept": "image/*,*/*;q=0.8"},
            timeout=self._timeout,
            cookie_jar=aiohttp.DummyCookieJar(),  # no state leaking between unrelated URLs
            trust_env=False,  # an env proxy would bypass the address policy
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, urls: Sequence[str], on_result: ResultCallback | None) -> list[FetchResult]:
        """Fetch all URLs concurrently; duplicates are fetched once and shared."""
        positions: dict[Any, list[int]] = {}
        for index, url in enumerate(urls):
            # Non-string junk gets its own key so unhashable values cannot break grouping.
            positions.setdefault(url if isinstance(url, str) else index, []).append(index)
        results: list[FetchResult | None] = [None] * len(urls)

        async def run(indexes: list[int]) -> None:
            result = await self.fetch_url(urls[indexes[0]])
            for n, index in enumerate(indexes):
                results[index] = result if n == 0 else replace(result)
                if on_result is not None:
                    on_result(index, results[index])

        async with asyncio.TaskGroup() as group:
            for indexes in positions.values():
                group.create_task(run(indexes))
        return results  # type: ignore[return-value]  # every slot was filled

    async def fetch_url(
        self, raw_url: Any, then: Callable[[FetchResult], Awaitable[T]] | None = None
    ) -> FetchResult | T:
        """One URL, one result; never raises (except cancellation).

        ``then(result)`` runs after the host slot is released but while the global
        slot is still held: a slow consumer (the decode pool) thus throttles downloads,
        and at most ``concurrency`` bodies are ever held in memory.
        """
        url = self._prepare_url(raw_url)
        if url is None:
            result = _Outcome(INVALID_URL).to_result(raw_url, 0, 0.0)
            return await then(result) if then is not None else result
        host = url.raw_host or ""
        async with self._hosts.hold(host):
            await self._hosts.pace(host)  # before the deadline starts, like the semaphores
            await self._global.acquire()
            try:
                result = await self._fetch_guarded(raw_url, url)
            except BaseException:
                self._global.release()
                raise
        try:
            return await then(result) if then is not None else result
        finally:
            self._global.release()

    async def _fetch_guarded(self, raw_url: str, url: URL) -> FetchResult:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            return await self._fetch_with_retries(raw_url, url)
        except Exception:  # a bug must not take down the whole shard
            log.exception("unexpected error fetching %r", raw_url)
            elapsed = (loop.time() - started) * 1000
            return _Outcome(CONNECTION_ERROR, final_url=str(url)).to_result(raw_url, 1, elapsed)

    def _prepare_url(self, raw_url: Any) -> URL | None:
        if not isinstance(raw_url, str):  # e.g. None/NaN from a dataframe column
            return None
        return parse_http_url(rewrite_url(raw_url, self.settings.url_rewrites))

    async def _fetch_with_retries(self, raw_url: str, url: URL) -> FetchResult:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.settings.total_timeout
        attempts = 0
        while True:
            attempts += 1
            outcome = await self._follow_redirects(url, deadline, attempts)
            delay = self._retry_delay(outcome, attempts)
            # Stop rather than wait past the budget (covers long Retry-After too).
            if delay is None or loop.time() + delay >= deadline:
                break
            log.debug("retrying %s after %s in %.2fs", raw_url, outcome.status, delay)
            await asyncio.sleep(delay)
        return outcome.to_result(raw_url, attempts, (loop.time() - started) * 1000)

    def _retry_delay(self, outcome: _Outcome, attempts: int) -> float | None:
        """Seconds to wait before the next try, or None when we should not retry."""
        s = self.settings
        if not outcome.retriable or attempts > s.retries:
            return None
        if outcome.retry_after is not None:
            return min(outcome.retry_after, s.max_retry_after)
        ceiling = s.backoff_base * 2 ** (attempts - 1)
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # "equal jitter"

    async def _follow_redirects(self, url: URL, deadline: float, attempt: int) -> _Outcome:
        """One attempt: request, following redirects by hand so each hop is vetted."""
        for hop in range(self.settings.max_redirects + 1):
            refused = self._refuse_target(url)
            if refused is not None:
                return _Outcome(refused, final_url=str(url))
            try:
                async with asyncio.timeout_at(deadline):
                    if hop or attempt > 1:  # the first request was paced before the deadline
                        await self._hosts.pace(url.raw_host or "")
                    step = await self._request(url)
            except Exception as exc:  # classified into a status below
                return _outcome_for_exception(exc, url)
            if isinstance(step, _Outcome):
                return step
            url = step
        return _Outcome(TOO_MANY_REDIRECTS, final_url=str(url))

    def _refuse_target(self, url: URL) -> str | None:
        """Status for a target we must not contact, checked before connecting."""
        host = url.raw_host
        if url.scheme not in _HTTP_SCHEMES or not host:
            return INVALID_URL
        if not self.settings.allow_private and is_blocked_host(host):
            return BLOCKED_ADDRESS
        return None

    async def _request(self, url: URL) -> _Outcome | URL:
        """GET one hop: the final outcome, or the next URL for a redirect."""
        assert self._session is not None, "fetcher not opened"
        async with self._session.get(url, allow_redirects=False) as resp:
            location = resp.headers.get(aiohttp.hdrs.LOCATION)
            if resp.status in _REDIRECT_CODES and location is not None:
                target = _resolve_location(url, location)
                if target is None:
                    return _Outcome(INVALID_URL, http_status=resp.status, final_url=str(url))
                return target
            return await self._read_final(resp, url)

    async def _read_final(self, resp: aiohttp.ClientResponse, url: URL) -> _Outcome:
        """Judge headers first so refused responses cost no body bandwidth."""
        s = self.settings
        header_type = resp.headers.get(aiohttp.hdrs.CONTENT_TYPE)
        base = _Outcome(OK, http_status=resp.status, content_type=media_type(header_type), final_url=str(url))
        if not 200 <= resp.status < 300:
            base.status = http_status_name(resp.status)
            base.retriable = resp.status == 429 or resp.status >= 500
            base.retry_after = parse_retry_after(resp.headers.get(aiohttp.hdrs.RETRY_AFTER))
            return base
        if s.respect_opt_out and is_opted_out(resp.headers.getall("X-Robots-Tag", []), self._tokens):
            base.status = OPTED_OUT
        elif not is_image_content_type(header_type):
            base.status = NOT_AN_IMAGE
        elif resp.content_length is not None and resp.content_length > s.max_bytes:
            base.status = TOO_LARGE
        else:
            base.status, base.body = await _read_body(resp.content, s.max_bytes)
        return base
