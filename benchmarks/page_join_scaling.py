"""Page recovery cost as the crawl grows: archives read once + one Dask join, vs. every shard
scanning every archive.

A synthetic crawl of A archives (WARC, gzip per record) and S C4 shards: HTML-like pages of
~10 KB with ~5 images each, and each shard's URLs spread over all archives (document i of
shard s is a page of archive (i + s) mod A). For each (A, S) one fresh process runs the
pipeline's own code, as the assets do:

1. ``page_records``: each archive streamed once (``write_page_records``);
2. ``shard_pages``: one Dask join of all shards' URLs with all page records
   (``join_shard_pages`` on a LocalCluster of 2 worker processes, p2p shuffle);
3. ``raw_c4``'s page lookup and document rows for each shard, from its page table.

It prints total CPU-seconds (this process and every child: Dask workers, the JVM), wall
time and peak RSS of the whole process tree (sampled every 50 ms), and the per-shard
``raw_c4`` time. ``--spark`` times a PySpark (local[2]) prototype of the same join on the
same page records and shards; ``--baseline`` times the old path (each shard scans every
archive, ``build_page_index``) at small sizes.

    flock /tmp/bench.lock .venv/bin/python benchmarks/page_join_scaling.py --spark --baseline

The last line is ``cost ratio per doubling: X.XX``: total CPU-seconds at (40, 40) over (20, 20).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SIZES = [(10, 10), (20, 20), (40, 40)]
WORDS = [
    "river",
    "light",
    "garden",
    "stone",
    "coffee",
    "market",
    "bread",
    "winter",
    "harbor",
    "forest",
    "paper",
    "window",
    "music",
    "mountain",
    "street",
    "kitchen",
    "letter",
    "summer",
    "field",
    "station",
]


def page_url(archive: int, i: int) -> str:
    return f"https://site{archive % 97}.bench.test/a{archive}/post-{i}.html"


def html(archive: int, i: int, rng: random.Random, kb: int) -> bytes:
    text = " ".join(rng.choice(WORDS) for _ in range(kb * 150))
    imgs = "".join(
        f'<p>{text[j * 300 : (j + 1) * 300]}</p><img src="/img/a{archive}/{i}-{j}.jpg" alt="pic {j}">' for j in range(5)
    )
    return (
        f"<html><head><title>Post {i}</title></head><body><h1>Post {i}</h1>{imgs}"
        f'<div>{text}</div><img src="/static/logo.png"></body></html>'
    ).encode()


def build(root: Path, n_archives: int, n_shards: int, pages: int, kb: int) -> None:
    """A archives of ``pages`` pages and S shards of ``pages`` documents, URLs spread over all archives."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    (root / "archives").mkdir(parents=True)
    (root / "shards").mkdir()
    rng = random.Random(n_archives)
    for a in range(n_archives):
        with open(root / "archives" / f"crawl-{a:05d}.warc.gz", "wb") as fh:
            writer = WARCWriter(fh, gzip=True)
            for i in range(pages):
                http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
                writer.write_record(
                    writer.create_warc_record(
                        page_url(a, i),
                        "response",
                        payload=io.BytesIO(html(a, i, rng, kb)),
                        http_headers=http,
                        warc_headers_dict={"WARC-Date": "2019-04-20T10:00:00Z"},
                    )
                )
    for s in range(n_shards):
        lines = []
        for i in range(pages):
            g = s * pages + i  # page g of the crawl lives in archive g mod A: a shard spans all archives
            doc = {
                "text": f"Post {i} of shard {s}. It has two sentences about {rng.choice(WORDS)}.",
                "timestamp": "2019-04-25T12:00:00Z",
                "url": page_url(g % n_archives, g // n_archives % pages),
            }
            lines.append(json.dumps(doc))
        (root / "shards" / f"c4-bench.{s:05d}.json.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))


class TreeSampler:
    """Peak RSS of this process and all its descendants, and the CPU of every descendant ever
    seen (sampled every 50 ms: the JVM that py4j starts is never reaped by us, so rusage of
    children would miss it)."""

    def __init__(self):
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self.child_cpu: dict[int, float] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            total = 0
            for p in [self.proc, *self.proc.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                    if p.pid != self.proc.pid:
                        times = p.cpu_times()
                        self.child_cpu[p.pid] = times.user + times.system
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(0.05)

    @property
    def tree_cpu_s(self) -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        return own.ru_utime + own.ru_stime + sum(self.child_cpu.values())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_dask(root: Path) -> dict:
    """The pipeline: page_records per archive, one join, raw_c4 per shard. Runs in a child process."""
    import polars as pl

    from mmc4_assets.engine import EngineSettings, dask_client
    from mmc4_assets.pages.join import Location, join_shard_pages
    from mmc4_assets.pages.page_table import (
        PAGE_RECORDS_TABLE,
        SHARD_PAGES_TABLE,
        pages_from_rows,
        write_page_records,
    )
    from mmc4_assets.pages.raw_docs import document_rows, iter_c4_lines
    from mmc4_assets.stats import StepStats
    from mmc4_assets.storage import ShardStore
    from mmc4_assets.text.url_filter import UrlFilter

    store = ShardStore(root / "store")
    archives = sorted((root / "archives").iterdir())
    shard_files = sorted((root / "shards").iterdir())
    out: dict = {}
    with TreeSampler() as sampler:
        t0 = time.perf_counter()
        for path in archives:
            with open(path, "rb") as fh:
                write_page_records(store, path.name.split(".")[0], fh, str(path))
        t1 = time.perf_counter()
        cpu1 = sampler.tree_cpu_s
        with dask_client(EngineSettings(n_workers=2, threads_per_worker=1, memory_limit="1GiB")) as client:
            t_start = time.perf_counter()
            report = join_shard_pages(
                client,
                {p.name.split(".json")[0]: Location(str(p)) for p in shard_files},
                [
                    Location(store.uri("tables", PAGE_RECORDS_TABLE, f"{p.name.split('.')[0]}.parquet"))
                    for p in archives
                ],
                Location(store.uri()),
            )
            t_join = time.perf_counter()
        t2 = time.perf_counter()
        time.sleep(0.2)  # one more sample of the (now gone) workers' CPU
        join_cpu = sampler.tree_cpu_s - cpu1
        per_shard, per_shard_cpu = [], []
        for p in shard_files:
            shard = p.name.split(".json")[0]
            s0, c0 = time.perf_counter(), time.process_time()
            pages = pages_from_rows(store.read_table(SHARD_PAGES_TABLE, shard).iter_rows(named=True))
            docs, imgs, quarantine = StepStats(), StepStats(), []
            with (
                store.table_writer("raw_c4", shard, {"doc_id": pl.String, "image_urls": pl.List(pl.String)}) as w,
                open(p, "rb") as fh,
            ):
                for row in document_rows(iter_c4_lines(fh), pages, shard, UrlFilter(), docs, imgs, quarantine.append):
                    w.append({"doc_id": row["doc_id"], "image_urls": row["image_urls"]})
            per_shard.append(time.perf_counter() - s0)
            per_shard_cpu.append(time.process_time() - c0)
        t3 = time.perf_counter()
    out.update(
        page_records_s=t1 - t0,
        cluster_start_s=t_start - t1,
        join_s=t_join - t_start,
        raw_c4_s=t3 - t2,
        raw_c4_per_shard_ms=1000 * sum(per_shard) / len(per_shard),
        raw_c4_cpu_per_shard_ms=1000 * sum(per_shard_cpu) / len(per_shard_cpu),
        join_cpu_s=join_cpu,
        pages_matched=report.pages,
        peak_tree_rss_mb=sampler.peak / 2**20,
        tree_cpu_s=sampler.tree_cpu_s,
        archive_mb=sum(p.stat().st_size for p in archives) / 2**20,
    )
    return out


def run_spark(root: Path) -> dict:
    """The same join on PySpark local[2]: page records x shard URLs, best capture, per-shard parquet."""
    from pyspark.sql import SparkSession, Window
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf

    from mmc4_assets.pages.archives import normalize_url

    # Spark's Python workers must be this interpreter (its packages), not the first python3 on PATH
    os.environ["PYSPARK_PYTHON"] = os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    with TreeSampler() as sampler:
        t0 = time.perf_counter()
        cpu0 = sampler.tree_cpu_s
        spark = (
            SparkSession.builder.master("local[2]")
            .appName("page-join-bench")
            .config("spark.sql.shuffle.partitions", "8")
            .config("spark.ui.enabled", "false")
            .config("spark.driver.memory", "1g")
            .getOrCreate()
        )
        spark.sparkContext.setLogLevel("ERROR")
        t1 = time.perf_counter()

        @pandas_udf("string")
        def url_key(urls):
            return urls.map(normalize_url)

        pages = spark.read.parquet(str(root / "store" / "tables" / "page_records"))
        docs = (
            spark.read.json(str(root / "shards"))
            .withColumn("shard", F.regexp_extract(F.input_file_name(), r"(c4-bench\.\d+)", 1))
            .withColumn("url_key", url_key("url"))
            .withColumnRenamed("url", "c4_url")
            .withColumn("c4_time", F.unix_timestamp(F.to_timestamp("timestamp")))
            .dropDuplicates(["shard", "url_key"])
        )
        joined = docs.join(pages, "url_key")
        rank = Window.partitionBy("shard", "url_key").orderBy(
            F.when((F.col("status") == 200) & F.col("mime").contains("html"), 0).otherwise(1),
            F.abs(F.unix_timestamp("capture_time") - F.col("c4_time")),
            "archive",
            "record_offset",
        )
        best = joined.withColumn("_r", F.row_number().over(rank)).filter("_r = 1").drop("_r")
        best.repartition("shard").write.partitionBy("shard").mode("overwrite").parquet(str(root / "spark_out"))
        t2 = time.perf_counter()
        matched = spark.read.parquet(str(root / "spark_out")).count()
        spark.stop()
        time.sleep(0.5)  # one more sample of the JVM's CPU
        join_cpu = sampler.tree_cpu_s - cpu0
    return {
        "session_start_s": t1 - t0,
        "join_s": t2 - t1,
        "pages_matched": matched,
        "join_cpu_s": join_cpu,
        "peak_tree_rss_mb": sampler.peak / 2**20,
        "tree_cpu_s": sampler.tree_cpu_s,
    }


def run_baseline(root: Path) -> dict:
    """Before: every shard scans every archive for its URLs (build_page_index per shard)."""
    from mmc4_assets.pages.archives import build_page_index, normalize_url
    from mmc4_assets.pages.raw_docs import iter_c4_lines

    archives = [str(p) for p in sorted((root / "archives").iterdir())]
    per_shard = []
    with TreeSampler() as sampler:
        for p in sorted((root / "shards").iterdir()):
            s0 = time.perf_counter()
            with open(p, "rb") as fh:
                wanted = {normalize_url(line.doc["url"]) for line in iter_c4_lines(fh) if line.error is None}
            build_page_index(archives, wanted, lambda path: open(path, "rb"))  # noqa: SIM115 (opener: the callee closes)
            per_shard.append(time.perf_counter() - s0)
    return {
        "raw_c4_per_shard_ms": 1000 * sum(per_shard) / len(per_shard),
        "peak_tree_rss_mb": sampler.peak / 2**20,
        "tree_cpu_s": sampler.tree_cpu_s,
    }


def measure(mode: str, root: Path) -> dict:
    """Run one mode in a fresh process; CPU is its rusage including every reaped descendant."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", mode, str(root)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    lines = proc.stdout.read().decode().strip().splitlines()
    if os.waitstatus_to_exitcode(status) != 0 or not lines:
        raise SystemExit(f"{mode} failed on {root}")
    result = json.loads(lines[-1])
    # reaped descendants are in rusage; the sampler also saw the ones nobody reaped (the JVM)
    result.update(cpu_s=max(usage.ru_utime + usage.ru_stime, result.pop("tree_cpu_s")), wall_s=wall)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=500, help="pages per archive = documents per shard")
    parser.add_argument("--kb", type=int, default=10, help="approximate HTML size of a page")
    parser.add_argument("--spark", action="store_true", help="also time the PySpark local[2] prototype")
    parser.add_argument(
        "--baseline", action="store_true", help="also time the old per-shard archive scan at (5, 5) and (10, 10)"
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, root = args.child
        fn = {"dask": run_dask, "spark": run_spark, "baseline": run_baseline}[mode]
        print(json.dumps(fn(Path(root))))
        return

    print(
        f"load average before: {os.getloadavg()[0]:.2f}  cores: {os.cpu_count()}  "
        f"pages/archive = docs/shard = {args.pages}, ~{args.kb} KB HTML, 5 images each"
    )
    rows, baseline = [], []
    for n_archives, n_shards in [(5, 5), (10, 10)] if args.baseline else []:
        root = Path(tempfile.mkdtemp(prefix="pj-bench-"))
        try:
            build(root, n_archives, n_shards, args.pages, args.kb)
            baseline.append(((n_archives, n_shards), measure("baseline", root)))
            print(f"  before, A={n_archives} S={n_shards}: {baseline[-1][1]}", flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    for n_archives, n_shards in SIZES:
        root = Path(tempfile.mkdtemp(prefix="pj-bench-"))
        try:
            build(root, n_archives, n_shards, args.pages, args.kb)
            dask = measure("dask", root)
            spark = measure("spark", root) if args.spark else None
            rows.append(((n_archives, n_shards), dask, spark))
            print(f"  A={n_archives} S={n_shards}: dask {dask}\n    spark {spark}", flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    print("\nDask (the pipeline: page_records per archive + one shard_pages join + raw_c4 per shard)")
    print(
        f"{'A':>3} {'S':>3} {'archive MB':>10} {'CPU s':>7} {'wall s':>7} {'peak RSS MB':>11} "
        f"{'read s':>7} {'join CPU s':>10} {'join wall s':>11} {'raw_c4/shard CPU ms':>19} {'wall ms':>7} {'pages':>6}"
    )
    for (a, s), d, _ in rows:
        print(
            f"{a:>3} {s:>3} {d['archive_mb']:>10.1f} {d['cpu_s']:>7.1f} {d['wall_s']:>7.1f} "
            f"{d['peak_tree_rss_mb']:>11.0f} {d['page_records_s']:>7.2f} {d['join_cpu_s']:>10.1f} "
            f"{d['cluster_start_s'] + d['join_s']:>11.2f} {d['raw_c4_cpu_per_shard_ms']:>19.1f} "
            f"{d['raw_c4_per_shard_ms']:>7.1f} {d['pages_matched']:>6}"
        )
    if args.spark:
        print("\nSpark prototype (local[2]; the same join of the same page records and shards)")
        print(
            f"{'A':>3} {'S':>3} {'join CPU s':>10} {'join wall s':>11} {'peak RSS MB':>11} {'of it start s':>13} "
            f"{'pages':>6} | Dask: {'join CPU s':>10} {'join wall s':>11} {'peak RSS MB':>11}"
        )
        for (a, s), d, sp in rows:
            print(
                f"{a:>3} {s:>3} {sp['join_cpu_s']:>10.1f} {sp['session_start_s'] + sp['join_s']:>11.2f} "
                f"{sp['peak_tree_rss_mb']:>11.0f} {sp['session_start_s']:>13.2f} {sp['pages_matched']:>6} | "
                f"{d['join_cpu_s']:>16.1f} {d['cluster_start_s'] + d['join_s']:>11.2f} {d['peak_tree_rss_mb']:>11.0f}"
            )
    if baseline:
        print("\nBefore (every shard scans every archive)")
        print(f"{'A':>3} {'S':>3} {'CPU s':>7} {'wall s':>7} {'peak RSS MB':>11} {'raw_c4 ms/shard':>15}")
        for (a, s), b in baseline:
            print(
                f"{a:>3} {s:>3} {b['cpu_s']:>7.1f} {b['wall_s']:>7.1f} {b['peak_tree_rss_mb']:>11.0f} "
                f"{b['raw_c4_per_shard_ms']:>15.1f}"
            )
        print(f"before: cost ratio per doubling: {baseline[1][1]['cpu_s'] / baseline[0][1]['cpu_s']:.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    by_size = {size: d for size, d, _ in rows}
    print(f"cost ratio per doubling: {by_size[(40, 40)]['cpu_s'] / by_size[(20, 20)]['cpu_s']:.2f}")


if __name__ == "__main__":
    main()
