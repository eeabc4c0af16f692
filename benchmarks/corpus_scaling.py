"""Cost of the cross-shard step as the corpus grows: adding one shard vs. a full recompute.

Synthetic per-shard contributions (what ``image_hash_counts`` and ``doc_fingerprints``
write) for up to 101 shards, then for each corpus size N: a full recompute over N shards,
and adding shard N+1 to that state incrementally. Each measurement runs in a fresh
process; memory is its peak RSS above the RSS it had after imports.

    .venv/bin/python benchmarks/corpus_scaling.py                      # 10, 25, 50, 100 shards
    .venv/bin/python benchmarks/corpus_scaling.py --shards 10,100 --keys-per-shard 50000
    .venv/bin/python benchmarks/corpus_scaling.py --minhash            # numpy vs datasketch

Synthetic data: each shard holds ``--keys-per-shard`` distinct image pHashes, 5 % drawn
from a pool of 2,000 (or keys/10) "stock" pictures shared across shards (so some cross 10 documents as
shards accumulate), and ``--docs-per-shard`` documents with random MinHash signatures,
1 % of them near-copies of a document on an earlier shard and 0.5 % sharing its URL.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from mmc4_assets.dedup.doc_index import SCHEME, fingerprint_schema, update_doc_index
from mmc4_assets.dedup.image_counts import update_image_counts
from mmc4_assets.storage import ShardStore

STOCK = 2000


def shard_key(i: int) -> str:
    return f"s{i:04d}"


def make_data(root: Path, shards: int, keys: int, docs: int, seed: int = 0) -> None:
    store = ShardStore(root)
    rng = np.random.default_rng(seed)
    stock = rng.integers(0, 2**63, max(STOCK, keys // 10), dtype=np.uint64)
    sigs_by_shard: list[np.ndarray] = []
    for i in range(shards):
        n_stock = keys // 20
        hashes = np.concatenate([rng.choice(stock, n_stock, replace=False),
                                 rng.integers(0, 2**63, keys - n_stock, dtype=np.uint64)])
        store.write_table("image_hash_counts", shard_key(i), pl.DataFrame(
            {"key": hashes, "n": rng.integers(1, 3, keys).astype(np.uint32)}))
        sigs = rng.integers(0, 2**32, (docs, SCHEME.num_perm), dtype=np.uint32)
        urls = rng.integers(0, 2**63, docs, dtype=np.uint64)
        if i:
            k = max(1, docs // 100)
            src = rng.integers(0, i, k)
            for j, s in enumerate(src):  # near-copies: 5 % of the signature re-drawn (Jaccard ~0.95)
                sigs[j] = sigs_by_shard[s][rng.integers(0, docs)]
                flip = rng.random(SCHEME.num_perm) < 0.05
                sigs[j, flip] = rng.integers(0, 2**32, flip.sum(), dtype=np.uint32)
            u = max(1, docs // 200)
            urls[k:k + u] = rng.integers(0, 2**63, u, dtype=np.uint64) % 1000  # a small shared URL pool
        sigs_by_shard.append(sigs)
        store.write_table("doc_fingerprints", shard_key(i), pl.DataFrame({
            "doc_id": [f"{shard_key(i)}:{d}" for d in range(docs)], "url_key": urls,
            "candidate": [True] * docs, "signature": pl.Series(sigs, dtype=fingerprint_schema()["signature"]),
        }, schema=fingerprint_schema()))


def _rss_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def run_step(root: Path, kind: str, step: str, n: int, buckets: int) -> dict:
    """One measurement in this (fresh) process."""
    store = ShardStore(root)
    latest = {shard_key(i): 1 for i in range(n + (step == "add"))}
    base = _rss_kib("VmRSS:")
    started = time.perf_counter()
    if kind == "images":
        update = update_image_counts(store, latest, lambda s: store.read_table("image_hash_counts", s),
                                     buckets=buckets, full_recompute=step == "full")
    else:
        update = update_doc_index(store, latest, lambda s: store.read_table("doc_fingerprints", s),
                                  buckets=buckets, full_recompute=step == "full")
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_mib": (_rss_kib("VmHWM:") - base) / 1024,
            "shards_read": len(update.absorbed), "stats": update.stats}


def measure(root: Path, kind: str, step: str, n: int, buckets: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--_step", f"{kind}:{step}:{n}", "--workdir", str(root),
                          "--buckets", str(buckets)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def state_mib(root: Path, name: str) -> float:
    folder = root / "corpus" / name
    return sum(p.stat().st_size for p in folder.iterdir()) / 2**20 if folder.exists() else 0.0


def scaling(args) -> None:
    sizes = [int(s) for s in args.shards.split(",")]
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="corpus-bench-"))
    started = time.perf_counter()
    make_data(root, max(sizes) + 1, args.keys_per_shard, args.docs_per_shard)
    print(f"synthetic data: {max(sizes) + 1} shards x {args.keys_per_shard} image keys, "
          f"{args.docs_per_shard} docs ({time.perf_counter() - started:.0f}s to generate) in {root}")
    print(f"machine: {os.cpu_count()} cpus (shared; wall-clock times), buckets={args.buckets}\n")
    header = ("| asset | shards N | index rows | state MiB | add shard N+1: s | add: peak MiB | add: shards read "
              "| full recompute N: s | full: peak MiB | full: shards read |")
    print(header)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        for kind, name in (("images", "image_counts"), ("docs", "doc_index")):
            shutil.rmtree(root / "corpus" / name, ignore_errors=True)
            full = measure(root, kind, "full", n, args.buckets)
            add = measure(root, kind, "add", n, args.buckets)
            rows = (add["stats"].get("index_rows") or add["stats"].get("band_rows", 0))
            read = f"{add['shards_read']}"
            if kind == "docs":  # earlier shards whose signatures verified a near-duplicate candidate
                read += f" (+{max(0, add['stats'].get('shards_read_for_verification', 0) - 1)} to verify)"
            print(f"| {'corpus_image_counts' if kind == 'images' else 'corpus_doc_index'} | {n} | {rows:,} | "
                  f"{state_mib(root, name):.1f} | {add['seconds']:.2f} | {add['peak_mib']:.0f} | {read} | "
                  f"{full['seconds']:.2f} | {full['peak_mib']:.0f} | {full['shards_read']} |", flush=True)
    if not args.workdir:
        shutil.rmtree(root, ignore_errors=True)


def minhash_compare(docs: int) -> None:
    """The same word 5-gram MinHash (128 permutations) with this project's numpy code and datasketch."""
    import re

    from mmc4_assets.dedup.minhash import signatures

    rng = np.random.default_rng(0)
    vocab = np.array([f"w{i}" for i in range(20000)])
    texts = [" ".join(vocab[rng.integers(0, len(vocab), rng.integers(50, 600))]) for _ in range(docs)]
    started = time.perf_counter()
    signatures(texts, SCHEME)
    ours = time.perf_counter() - started
    try:
        from datasketch import MinHash
    except ImportError:
        print(f"numpy: {ours:.2f}s for {docs} docs; datasketch not installed")
        return
    started = time.perf_counter()
    for t in texts:
        w = re.findall(r"\w+", t.lower())
        m = MinHash(num_perm=SCHEME.num_perm, seed=1)
        m.update_batch([" ".join(w[i:i + 5]).encode() for i in range(max(1, len(w) - 4))])
    theirs = time.perf_counter() - started
    print(f"| implementation | {docs} docs, s | docs/s |\n|---|---:|---:|\n| numpy (mmc4_assets.dedup.minhash) | "
          f"{ours:.2f} | {docs / ours:,.0f} |\n| datasketch MinHash.update_batch | {theirs:.2f} | {docs / theirs:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", default="10,25,50,100")
    parser.add_argument("--keys-per-shard", type=int, default=20000)
    parser.add_argument("--docs-per-shard", type=int, default=2000)
    parser.add_argument("--buckets", type=int, default=16)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--minhash", action="store_true", help="compare MinHash implementations instead")
    parser.add_argument("--minhash-docs", type=int, default=2000)
    parser.add_argument("--_step", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._step:
        kind, step, n = args._step.split(":")
        print(json.dumps(run_step(Path(args.workdir), kind, step, int(n), args.buckets)))
    elif args.minhash:
        minhash_compare(args.minhash_docs)
    else:
        scaling(args)


if __name__ == "__main__":
    main()
