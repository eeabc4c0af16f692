"""Cost of the corpus-wide step as the corpus grows: batch updates, full recomputes, the blocklist.

Synthetic per-shard contributions (what ``image_hash_counts`` and ``doc_fingerprints`` write)
for up to max(N) + batch shards. For each corpus size N (100 / 1,000 / 5,000 by default):

- **full recompute** over N shards: the document index, MMC4's sample blocklist (the
  default image rule) and, as a separate row, the exact corpus counts (the option);
- **batch update**: that state absorbing ``--batch`` (100) new shards in one update;
- **blocklist**: building it from the sample (60,000 images, > 10 near-duplicates within
  5 bits) and applying it to ``--batch`` shards (the O(shard) multi-index lookup each
  shard's publication does).

Every measurement runs in a fresh process; "peak MiB" is that process's peak RSS (VmHWM,
imports included), so the 2 GB bound reads directly. The Dask engine's workers (full
recompute with ``--engine``) are separate processes: their peak is reported apart.

    .venv/bin/python benchmarks/corpus_scaling.py                       # 100, 1000, 5000 shards
    .venv/bin/python benchmarks/corpus_scaling.py --shards 100,1000 --keys-per-shard 20000
    .venv/bin/python benchmarks/corpus_scaling.py --engine              # full recomputes on Dask
    .venv/bin/python benchmarks/corpus_scaling.py --only docs           # the document index alone
    .venv/bin/python benchmarks/corpus_scaling.py --minhash             # numpy vs datasketch

Synthetic data: each shard holds ``--keys-per-shard`` image pHashes (5 % drawn from a pool of
"stock" pictures shared across shards, each stock picture also appearing as 1-3 near-copies
a few bits away), and ``--docs-per-shard`` documents with random MinHash signatures, 1 % of
them near-copies of a document on an earlier shard and 0.5 % sharing a URL.
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

from mmc4_assets.dedup.corpus_state import TableReader
from mmc4_assets.dedup.doc_index import SCHEME, fingerprint_schema

STOCK = 2000
APPLY_MIN_BLOCKED = 1000  # the apply step looks up at least this many blocked hashes


def shard_key(i: int) -> str:
    return f"s{i:05d}"


def make_data(root: Path, shards: int, keys: int, docs: int, seed: int = 0) -> None:
    from mmc4_assets.storage import ShardStore

    store = ShardStore(root)
    rng = np.random.default_rng(seed)
    stock = rng.integers(0, 2**63, max(STOCK, keys // 10), dtype=np.uint64)
    # near-copies of the stock pictures: 1-3 bits flipped (re-encoded or resized copies)
    flips = np.uint64(1) << rng.integers(0, 64, (len(stock), 3)).astype(np.uint64)
    variants = np.stack(
        [
            stock,
            stock ^ flips[:, 0],
            stock ^ flips[:, 0] ^ flips[:, 1],
            stock ^ flips[:, 0] ^ flips[:, 1] ^ flips[:, 2],
        ],
        axis=1,
    )
    prev_sigs: list[np.ndarray] = []
    for i in range(shards):
        if store.has_table("doc_fingerprints", shard_key(i)):
            continue
        n_stock = keys // 20
        picks = variants[rng.integers(0, len(stock), n_stock), rng.integers(0, 4, n_stock)]
        hashes = np.unique(np.concatenate([picks, rng.integers(0, 2**63, keys - n_stock, dtype=np.uint64)]))
        store.write_table(
            "image_hash_counts",
            shard_key(i),
            pl.DataFrame({"key": hashes, "n": rng.integers(1, 3, len(hashes)).astype(np.uint32)}),
        )
        sigs = rng.integers(0, 2**32, (docs, SCHEME.num_perm), dtype=np.uint32)
        urls = rng.integers(0, 2**63, docs, dtype=np.uint64)
        if prev_sigs:
            k = max(1, docs // 100)
            for j in range(k):  # near-copies: 5 % of the signature re-drawn (Jaccard ~0.95)
                src = prev_sigs[rng.integers(0, len(prev_sigs))]
                sigs[j] = src[rng.integers(0, len(src))]
                flip = rng.random(SCHEME.num_perm) < 0.05
                sigs[j, flip] = rng.integers(0, 2**32, flip.sum(), dtype=np.uint32)
            u = max(1, docs // 200)
            urls[k : k + u] = rng.integers(0, 2**63, u, dtype=np.uint64) % 1000  # a small shared URL pool
        prev_sigs = (prev_sigs + [sigs])[-20:]  # near-copies of recent shards (bounded generator memory)
        store.write_table(
            "doc_fingerprints",
            shard_key(i),
            pl.DataFrame(
                {
                    "doc_id": [f"{shard_key(i)}:{d}" for d in range(docs)],
                    "url_key": urls,
                    "candidate": [True] * docs,
                    "signature": pl.Series(sigs, dtype=fingerprint_schema()["signature"]),
                },
                schema=fingerprint_schema(),
            ),
        )


def _rss_mib(pid: int | str = "self", field: str = "VmHWM:") -> float:
    """Peak (VmHWM) or current (VmRSS) resident memory of a process, MiB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return 0.0


def run_step(root: Path, state: Path, kind: str, step: str, n: int, batch: int, engine: bool) -> dict:
    """One measurement in this (fresh) process."""
    from mmc4_assets.dedup import blocklist as bl
    from mmc4_assets.dedup.doc_index import update_doc_index
    from mmc4_assets.dedup.image_counts import update_image_counts
    from mmc4_assets.engine import EngineSettings, dask_client
    from mmc4_assets.storage import ShardStore

    data, store = ShardStore(root), ShardStore(state)
    latest = {shard_key(i): 1 for i in range(n + (batch if step == "batch" else 0))}
    full = step == "full"
    worker_peak = 0.0
    started = time.perf_counter()
    client_cm = dask_client(EngineSettings(n_workers=2, memory_limit="2GiB")) if engine and full else None
    client = client_cm.__enter__() if client_cm else None
    try:
        # the state lives apart from the data: the benchmark's store for contributions is read-only
        if kind == "docs":
            update = update_doc_index(
                store, latest, TableReader(data, "doc_fingerprints"), full_recompute=full, client=client
            )
        elif kind == "exact":
            update = update_image_counts(
                store, latest, TableReader(data, "image_hash_counts", ("key", "n")), full_recompute=full, client=client
            )
        elif kind == "blocklist" and step in ("full", "batch"):
            update = bl.update_image_blocklist(
                store, latest, TableReader(data, "image_hash_counts", ("key", "n")), full_recompute=full, client=client
            )
        else:  # blocklist build / apply, on the state a full recompute left
            return blocklist_step(data, store, step, n, batch)
        if client is not None:
            worker_peak = max(client.run(lambda: _rss_mib()).values())
    finally:
        if client_cm:
            client_cm.__exit__(None, None, None)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "peak_mib": _rss_mib(),
        "worker_peak_mib": worker_peak,
        "shards_read": len(update.absorbed),
        "stats": {k: v for k, v in update.stats.items() if isinstance(v, (int, float, str, bool))},
    }


def blocklist_step(data, store, step: str, n: int, batch: int) -> dict:
    from mmc4_assets.dedup import blocklist as bl
    from mmc4_assets.dedup.corpus_state import CorpusState

    state = CorpusState.load(store, bl.NAME)
    started = time.perf_counter()
    if step == "build":
        blocked = bl.build_blocklist(state.read("sample", bl.SAMPLE_SCHEMA), bl.BlocklistRule())
        out = {"blocklist_size": blocked.height, "sampled_images": state.read("sample", bl.SAMPLE_SCHEMA).height}
    else:  # apply: the lookup each shard's publication does, for `batch` shards
        blocklist, _, _ = bl.load_blocklist(store)
        if blocklist.size < APPLY_MIN_BLOCKED:
            # synthetic shards hold no picture frequent enough for MMC4's rule; so that the lookup
            # does real work, block the sample's most-duplicated hashes (as a lower threshold would)
            sample = state.read("sample", bl.SAMPLE_SCHEMA)
            top = sample.group_by("key").len().sort("len", "key", descending=True).head(APPLY_MIN_BLOCKED)
            blocklist = bl.Blocklist(np.sort(top["key"].to_numpy()), blocklist.max_distance)
        dropped = images = 0
        for i in range(n, n + batch):
            phashes = [f"{k:016x}" for k in data.read_table("image_hash_counts", shard_key(i))["key"].to_list()]
            images += len(phashes)
            dropped += len(blocklist.matches(phashes))
        out = {"images_checked": images, "images_dropped": dropped, "blocklist_size": blocklist.size}
    return {
        "seconds": time.perf_counter() - started,
        "peak_mib": _rss_mib(),
        "worker_peak_mib": 0.0,
        "shards_read": batch if step == "apply" else 0,
        "stats": out,
    }


def measure(args, data: Path, state: Path, kind: str, step: str, n: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--_step",
        f"{kind}:{step}:{n}",
        "--workdir",
        str(data),
        "--_state",
        str(state),
        "--batch",
        str(args.batch),
    ] + (["--engine"] if args.engine else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{kind}:{step}:{n} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _copy_state(src: Path, dst: Path) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)


def state_mib(root: Path) -> float:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20 if root.exists() else 0.0


def scaling(args) -> None:
    sizes = [int(s) for s in args.shards.split(",")]
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="corpus-bench-"))
    data = root / "data"
    started = time.perf_counter()
    make_data(data, max(sizes) + args.batch, args.keys_per_shard, args.docs_per_shard)
    print(
        f"synthetic data: {max(sizes) + args.batch} shards x {args.keys_per_shard} image keys, "
        f"{args.docs_per_shard} docs ({time.perf_counter() - started:.0f}s to generate) in {data}"
    )
    load = Path("/proc/loadavg").read_text().split()[0]
    print(
        f"machine: {os.cpu_count()} cpus (shared; wall-clock times); 1-min load average {load}; "
        f"engine for full recomputes: {'Dask LocalCluster, 2 workers' if args.engine else 'none (this process)'}\n"
    )
    print("| shards N | step | what | s | peak MiB | shards read | result |")
    print("|---:|---|---|---:|---:|---:|---|")
    for n in sizes:
        for kind, label in (
            ("blocklist", "image blocklist (MMC4 rule, default)"),
            ("docs", "document index"),
            ("exact", "exact image counts (option)"),
        ):
            if (kind == "exact" and args.skip_exact) or (args.only and kind != args.only):
                continue
            full_state, state = root / f"state-{kind}-{n}", root / f"state-{kind}-{n}-batch"
            shutil.rmtree(full_state, ignore_errors=True)
            full = measure(args, data, full_state, kind, "full", n)
            _copy_state(full_state, state)
            add = measure(args, data, state, kind, "batch", n)
            for step, r in (("full recompute", full), (f"batch +{args.batch}", add)):
                extra = f" (Dask workers {r['worker_peak_mib']:.0f})" if r["worker_peak_mib"] else ""
                print(
                    f"| {n:,} | {step} | {label} | {r['seconds']:.1f} | {r['peak_mib']:.0f}{extra} | "
                    f"{r['shards_read']:,} | {_result(kind, r['stats'])} |",
                    flush=True,
                )
            if kind == "blocklist":
                for step in ("build", "apply"):
                    r = measure(args, data, full_state, kind, step, n)
                    what = "build blocklist from sample" if step == "build" else f"apply to {args.batch} shards"
                    print(
                        f"| {n:,} | {what} | image blocklist | {r['seconds']:.2f} | {r['peak_mib']:.0f} | "
                        f"{r['shards_read']} | {_result(kind, r['stats'])} |",
                        flush=True,
                    )
            print(f"<!-- state {kind} at {n}: {state_mib(state):.0f} MiB -->", flush=True)
            shutil.rmtree(full_state, ignore_errors=True)
            shutil.rmtree(state, ignore_errors=True)
    if not args.workdir:
        shutil.rmtree(root, ignore_errors=True)


def _result(kind: str, stats: dict) -> str:
    keys = {
        "blocklist": ("sampled_images", "blocklist_size", "images_checked", "images_dropped"),
        "docs": ("band_rows", "near_duplicate_pairs", "url_duplicated_keys"),
        "exact": ("index_rows", "images_over_limit"),
    }[kind]
    return ", ".join(f"{k} {stats[k]:,}" for k in keys if k in stats)


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
        m.update_batch([" ".join(w[i : i + 5]).encode() for i in range(max(1, len(w) - 4))])
    theirs = time.perf_counter() - started
    print(
        f"| implementation | {docs} docs, s | docs/s |\n|---|---:|---:|\n| numpy (mmc4_assets.dedup.minhash) | "
        f"{ours:.2f} | {docs / ours:,.0f} |\n| datasketch MinHash.update_batch | {theirs:.2f} | {docs / theirs:,.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", default="100,1000,5000")
    parser.add_argument("--batch", type=int, default=100, help="new shards one batch update absorbs")
    parser.add_argument("--keys-per-shard", type=int, default=20000)
    parser.add_argument("--docs-per-shard", type=int, default=2000)
    parser.add_argument("--engine", action="store_true", help="run full recomputes on a Dask LocalCluster")
    parser.add_argument("--skip-exact", action="store_true", help="leave out the exact-count option's rows")
    parser.add_argument(
        "--only",
        default=None,
        choices=("blocklist", "docs", "exact"),
        help="measure one corpus asset only (e.g. the document index: --only docs)",
    )
    parser.add_argument("--workdir", default=None, help="keep (and reuse) the synthetic data here")
    parser.add_argument("--minhash", action="store_true", help="compare MinHash implementations instead")
    parser.add_argument("--minhash-docs", type=int, default=2000)
    parser.add_argument("--_step", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_state", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._step:
        kind, step, n = args._step.split(":")
        print(json.dumps(run_step(Path(args.workdir), Path(args._state), kind, step, int(n), args.batch, args.engine)))
    elif args.minhash:
        minhash_compare(args.minhash_docs)
    else:
        scaling(args)


if __name__ == "__main__":
    main()
