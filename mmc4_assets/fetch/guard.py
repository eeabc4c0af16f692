"""Address guard (SSRF policy) of the download layer.

Only public addresses are contacted unless ``allow_private`` is set:
* host names are checked by :class:`GuardedResolver`, which filters the addresses the
  connector will actually connect to (no DNS-rebinding bypass);
* IP-literal hosts and loopback names never reach a resolver, so
  :func:`is_blocked_host` checks them before connecting.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket

from aiohttp.abc import ResolveResult
from aiohttp.resolver import DefaultResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

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


def is_blocked_host(host: str) -> bool:
    """True for a host we refuse before connecting: a loopback name or a blocked IP literal.

    Other names go through :class:`GuardedResolver` at connect time.
    """
    if is_local_hostname(host):
        return True
    ip = literal_ip(host)
    return ip is not None and is_blocked_address(ip)


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

    async def _lookup(self, host: str, port: int, family: socket.AddressFamily) -> list[ResolveResult]:
        """The real DNS lookup (a seam tests replace with a fake table)."""
        return await super().resolve(host, port, family)
