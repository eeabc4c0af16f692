"""Valid-request latency of the read API while made-up tokens flood it.

    .venv/bin/python benchmarks/api_token_flood.py                    # 50 bad tokens, 1 and 50 source addresses
    .venv/bin/python benchmarks/api_token_flood.py --bad 100 --sources 1 20
    PYTHONPATH=/path/to/other/checkout .venv/bin/python benchmarks/api_token_flood.py   # the same on other code

Builds a small published corpus and a tokens file with a real 600k-iteration PBKDF2 hash,
starts ``python -m mmc4_assets.api`` on 127.0.0.1 in its own process (so PYTHONPATH picks
the code under test), verifies the valid token once (it is cached from then on), and prints:
the valid request's p50/p99 alone, then while N requests with distinct made-up tokens are in
flight, sent from ``--sources`` different loopback addresses (127.0.0.x: one attacker, or
many), how those bad requests were answered and how long the flood took to drain. Loopback
only; every request has a timeout and the flood phase a time cap.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from mmc4_assets.api.auth import hash_token
from mmc4_assets.publish.mmc4_format import make_document, shard_filename
from mmc4_assets.publish.shards import write_shard
from mmc4_assets.storage import ShardStore

TOKEN = "bench-valid-token-0123456789abcdef"


def build_corpus(root: Path, shards: int = 2, docs: int = 50) -> None:
    store = ShardStore(root)
    for s in range(shards):
        rows = []
        for i in range(docs):
            texts = [f"Shard {s} doc {i} sentence {k}." for k in range(3)]
            images = [
                {
                    "image_name": f"{s:02d}{i:04d}.jpg",
                    "raw_url": f"https://img.test/{s}/{i}.jpg",
                    "matched_text_index": 0,
                    "matched_sim": 0.3,
                }
            ]
            rows.append(make_document(f"https://site.test/{s}/{i}", texts, images, [[0.3, 0.1, 0.1]], 0))
        write_shard(
            store,
            shard_filename(f"c4-train.{s:05d}-of-01024", "v2"),
            iter(rows),
            {"source_shard": f"c4-train.{s:05d}-of-01024", "model": "bench"},
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def valid_latencies(base: str, n: int | None, stop: asyncio.Event | None, cap: float) -> list[float]:
    out: list[float] = []
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=cap, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        while (n is None or len(out) < n) and time.perf_counter() - started < cap:
            if stop is not None and stop.is_set() and len(out) >= 20:
                break
            t = time.perf_counter()
            r = await client.get("/datasets/mmc4", params={"limit": 10})
            assert r.status_code == 200, r.text
            out.append((time.perf_counter() - t) * 1000)
            await asyncio.sleep(0.02)
    return out


async def flood(base: str, bad: int, sources: int, cap: float) -> tuple[Counter, float, list[float]]:
    clients = [
        httpx.AsyncClient(
            base_url=base, timeout=cap, transport=httpx.AsyncHTTPTransport(local_address=f"127.0.0.{2 + i}")
        )
        for i in range(sources)
    ]
    codes: Counter = Counter()
    done = asyncio.Event()

    async def one(i: int) -> None:
        try:
            r = await clients[i % sources].get(
                "/datasets/mmc4", headers={"Authorization": f"Bearer made-up-{i}-{os.urandom(4).hex()}"}
            )
            codes[r.status_code] += 1
        except httpx.HTTPError as exc:
            codes[type(exc).__name__] += 1

    started = time.perf_counter()
    tasks = [asyncio.create_task(one(i)) for i in range(bad)]
    await asyncio.sleep(0.2)  # the flood is in flight before the first valid request
    sampler = asyncio.create_task(valid_latencies(base, None, done, cap))
    await asyncio.gather(*tasks)
    drained = time.perf_counter() - started
    done.set()
    latencies = await sampler
    for c in clients:
        await c.aclose()
    return codes, drained, latencies


def loadavg() -> str:
    with open("/proc/loadavg") as fh:
        return fh.read().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bad", type=int, default=50, help="made-up-token requests in flight")
    parser.add_argument(
        "--sources",
        type=int,
        nargs="+",
        default=[1, 50],
        help="loopback source addresses the bad requests come from (one run each)",
    )
    parser.add_argument("--baseline", type=int, default=50, help="valid requests measured alone")
    parser.add_argument("--cap", type=float, default=90.0, help="seconds a flood phase may take")
    args = parser.parse_args()

    import mmc4_assets

    print(f"code under test: {Path(mmc4_assets.__file__).parent}")
    print(f"load average before: {loadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        root, tokens = Path(tmp) / "root", Path(tmp) / "tokens.json"
        build_corpus(root)
        t = time.perf_counter()
        tokens.write_text(json.dumps({"bench": hash_token(TOKEN)}))  # 600k iterations, as in production
        print(f"one PBKDF2 derivation (600k iterations): {time.perf_counter() - t:.3f} s")
        for sources in args.sources:
            port = free_port()
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mmc4_assets.api",
                    "--storage-root",
                    str(root),
                    "--tokens-file",
                    str(tokens),
                    "--port",
                    str(port),
                    "--cache-dir",
                    str(Path(tmp) / f"cache{sources}"),
                    "--log-level",
                    "warning",
                ],
                cwd=tmp,
                start_new_session=True,
            )  # cwd: not this checkout
            base = f"http://127.0.0.1:{port}"
            try:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        if httpx.get(base + "/health", timeout=2).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    assert time.monotonic() < deadline and server.poll() is None, "server did not start"
                    time.sleep(0.2)
                alone = asyncio.run(valid_latencies(base, args.baseline + 1, None, args.cap))[1:]  # 1st: PBKDF2
                codes, drained, during = asyncio.run(flood(base, args.bad, sources, args.cap))
            finally:
                server.terminate()
                server.wait(10)
            print(f"\n{args.bad} bad-token requests from {sources} source address(es):")
            print(
                f"  valid alone:        n={len(alone):3d}  p50 {pct(alone, 0.5):8.1f} ms  p99 {pct(alone, 0.99):8.1f} ms"  # noqa: E501
            )
            print(
                f"  valid during flood: n={len(during):3d}  p50 {pct(during, 0.5):8.1f} ms  "
                f"p99 {pct(during, 0.99):8.1f} ms  max {max(during, default=float('nan')):8.1f} ms  "
                f"mean {statistics.fmean(during) if during else float('nan'):8.1f} ms"
            )
            print(f"  bad requests answered: {dict(sorted(codes.items(), key=str))}; flood drained in {drained:.2f} s")
    print(f"\nload average after: {loadavg()}")


if __name__ == "__main__":
    main()
