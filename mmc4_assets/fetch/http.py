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
* Politeness: at most ``per_host`` requests in flight and ``per_host_rps`` requests
  per second to one host; X-Robots-Tag ``noai``/``noimageai`` are honoured (see
  :func:`is_opted_out` for bot-scoped directives).
* A body whose first bytes are no image signature is dropped as ``not_an_image``
  after its first chunk, whatever its Content-Type said.
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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, TypeVar, Union

import aiohttp
from aiohttp.abc import ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

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


def user_agent_token(user_agent: str) -> str:
    """The product token robots rules address: 'mmc4-assets/0.1 (+url)' -> 'mmc4-assets'.

    For a browser-style 'Mozilla/5.0 (compatible; mybot/2.1; +url)' it is the name inside
    the 'compatible;' comment, as for Googlebot.
    """
    compatible = re.search(r"compatible;\s*([A-Za-z0-9._-]+)", user_agent)
    if compatible:
        return compatible.group(1).lower()
    return re.split(r"[/\s]", user_agent.strip(), maxsplit=1)[0].lower()


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


class DnsTimeoutError(OSError):
    """A lookup took longer than ``dns_timeout``: transient, reported as ``timeout``."""


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


# getaddrinfo errors that mean "this name does not exist" rather than "try again".
_PERMANENT_DNS_ERRORS = frozenset(
    code for code in (getattr(socket, name, None) for name in ("EAI_NONAME", "EAI_NODATA")) if code
)
_NEGATIVE_CACHE_MAX = 10_000


class GuardedResolver(DefaultResolver):
    """Resolver that drops non-public addresses before the connector sees them.

    Because filtering happens on the resolution the connector uses (and
    caches), a name cannot pass a check and then connect elsewhere.

    Lookups are bounded by ``timeout``, and names that do not exist or resolve only to
    blocked addresses are remembered for ``negative_ttl`` seconds: a dead domain with
    fifty images on a page costs one lookup, not fifty (the connector caches successes).
    """

    def __init__(
        self,
        *,
        allow_private: bool,
        timeout: float | None = None,
        negative_ttl: float = 60.0,
        loop: asyncio.AbstractEventLoop | None = None,
    ):
        super().__init__(loop=loop)
        self._allow_private = allow_private
        self._timeout = timeout
        self._negative_ttl = negative_ttl
        self._negative: dict[str, tuple[float, OSError]] = {}

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if not self._allow_private and is_local_hostname(host):
            raise BlockedAddressError(f"{host!r} is a loopback name")
        now = asyncio.get_running_loop().time()
        remembered = self._negative.get(host)
        if remembered is not None and remembered[0] > now:
            error = remembered[1]
            raise type(error)(*error.args)
        try:
            async with asyncio.timeout(self._timeout):
                results = await self._lookup(host, port, family)
            return results if self._allow_private else filter_resolved(host, results)
        except TimeoutError:
            raise DnsTimeoutError(f"lookup of {host!r} timed out") from None
        except BlockedAddressError as exc:
            self._remember(host, exc, now)
            raise
        except socket.gaierror as exc:
            if exc.errno in _PERMANENT_DNS_ERRORS:
                self._remember(host, exc, now)
            raise

    def _remember(self, host: str, error: OSError, now: float) -> None:
        if len(self._negative) >= _NEGATIVE_CACHE_MAX:
            self._negative = {h: v for h, v in self._negative.items() if v[0] > now}
            if len(self._negative) >= _NEGATIVE_CACHE_MAX:
                self._negative.clear()
        self._negative[host] = (now + self._negative_ttl, error)

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


# Directives that carry a value after a colon, so "name:" before them is no bot scope.
_VALUED_DIRECTIVES = frozenset(
    {"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"}
)
_BOT_TOKEN = re.compile(r"[A-Za-z0-9._-]+")


def is_opted_out(values: Iterable[str], tokens: Iterable[str] = ()) -> bool:
    """True if an X-Robots-Tag value that applies to us carries noai/noimageai.

    Same rule as img2dataset: a value may be scoped to one bot ("otherbot: noai,
    noindex"); a scoped value applies only when it names one of ``tokens`` (our
    user-agent token, compared case-insensitively); an unscoped value applies to all.
    """
    ours = {t.lower() for t in tokens}
    for value in values:
        scope, directives = _split_scope(value)
        if scope is not None and scope not in ours:
            continue
        for directive in directives.split(","):
            if directive.split(":", 1)[0].strip().lower() in _OPT_OUT_DIRECTIVES:
                return True
    return False


def _split_scope(value: str) -> tuple[str | None, str]:
    """'otherbot: noai' -> ('otherbot', 'noai'); 'noai, noindex' -> (None, same)."""
    head, sep, rest = value.partition(":")
    name = head.strip().lower()
    if sep and _BOT_TOKEN.fullmatch(name) and name not in _VALUED_DIRECTIVES | _OPT_OUT_DIRECTIVES:
        return name, rest
    return None, value


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


@dataclass
class _HostSlot:
    semaphore: asyncio.Semaphore
    users: int = 0


class _HostLimiter:
    """Per-host concurrency (semaphores) and request rate (evenly spaced start times).

    Idle semaphores are dropped and stale start times pruned, so memory stays bounded
    by the hosts currently in use.
    """

    def __init__(self, per_host: int, rps: float = 0.0, exempt: frozenset[str] = frozenset()) -> None:
        self._per_host = per_host
        self._interval = 1.0 / rps if rps > 0 else 0.0
        self._exempt = exempt
        self._slots: dict[str, _HostSlot] = {}
        self._next_start: dict[str, float] = {}

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

    async def pace(self, host: str) -> None:
        """Wait for this host's next request slot (``1/rps`` after the previous one)."""
        if not self._interval or host in self._exempt:
            return
        now = asyncio.get_running_loop().time()
        start = max(now, self._next_start.get(host, 0.0))
        self._next_start[host] = start + self._interval
        if len(self._next_start) > 4096:
            self._next_start = {h: t for h, t in self._next_start.items() if t > now}
        if start > now:
            await asyncio.sleep(start - now)


ResultCallback = Callable[[int, FetchResult], None]
T = TypeVar("T")


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
        self._hosts = _HostLimiter(settings.per_host, settings.per_host_rps, settings.unthrottled_hosts)
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
        if s.respect_opt_out and is_opted_out(resp.headers.getall("X-Robots-Tag", []), self._tokens):
            base.status = OPTED_OUT
        elif not is_image_content_type(header_type):
            base.status = NOT_AN_IMAGE
        elif resp.content_length is not None and resp.content_length > s.max_bytes:
            base.status = TOO_LARGE
        else:
            base.status, base.body = await _read_body(resp.content, s.max_bytes)
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
