"""HTTP download layer for the ``fetched_images`` stage.

Downloads every candidate image URL of a shard and returns raw bytes plus a
stable status string; decoding/resizing happens elsewhere.

Design notes:
* One aiohttp ``ClientSession`` per run; redirects are followed by hand so every
  hop's target goes through the SSRF policy.
* Host names are checked by :class:`GuardedResolver`, which filters the
  addresses the connector will actually connect to (no DNS-rebinding bypass);
  IP-literal hosts never reach a resolver, so they are checked up front.
* Every URL yields exactly one :class:`FetchResult`, bounded by
  ``total_timeout`` (retries and back-off waits included).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import ipaddress
import logging
import math
import random
import re
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Union

import aiohttp
from aiohttp.abc import ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

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

    def __post_init__(self) -> None:
        # Fail fast on configs that would deadlock or never fetch anything.
        if self.concurrency < 1 or self.per_host < 1:
            raise ValueError("concurrency and per_host must be >= 1")
        if min(self.connect_timeout, self.read_timeout, self.total_timeout) <= 0:
            raise ValueError("timeouts must be > 0")
        if self.max_bytes < 1 or self.max_redirects < 0 or self.retries < 0:
            raise ValueError("max_bytes must be >= 1; max_redirects, retries >= 0")
        if self.backoff_base < 0 or self.max_retry_after < 0:
            raise ValueError("backoff_base and max_retry_after must be >= 0")


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


# --------------------------------------------------------------------------- address policy

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

# NAT64 gateways translate this prefix to the embedded IPv4 address, which may be internal.
_NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")
# Legacy IPv4 spellings (127.1, 0x7f.0.0.1, 2130706433) that socket APIs still accept.
_LEGACY_IPV4 = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}", re.I)


class BlockedAddressError(OSError):
    """A host resolved only to addresses the policy refuses.

    Subclasses OSError so aiohttp's connector wraps it like any resolver
    failure (ClientConnectorDNSError); we then recognise it in the cause chain.
    """


def is_blocked_address(ip: IPAddress) -> bool:
    """True for addresses we must never connect to when allow_private is False."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped
        if embedded is None and ip in _NAT64_PREFIX:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and is_blocked_address(embedded):
            return True
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        # Also catches shared/CGNAT space (100.64/10), home of some cloud metadata services.
        or not ip.is_global
    )


def is_local_hostname(host: str) -> bool:
    """'localhost' and its subdomains are loopback by definition (RFC 6761)."""
    name = host.rstrip(".").lower()
    return name == "localhost" or name.endswith(".localhost")


def literal_ip(host: str) -> IPAddress | None:
    """The address an IP-literal host denotes, or None for a DNS name."""
    candidate = host.strip("[]").rstrip(".")
    try:
        return ipaddress.ip_address(candidate)
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(candidate):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(candidate))
        except OSError:
            return None
    return None


def _is_blocked_text(address: str) -> bool:
    try:
        return is_blocked_address(ipaddress.ip_address(address))
    except ValueError:
        return True  # an address we cannot classify is not one we trust


def filter_resolved(host: str, results: list[ResolveResult]) -> list[ResolveResult]:
    """Keep only allowed addresses; raise when nothing is left."""
    allowed = [r for r in results if not _is_blocked_text(r["host"])]
    if not allowed:
        raise BlockedAddressError(f"{host!r} resolves only to blocked addresses")
    return allowed


class GuardedResolver(DefaultResolver):
    """Resolver that drops non-public addresses before the connector sees them.

    Because filtering happens on the resolution the connector uses (and
    caches), a name cannot pass a check and then connect elsewhere.
    """

    def __init__(self, *, allow_private: bool, loop: asyncio.AbstractEventLoop | None = None):
        super().__init__(loop=loop)
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if not self._allow_private and is_local_hostname(host):
            raise BlockedAddressError(f"{host!r} is a loopback name")
        results = await self._lookup(host, port, family)
        return results if self._allow_private else filter_resolved(host, results)

    async def _lookup(
        self, host: str, port: int, family: socket.AddressFamily
    ) -> list[ResolveResult]:
        """The real DNS lookup (a seam tests replace with a fake table)."""
        return await super().resolve(host, port, family)


# --------------------------------------------------------------------------- header/url helpers

_OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai"})
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


def is_opted_out(values: Iterable[str]) -> bool:
    """True if any X-Robots-Tag value carries noai/noimageai.

    Values may be comma lists and may be scoped to a bot ("otherbot: noai");
    scoped directives are honoured too, erring on the side of the opt-out.
    """
    for value in values:
        for directive in value.split(","):
            if directive.rsplit(":", 1)[-1].strip().lower() in _OPT_OUT_DIRECTIVES:
                return True
    return False


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
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
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


# --------------------------------------------------------------------------- fetch core


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
    if isinstance(exc, TimeoutError):  # asyncio and aiohttp timeouts alike
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


async def _read_capped(stream: aiohttp.StreamReader, limit: int) -> bytes | None:
    """Read the body, or None as soon as it grows past ``limit`` bytes."""
    buf = bytearray()
    async for chunk in stream.iter_chunked(64 * 1024):
        buf += chunk
        if len(buf) > limit:
            return None
    return bytes(buf)


@dataclass
class _HostSlot:
    semaphore: asyncio.Semaphore
    users: int = 0


class _HostLimiter:
    """Per-host semaphores, dropped once idle so memory stays bounded."""

    def __init__(self, per_host: int) -> None:
        self._per_host = per_host
        self._slots: dict[str, _HostSlot] = {}

    @asynccontextmanager
    async def hold(self, host: str) -> AsyncIterator[None]:
        slot = self._slots.setdefault(host, _HostSlot(asyncio.Semaphore(self._per_host)))
        slot.users += 1
        try:
            async with slot.semaphore:
                yield
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._slots[host]


ResultCallback = Callable[[int, FetchResult], None]


class _Fetcher:
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
        self._hosts = _HostLimiter(settings.per_host)

    async def open(self) -> None:
        s = self.settings
        connector = aiohttp.TCPConnector(
            limit=s.concurrency,
            limit_per_host=s.per_host,
            ttl_dns_cache=300,
            resolver=GuardedResolver(allow_private=s.allow_private),
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

    async def fetch(
        self, urls: Sequence[str], on_result: ResultCallback | None
    ) -> list[FetchResult]:
        """Fetch all URLs concurrently; duplicates are fetched once and shared."""
        positions: dict[Any, list[int]] = {}
        for index, url in enumerate(urls):
            # Non-string junk gets its own key so unhashable values cannot break grouping.
            positions.setdefault(url if isinstance(url, str) else index, []).append(index)
        results: list[FetchResult | None] = [None] * len(urls)

        async def run(indexes: list[int]) -> None:
            result = await self._fetch_url(urls[indexes[0]])
            for n, index in enumerate(indexes):
                results[index] = result if n == 0 else replace(result)
                if on_result is not None:
                    on_result(index, results[index])

        async with asyncio.TaskGroup() as group:
            for indexes in positions.values():
                group.create_task(run(indexes))
        return results  # type: ignore[return-value]  # every slot was filled

    async def _fetch_url(self, raw_url: Any) -> FetchResult:
        """Never raises (except cancellation): one result per URL."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        url = self._prepare_url(raw_url)
        if url is None:
            return _Outcome(INVALID_URL).to_result(raw_url, 0, 0.0)
        try:
            async with self._hosts.hold(url.raw_host or ""), self._global:
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
            outcome = await self._follow_redirects(url, deadline)
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

    async def _follow_redirects(self, url: URL, deadline: float) -> _Outcome:
        """One attempt: request, following redirects by hand so each hop is vetted."""
        for _ in range(self.settings.max_redirects + 1):
            refused = self._refuse_target(url)
            if refused is not None:
                return _Outcome(refused, final_url=str(url))
            try:
                async with asyncio.timeout_at(deadline):
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
        if self.settings.allow_private:
            return None
        if is_local_hostname(host):
            return BLOCKED_ADDRESS
        # IP literals bypass the resolver, so they are checked here; names go
        # through GuardedResolver at connect time.
        ip = literal_ip(host)
        if ip is not None and is_blocked_address(ip):
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
        base = _Outcome(
            OK, http_status=resp.status, content_type=media_type(header_type), final_url=str(url)
        )
        if not 200 <= resp.status < 300:
            base.status = http_status_name(resp.status)
            base.retriable = resp.status == 429 or resp.status >= 500
            base.retry_after = parse_retry_after(resp.headers.get(aiohttp.hdrs.RETRY_AFTER))
            return base
        if s.respect_opt_out and is_opted_out(resp.headers.getall("X-Robots-Tag", [])):
            base.status = OPTED_OUT
        elif not is_image_content_type(header_type):
            base.status = NOT_AN_IMAGE
        elif resp.content_length is not None and resp.content_length > s.max_bytes:
            base.status = TOO_LARGE
        else:
            body = await _read_capped(resp.content, s.max_bytes)
            base.status = TOO_LARGE if body is None else (OK if body else EMPTY_BODY)
            base.body = body or None
        return base


# --------------------------------------------------------------------------- entry points


async def fetch_many(
    urls: Sequence[str],
    settings: FetchSettings = FetchSettings(),
    on_result: ResultCallback | None = None,
) -> list[FetchResult]:
    """Async core: results in input order; ``on_result(index, result)`` as each lands."""
    fetcher = _Fetcher(settings)
    await fetcher.open()
    try:
        return await fetcher.fetch(urls, on_result)
    finally:
        await fetcher.close()


def fetch_all(
    urls: Sequence[str],
    settings: FetchSettings = FetchSettings(),
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[FetchResult]:
    """Sync entry point: runs an event loop, returns results in the same order as urls.

    ``on_progress(done, total)`` is called after each URL completes.
    """
    urls = list(urls)
    total = len(urls)
    done = 0

    def progress(_index: int, _result: FetchResult) -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(done, total)

    return _run_sync(fetch_many(urls, settings, on_result=progress))


def iter_fetch(
    urls_iter: Iterable[str],
    settings: FetchSettings = FetchSettings(),
    batch_size: int = 1024,
) -> Iterator[FetchResult]:
    """Stream results in input order with memory bounded by ``batch_size``.

    One event loop and session live across batches so connections and the
    DNS cache are reused; each batch finishes before the next starts.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    with asyncio.Runner() as runner:
        fetcher = _Fetcher(settings)
        runner.run(fetcher.open())
        try:
            for batch in _batched(urls_iter, batch_size):
                yield from runner.run(fetcher.fetch(batch, None))
        finally:
            runner.run(fetcher.close())


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _run_sync(coro: Any) -> Any:
    """asyncio.run, or on a helper thread when the caller already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
