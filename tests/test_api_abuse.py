"""Abuse of the read API: bad-token floods, failed-token limits, query-string tokens, broken tokens files.

Loopback only (uvicorn on 127.0.0.1:0 started here), bounded counts and timeouts; no
timed assertions: the flood test holds every made-up token's PBKDF2 behind a gate and
asks whether valid requests are answered at all while it is closed.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from mmc4_assets.api import auth
from mmc4_assets.api.app import Settings, create_app
from test_api import ALICE, BOB, ITERATIONS, build_root, serve, write_tokens

FLOOD = 48  # more than anyio's 40 worker threads, the pool the endpoints run on


@pytest.fixture
def settings(tmp_path):
    root = build_root(tmp_path / "root")
    return {
        "storage_root": str(root.root),
        "tokens_file": str(write_tokens(tmp_path / "tokens.json")),
        "cache_dir": str(tmp_path / "cache"),
        "index_ttl": 0,
    }


def _url(client, path: str) -> str:
    return str(client.base_url).rstrip("/") + path


def test_bad_token_flood_does_not_delay_verified_tokens(settings, monkeypatch):
    gate, entered = threading.Event(), threading.Event()
    real = auth.TokenHash.matches

    def held(self, token: str) -> bool:  # a made-up token's PBKDF2 that never ends until released
        if token.startswith("flood-"):
            entered.set()
            gate.wait(30)
        return real(self, token)

    monkeypatch.setattr(auth.TokenHash, "matches", held)
    # per-client limit off: this test is about the request pool, not the failure limit
    kw = {"max_auth_failures": 10_000} if "max_auth_failures" in Settings.__dataclass_fields__ else {}
    with serve(create_app(Settings(**settings, **kw))) as client, ThreadPoolExecutor(FLOOD) as pool:
        try:
            assert client.get("/datasets/mmc4").status_code == 200  # ALICE verified once, then cached
            flood = [
                pool.submit(
                    httpx.get,
                    _url(client, "/datasets/mmc4"),
                    timeout=40,
                    headers={"Authorization": f"Bearer flood-{i}"},
                )
                for i in range(FLOOD)
            ]
            assert entered.wait(10), "no bad token reached PBKDF2"
            time.sleep(0.5)  # let the rest of the flood arrive and queue
            with httpx.Client(timeout=5, headers={"Authorization": f"Bearer {ALICE}"}) as valid:
                codes = [valid.get(_url(client, "/datasets/mmc4"), params={"limit": 2}).status_code for _ in range(20)]
            assert codes == [200] * 20
            assert not gate.is_set() and not all(f.done() for f in flood)  # the flood was still in flight
        finally:
            gate.set()
        answered = [f.result().status_code for f in flood]
    # every bad token got a clean answer: 401, or 503 when the verifier's queue was full
    assert set(answered) <= {401, 503} and 401 in answered, answered
    assert answered.count(503) >= FLOOD - 16 - 1


def test_failed_tokens_are_limited_per_client_before_any_pbkdf2(settings):
    app = create_app(Settings(**settings, max_auth_failures=3, auth_failure_rate=0.01))
    with serve(app) as client:
        assert client.get("/datasets/mmc4").status_code == 200  # ALICE verified before the failures
        codes = [
            client.get("/datasets/mmc4", headers={"Authorization": f"Bearer wrong-{i}"}).status_code for i in range(3)
        ]
        assert codes == [401, 401, 401]
        derivations = app.state.verifier.derivations
        r = client.get("/datasets/mmc4", headers={"Authorization": "Bearer wrong-4"})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert app.state.verifier.derivations == derivations  # refused without deriving anything
        # a token verified before still works from that client; a token not yet seen waits its turn
        assert client.get("/datasets/mmc4").status_code == 200
        assert client.get("/datasets/mmc4", headers={"Authorization": f"Bearer {BOB}"}).status_code == 429


def test_one_clients_simultaneous_made_up_tokens_are_capped_while_in_flight(settings, monkeypatch):
    gate = threading.Event()
    real = auth.TokenHash.matches
    monkeypatch.setattr(auth.TokenHash, "matches", lambda self, token: gate.wait(30) and real(self, token))
    app = create_app(Settings(**settings, max_auth_failures=4, auth_failure_rate=0.01, max_pending_verifications=100))
    with serve(app) as client, ThreadPoolExecutor(12) as pool:
        try:
            flood = [
                pool.submit(
                    httpx.get,
                    _url(client, "/datasets/mmc4"),
                    timeout=40,
                    headers={"Authorization": f"Bearer flood-{i}"},
                )
                for i in range(12)
            ]
            deadline = time.monotonic() + 20
            while sum(f.done() for f in flood) < 8 and time.monotonic() < deadline:
                time.sleep(0.05)
            refused = [f.result().status_code for f in flood if f.done()]
            assert refused == [429] * 8  # only 4 reached PBKDF2; the rest answered at once
            assert app.state.verifier.pending == 4
        finally:
            gate.set()
        assert sorted(f.result().status_code for f in flood) == [401] * 4 + [429] * 8


def test_tokens_in_the_query_string_are_refused_and_never_logged(settings):
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    access = logging.getLogger("uvicorn.access")
    handler = Keep()
    app = create_app(Settings(**settings))
    with serve(app) as client:
        access.addHandler(handler)
        old_level, old_disabled = access.level, access.disabled
        access.setLevel(logging.INFO)
        access.disabled = False
        try:
            for path in ("/datasets/mmc4", "/datasets/mmc4/shards", "/health"):
                for param in ("access_token", "token", "api_key"):
                    r = client.get(path, params={param: ALICE, "limit": 2})
                    assert r.status_code == 400, (path, param, r.text)
                    assert ALICE not in r.text and "Authorization: Bearer" in r.json()["detail"]
            anonymous = httpx.get(_url(client, "/datasets/mmc4/shards"), params={"access_token": BOB})
            assert anonymous.status_code == 400
        finally:
            access.removeHandler(handler)
            access.setLevel(old_level)
            access.disabled = old_disabled
    assert lines and any("REDACTED" in line for line in lines)
    assert not any(ALICE in line or BOB in line for line in lines), lines


def test_a_malformed_tokens_file_at_reload_is_logged_and_the_last_good_set_kept(settings, caplog):
    tokens_file = settings["tokens_file"]
    app = create_app(Settings(**settings))
    with serve(app) as client, caplog.at_level(logging.ERROR, logger="mmc4_assets.api.auth"):
        assert client.get("/datasets/mmc4").status_code == 200
        with open(tokens_file, "w") as fh:
            fh.write('{"alice": "pbkdf2_sha256$1000$salt$')  # half-written
        os.utime(tokens_file, ns=(time.time_ns() + 10**9,) * 2)
        for _ in range(3):  # reported once, not on every request
            assert client.get("/datasets/mmc4").status_code == 200
            assert client.get("/datasets/mmc4", headers={"Authorization": f"Bearer {BOB}"}).status_code == 200
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and tokens_file in errors[0].getMessage()
        assert "does not parse" in app.state.verifier.reload_error
        # a fixed file is picked up again
        with open(tokens_file, "w") as fh:
            json.dump({"alice": auth.hash_token(ALICE, ITERATIONS)}, fh)
        os.utime(tokens_file, ns=(time.time_ns() + 2 * 10**9,) * 2)
        assert client.get("/datasets/mmc4", headers={"Authorization": f"Bearer {BOB}"}).status_code == 401
        assert app.state.verifier.reload_error is None


def test_failure_limiter_refills_and_stays_bounded():
    now = [0.0]
    limiter = auth.FailureLimiter(burst=2, rate=0.5, max_clients=3, clock=lambda: now[0])
    assert limiter.retry_after("a") == 0
    limiter.failed("a")
    limiter.failed("a")
    assert limiter.retry_after("a") == pytest.approx(2.0)
    now[0] = 2.0
    assert limiter.retry_after("a") == 0
    limiter.failed("a")
    limiter.refund("a")  # a verification in flight that succeeded
    assert limiter.retry_after("a") == 0
    for c in "bcde":
        limiter.failed(c)
    assert len(limiter._buckets) == 3 and "a" not in limiter._buckets
