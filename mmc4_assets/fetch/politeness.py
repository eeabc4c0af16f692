"""Politeness of the download layer: opt-outs and per-host limits.

* X-Robots-Tag ``noai``/``noimageai`` are honoured (see :func:`is_opted_out` for
  bot-scoped directives, addressed by :func:`user_agent_token`);
* :class:`HostLimiter`: at most ``per_host`` requests in flight and ``per_host_rps``
  request starts per second to one host.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

# --------------------------------------------------------------------------- opt-outs

_OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai"})

# Directives that carry a value after a colon, so "name:" before them is no bot scope.
_VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})
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


def user_agent_token(user_agent: str) -> str:
    """The product token robots rules address: 'mmc4-assets/0.1 (+url)' -> 'mmc4-assets'.

    For a browser-style 'Mozilla/5.0 (compatible; mybot/2.1; +url)' it is the name inside
    the 'compatible;' comment, as for Googlebot.
    """
    compatible = re.search(r"compatible;\s*([A-Za-z0-9._-]+)", user_agent)
    if compatible:
        return compatible.group(1).lower()
    return re.split(r"[/\s]", user_agent.strip(), maxsplit=1)[0].lower()


# --------------------------------------------------------------------------- rate limiting


@dataclass
class _HostSlot:
    semaphore: asyncio.Semaphore
    users: int = 0


class HostLimiter:
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
