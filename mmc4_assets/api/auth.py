"""Bearer tokens stored as salted PBKDF2 hashes, checked in constant time, rate limited.

The tokens file maps a name to ``pbkdf2_sha256$<iterations>$<salt>$<base64 hash>`` (the
format Django uses), as JSON (``{"alice": "pbkdf2_sha256$..."}``) or TOML
(``alice = "pbkdf2_sha256$..."``, top level or under ``[tokens]``). Plaintext never touches
disk: ``python -m mmc4_assets.api hash-token`` makes a token and its line.

PBKDF2 is slow on purpose, so a token is hashed once: the sha256 of a verified token is
remembered (an unkeyed fast hash of a random 256-bit token reveals nothing usable), and
so are recently rejected ones. Derivations run on a small executor of their own with a
bounded queue (``verify_async``), never on the threads that serve requests, so a flood of
made-up tokens costs one core at most and cannot delay a token already verified; a full
queue answers "busy" at once. ``FailureLimiter`` caps failed attempts per client. The file
is re-read when it changes, so adding or revoking a token needs no restart; a file that no
longer parses is logged as an error and the last good set stays in force.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
import tomllib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ALGORITHM = "pbkdf2_sha256"
DEFAULT_ITERATIONS = 600_000  # OWASP's 2023 figure for PBKDF2-HMAC-SHA256


class TokenFileError(ValueError):
    """The tokens file is missing, unreadable, or holds something other than hashes."""


@dataclass(frozen=True)
class TokenHash:
    name: str
    iterations: int
    salt: str
    digest: bytes

    @classmethod
    def parse(cls, name: str, encoded: object) -> TokenHash:
        if not isinstance(encoded, str) or not encoded.startswith(ALGORITHM + "$"):
            raise TokenFileError(
                f"token {name!r} is not a {ALGORITHM} hash; store hashes only (python -m mmc4_assets.api hash-token)"
            )
        try:
            _, iterations, salt, digest = encoded.split("$")
            parsed = cls(name, int(iterations), salt, base64.b64decode(digest, validate=True))
        except ValueError:
            raise TokenFileError(f"token {name!r}: malformed {ALGORITHM} hash") from None
        if parsed.iterations < 1 or not salt or len(parsed.digest) != 32:
            raise TokenFileError(f"token {name!r}: malformed {ALGORITHM} hash")
        return parsed

    def matches(self, token: str) -> bool:
        derived = hashlib.pbkdf2_hmac("sha256", token.encode("utf-8"), self.salt.encode(), self.iterations)
        return hmac.compare_digest(derived, self.digest)


def hash_token(token: str, iterations: int = DEFAULT_ITERATIONS, salt: str | None = None) -> str:
    salt = salt or secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", token.encode("utf-8"), salt.encode(), iterations)
    return f"{ALGORITHM}${iterations}${salt}${base64.b64encode(digest).decode()}"


def new_token() -> str:
    return "mmc4_" + secrets.token_urlsafe(32)


def load_token_file(path: Path) -> list[TokenHash]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TokenFileError(f"cannot read tokens file {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"tokens file {path} does not parse: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("tokens"), dict):
        data = data["tokens"]
    if not isinstance(data, dict):
        raise TokenFileError(f"tokens file {path} must map names to hashes")
    return [TokenHash.parse(str(name), value) for name, value in data.items()]


def parse_authorization(header: str | None) -> tuple[str | None, str]:
    """``Authorization`` value -> (token or None, RFC 6750 error code when None)."""
    if header is None or not header.strip():
        return None, ""  # no credentials at all: RFC 6750 sends no error code
    parts = header.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None, "invalid_request"
    return parts[1], ""


class VerifierBusy(RuntimeError):
    """Too many unverified tokens are queued for PBKDF2; the caller should retry later."""


class TokenVerifier:
    """Maps a presented token to its configured name, or None."""

    def __init__(
        self, tokens_file: str | os.PathLike, max_rejected: int = 4096, workers: int = 1, max_pending: int = 16
    ):
        self.path = Path(tokens_file)
        self._lock = threading.Lock()
        self._derive_lock = threading.Lock()
        self._stamp: tuple | None = None
        self._bad_stamp: tuple | None = None  # the file version last reported as broken
        self.reload_error: str | None = None
        self._hashes: list[TokenHash] = []
        self._verified: dict[bytes, str] = {}
        self._rejected: OrderedDict[bytes, None] = OrderedDict()
        self._max_rejected = max_rejected
        self.derivations = 0
        # PBKDF2 runs here, never on the request pool; the queue is bounded so made-up tokens
        # cannot pile up work (hashlib releases the GIL while deriving)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="mmc4-token-verify"
        )
        self._max_pending = max_pending
        self.pending = 0
        self._reload(force=True)

    @property
    def names(self) -> list[str]:
        return [h.name for h in self._hashes]

    def _reload(self, force: bool = False) -> None:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError as exc:
            if force:
                raise TokenFileError(f"cannot read tokens file {self.path}: {exc.strerror or exc}") from None
            return  # keep the last good tokens through a moment of a file being replaced
        if not force and stamp in (self._stamp, self._bad_stamp):
            return
        try:
            hashes = load_token_file(self.path)
        except TokenFileError as exc:
            if force:
                raise
            # keep serving with the last good set, and say so once per broken version of the file
            self._bad_stamp, self.reload_error = stamp, str(exc)
            log.error(
                "tokens file %s was changed but cannot be used (%s); still serving the %d token(s) loaded before",
                self.path,
                exc,
                len(self._hashes),
            )
            return
        with self._lock:
            self._hashes, self._stamp = hashes, stamp
            self._bad_stamp = self.reload_error = None
            self._verified.clear()
            self._rejected.clear()
        if not force:
            log.info("tokens file %s reloaded: %d token(s)", self.path, len(hashes))

    def cached(self, token: str) -> tuple[bool, str | None]:
        """(True, name or None) when this token was checked before; (False, None) when it needs PBKDF2.

        Cheap (a stat and a dict lookup), so an async caller can run it on the event loop."""
        self._reload()
        key = hashlib.sha256(token.encode("utf-8")).digest()
        with self._lock:
            if key in self._verified:
                return True, self._verified[key]
            return key in self._rejected, None

    def verify(self, token: str) -> str | None:
        known, name = self.cached(token)
        if known:
            return name
        key = hashlib.sha256(token.encode("utf-8")).digest()
        with self._lock:
            hashes = self._hashes
        with self._derive_lock:
            with self._lock:  # another thread may have just verified this token
                if key in self._verified:
                    return self._verified[key]
            name = None
            for h in hashes:  # every entry is tried, so the time does not depend on which matched
                self.derivations += 1
                if h.matches(token) and name is None:
                    name = h.name
        with self._lock:
            if hashes is self._hashes:  # not reloaded meanwhile
                if name is not None:
                    self._verified[key] = name
                else:
                    self._rejected[key] = None
                    while len(self._rejected) > self._max_rejected:
                        self._rejected.popitem(last=False)
        return name

    async def verify_async(self, token: str) -> str | None:
        """``verify`` on the verifier's own executor; ``VerifierBusy`` when its queue is full."""
        with self._lock:
            if self.pending >= self._max_pending:
                raise VerifierBusy(f"{self.pending} token verifications queued")
            self.pending += 1
        try:
            future = self._executor.submit(self.verify, token)
        except BaseException:
            with self._lock:
                self.pending -= 1
            raise
        future.add_done_callback(self._done)
        return await asyncio.wrap_future(future)

    def _done(self, _future) -> None:
        with self._lock:
            self.pending -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class FailureLimiter:
    """Failed authentication attempts per client: ``burst`` at once, then one per ``1/rate`` seconds.

    Over the limit, a client's unverified tokens are refused before any PBKDF2 work, so one
    client cannot keep the verifier busy; tokens already verified are not affected. A
    verification in flight counts as a failure until it succeeds (``refund``), so a client's
    simultaneous made-up tokens are capped too, not only its finished ones. The table
    of clients is bounded (least recently failing first out).
    """

    def __init__(self, burst: int = 10, rate: float = 0.2, max_clients: int = 65536, clock=time.monotonic):
        if burst < 1 or rate <= 0:
            raise ValueError("burst must be >= 1 and rate > 0")
        self.burst, self.rate, self._clock, self._max = float(burst), rate, clock, max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def _level(self, client: str, now: float) -> float:
        tokens, last = self._buckets.get(client, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def retry_after(self, client: str) -> float:
        """0 when the client may try a token, else seconds until it may."""
        now = self._clock()
        with self._lock:
            if client not in self._buckets:
                return 0.0
            tokens = self._level(client, now)
            return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def failed(self, client: str) -> None:
        now = self._clock()
        with self._lock:
            tokens = self._level(client, now)
            self._buckets[client] = (max(tokens - 1, 0.0), now)
            self._buckets.move_to_end(client)
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)

    def refund(self, client: str) -> None:
        """Give back a provisional failure (the token verified, or was never tried)."""
        now = self._clock()
        with self._lock:
            if client in self._buckets:
                self._buckets[client] = (min(self.burst, self._level(client, now) + 1), now)


class RateLimiter:
    """A token bucket per token name: ``rate`` requests per second, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int | None = None, clock=time.monotonic):
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate, self.burst, self._clock = rate, float(burst or max(1, int(rate))), clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, name: str) -> float:
        """0 when the request may go ahead, else seconds until it would."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(name, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[name] = (tokens - 1, now)
                return 0.0
            self._buckets[name] = (tokens, now)
            return (1 - tokens) / self.rate
