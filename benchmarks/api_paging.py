"""Paging latency of the read API over a synthetic published corpus.

    .venv/bin/python benchmarks/api_paging.py                       # 200 shards x 500 docs
    .venv/bin/python benchmarks/api_paging.py --shards 4 --docs 50  # a quick correctness run

Builds the corpus once under --root (reused while its manifests match --shards/--docs),
starts ``python -m mmc4_assets.api`` on 127.0.0.1 in its own process with a fresh sidecar
cache, and prints: cold index time (listing + reading every manifest), time to a ready
server, the first-touch cost of a shard (sidecar build), p50/p99 of limit=100 pages near
the start and near the end (warm), filtered pages, single documents, the server's RSS, and,
for comparison, what the same end-of-corpus page costs by inflating the zip up to it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from mmc4_assets.api.auth import hash_token
from mmc4_assets.api.index import Catalog
from mmc4_assets.api.service import Dataset, Query
from mmc4_assets.api.shardcache import ShardCache
from mmc4_assets.publish.mmc4_format import make_document, shard_filename
from mmc4_assets.publish.shards import iter_shard_lines, write_shard
from mmc4_assets.storage import ShardStore

WORDS = [
    "bread",
    "flour",
    "water",
    "salt",
    "starter",
    "dough",
    "oven",
    "crust",
    "crumb",
    "loaf",
    "knead",
    "proof",
    "bake",
    "rise",
    "fold",
    "shape",
    "score",
    "steam",
    "butter",
    "sugar",
    "egg",
    "lemon",
    "garden",
    "travel",
    "city",
    "river",
    "mountain",
    "camera",
    "light",
    "colour",
]  # noqa: E501


def synthetic_doc(rng: random.Random, shard: int, i: int) -> dict:
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(8, 20))).capitalize() + "." for _ in range(rng.randint(4, 14))]
    n_images = rng.randint(1, 6)
    matrix = [[round(rng.uniform(0.05, 0.35), 4) for _ in texts] for _ in range(n_images)]
    images = []
    for j, row in enumerate(matrix):
        best = max(range(len(texts)), key=row.__getitem__)
        images.append(
            {
                "image_name": f"{rng.getrandbits(128):032x}.jpg",
                "raw_url": f"https://img{shard}.test/{i}/{j}.jpg",
                "matched_text_index": best,
                "matched_sim": row[best],
            }
        )
    return make_document(f"https://site{shard}.test/page/{i}", texts, images, matrix, 0)


def build_corpus(store: ShardStore, shards: int, docs: int) -> float:
    """Publish the corpus unless the same one is already there; seconds spent building."""
    folder = Path(store.root.path) / "published"
    manifests = sorted(folder.glob("*.manifest.json")) if folder.exists() else []
    if len(manifests) == shards and all(json.loads(m.read_text())["num_docs"] == docs for m in manifests):
        return 0.0
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    for n in range(shards):
        rng = random.Random(n)
        write_shard(
            store,
            shard_filename(f"c4-train.{n:05d}-of-01024"),
            (synthetic_doc(rng, n, i) for i in range(docs)),
            {"source_shard": f"c4-train.{n:05d}-of-01024", "model": "synthetic"},
        )
    return time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def timed(client: httpx.Client, path: str, **params) -> tuple[float, dict]:
    started = time.perf_counter()
    r = client.get(path, params=params)
    elapsed = (time.perf_counter() - started) * 1000
    r.raise_for_status()
    return elapsed, r.json()


def latencies(client: httpx.Client, offsets: list[int], **params) -> list[float]:
    return [timed(client, "/datasets/mmc4", limit=100, offset=o, **params)[0] for o in offsets]


def report(label: str, ms: list[float]) -> None:
    print(f"  {label:44s} p50 {pct(ms, 50):7.2f} ms   p99 {pct(ms, 99):7.2f} ms   (n={len(ms)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "mmc4-api-bench"))
    parser.add_argument("--shards", type=int, default=200)
    parser.add_argument("--docs", type=int, default=500, help="documents per shard")
    parser.add_argument("--requests", type=int, default=200, help="pages per measurement")
    args = parser.parse_args()

    root = Path(args.root)
    store = ShardStore(root / "storage")
    built = build_corpus(store, args.shards, args.docs)
    total = args.shards * args.docs
    zips = sum(p.stat().st_size for p in (root / "storage" / "published").glob("*.zip"))
    print(
        f"corpus: {args.shards} shards x {args.docs} docs = {total} docs, {zips / 1e6:.1f} MB of zips "
        f"({f'built in {built:.1f}s' if built else 'reused'}) under {root}"
    )

    started = time.perf_counter()
    snap = Catalog(store).refresh()
    index_s = time.perf_counter() - started
    assert snap.view("full").total == total, snap.counts()
    print(f"cold index (list + read {len(snap.entries)} manifests, in-process): {index_s * 1000:.1f} ms")

    token = "bench-token"
    tokens = root / "tokens.json"
    tokens.write_text(json.dumps({"bench": hash_token(token)}))  # default iterations, as deployed
    cache = root / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mmc4_assets.api",
            "--storage-root",
            str(store.root),
            "--tokens-file",
            str(tokens),
            "--cache-dir",
            str(cache),
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
    )
    try:
        base = f"http://127.0.0.1:{port}"
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.perf_counter() - started > 60:
                raise SystemExit("server did not start")
            time.sleep(0.05)
        print(f"process start to /health ready (imports + index): {(time.perf_counter() - started) * 1000:.0f} ms")
        rss0 = rss_mb(proc.pid)[0]

        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120) as client:
            first, _ = timed(client, "/datasets/mmc4", limit=1)
            print(f"first request of a token (one PBKDF2, 600k iterations) + shard 0 sidecar: {first:.0f} ms")

            rng = random.Random(0)
            window = min(total - 100, 5 * args.docs)
            start_offsets = [rng.randrange(0, window) for _ in range(args.requests)]
            end_offsets = [rng.randrange(total - 100 - window, total - 100) for _ in range(args.requests)]
            cold_start = latencies(client, start_offsets[:20])  # first touches build sidecars
            cold_end = latencies(client, end_offsets[:20])
            print(
                f"first pages touching cold shards (sidecar builds):  max near start {max(cold_start):.1f} ms, "
                f"max near end {max(cold_end):.1f} ms"
            )
            latencies(client, start_offsets + end_offsets)  # warm every shard both windows touch
            print(f"limit=100 pages, warm (offsets in [0, {window}) and [{total - 100 - window}, {total - 100})):")
            both = latencies(client, [o for pair in zip(start_offsets, end_offsets) for o in pair])  # same noise
            report("near the start", both[0::2])
            report("near the end", both[1::2])

            started, answers_503 = time.perf_counter(), 0
            params = {"limit": 100, "min_images": 4, "min_matched_sim": 0.3}
            while (r := client.get("/datasets/mmc4", params=params)).status_code == 503:  # summaries building
                answers_503 += 1
                time.sleep(0.2)
            r.raise_for_status()
            filtered_total = r.json()["total"]
            print(
                f"first filtered answer (min_images=4, min_matched_sim=0.3: {filtered_total} docs), after every "
                f"remaining sidecar was built: {(time.perf_counter() - started) * 1000:.0f} ms "
                f"({answers_503} 503 answers meanwhile)"
            )
            span = max(1, filtered_total - 100)
            fstart = [rng.randrange(0, min(window, span)) for _ in range(args.requests)]
            fend = [rng.randrange(max(0, span - window), span) for _ in range(args.requests)]
            both = latencies(client, [o for pair in zip(fstart, fend) for o in pair], min_images=4, min_matched_sim=0.3)
            report("filtered, near the start", both[0::2])
            report("filtered, near the end", both[1::2])
            ids = [f"{rng.randrange(args.shards)}-{rng.randrange(args.docs)}" for _ in range(args.requests)]
            report("GET /datasets/mmc4/{id}", [timed(client, f"/datasets/mmc4/{i}")[0] for i in ids])

            seen, offset = set(), 0
            if total <= 20_000:  # full coverage check on small runs
                while offset is not None:
                    _, body = timed(client, "/datasets/mmc4", limit=100, offset=offset)
                    seen.update(d["id"] for d in body["documents"])
                    offset = body["next"]
                assert len(seen) == total, (len(seen), total)
                print(f"paged through all {total} documents: each exactly once")

        rss, hwm = rss_mb(proc.pid)
        sidecars = sum(p.stat().st_size for p in cache.rglob("*.sidecar"))
        print(f"server RSS: {rss0:.0f} MB after start, {rss:.0f} MB at the end (peak {hwm:.0f} MB)")
        print(f"sidecar cache: {sidecars / 1e6:.1f} MB on disk for {zips / 1e6:.1f} MB of zips")
    finally:
        proc.terminate()
        proc.wait(10)

    dataset = Dataset(Catalog(store), ShardCache(store, cache))  # the same sidecars, no HTTP
    in_process = []
    for o in [o for pair in zip(start_offsets, end_offsets) for o in pair]:
        started = time.perf_counter()
        dataset.page(Query(), o, 100).to_json()
        in_process.append((time.perf_counter() - started) * 1000)
    print("the same pages in-process (Dataset.page + JSON body, no HTTP):")
    report("near the start", in_process[0::2])
    report("near the end", in_process[1::2])

    last = snap.view("full").entries[-1]
    started = time.perf_counter()
    for i, _ in enumerate(iter_shard_lines(store, last.shard_file)):
        if i >= last.num_docs - 1:
            break
    print(
        f"for comparison, inflating shard {last.key}'s zip up to its last line (no sidecar): "
        f"{(time.perf_counter() - started) * 1000:.1f} ms per page at the end of a shard"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
