"""Bearer tokens stored as salted PBKDF2 hashes, checked in constant time, rate limited.

The tokens file maps a name to ``pbkdf2_sha256$<iterations>$<salt>$<base64 hash>`` (the
format Django uses), as JSON (``{"alice": "pbkdf2_sha256$..."}``) or TOML
(``alice = "pbkdf2_sha256$..."``, top level or under ``[tokens]``). Plaintext never touches
disk: ``python -m mmc4_assets.api hash-token`` makes a token and its line.

PBKDF2 is slow on purpose, so a token is hashed once: the sha256 of a verified token is
remembered (an unkeyed fast hash of a random 256-bit token reveals nothing usable), and
so are recently rejected ones. Derivations run one at a time, so a flood of made-up tokens
costs one core at most, not the request threads that serve good tokens. The file is
re-read when it changes, so adding or revoking a token needs no restart.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
import tomllib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

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
    def parse(cls, name: str, encoded: object) -> "TokenHash":
        if not isinstance(encoded, str) or not encoded.startswith(ALGORITHM + "$"):
            raise TokenFileError(f"token {name!r} is not a {ALGORITHM} hash; store hashes only "
                                 "(python -m mmc4_assets.api hash-token)")
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


class TokenVerifier:
    """Maps a presented token to its configured name, or None."""

    def __init__(self, tokens_file: str | os.PathLike, max_rejected: int = 4096):
        self.path = Path(tokens_file)
        self._lock = threading.Lock()
        self._derive_lock = threading.Lock()
        self._stamp: tuple | None = None
        self._hashes: list[TokenHash] = []
        self._verified: dict[bytes, str] = {}
        self._rejected: OrderedDict[bytes, None] = OrderedDict()
        self._max_rejected = max_rejected
        self.derivations = 0
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
        if not force and stamp == self._stamp:
            return
        try:
            hashes = load_token_file(self.path)
        except TokenFileError:
            if force:
                raise
            return  # a half-edited file: keep serving with the last good one
        with self._lock:
            self._hashes, self._stamp = hashes, stamp
            self._verified.clear()
            self._rejected.clear()

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
