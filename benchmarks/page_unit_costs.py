"""Unit costs of page recovery, for the cost model in docs/scale.md (one process, CPU seconds).

* ``page_records``: CPU-s per uncompressed GB of WARC (HTML pages) and of WAT (JSON envelopes),
  and per page record;
* the join: CPU-s per C4 document and per page record (LocalCluster, 2 workers, p2p);
* ``raw_c4`` from its page table: CPU-s per document and per candidate image.

    flock /tmp/bench.lock .venv/bin/python benchmarks/page_unit_costs.py
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from page_join_scaling import WORDS, build, page_url


def cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def wat_archive(path: Path, pages: int) -> int:
    """A WAT of ``pages`` metadata envelopes (CC's shape, ~40 links of which 5 images); uncompressed bytes."""
    from warcio.warcwriter import WARCWriter

    rng, raw = random.Random(1), 0
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        for i in range(pages):
            links = [{"path": "A@/href", "url": f"/p/{rng.choice(WORDS)}/{j}"} for j in range(35)]
            links += [{"path": "IMG@/src", "url": f"/img/{i}-{j}.jpg", "alt": "pic"} for j in range(5)]
            env = {
                "Envelope": {
                    "WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Target-URI": page_url(0, i)},
                    "Payload-Metadata": {
                        "HTTP-Response-Metadata": {
                            "Response-Message": {"Status": "200"},
                            "HTML-Metadata": {"Head": {"Title": "x" * 40}, "Links": links},
                        }
                    },
                }
            }
            body = json.dumps(env).encode()
            raw += len(body)
            writer.write_record(
                writer.create_warc_record(
                    page_url(0, i), "metadata", payload=io.BytesIO(body), warc_content_type="application/json"
                )
            )
    return raw


def main() -> None:
    from mmc4_assets.engine import EngineSettings, dask_client
    from mmc4_assets.pages.join import Location, join_shard_pages
    from mmc4_assets.pages.page_table import (
        SHARD_PAGES_TABLE,
        pages_from_rows,
        write_page_records,
    )
    from mmc4_assets.pages.raw_docs import document_rows, iter_c4_lines
    from mmc4_assets.stats import StepStats
    from mmc4_assets.storage import ShardStore
    from mmc4_assets.text.url_filter import UrlFilter

    print(f"load average before: {os.getloadavg()[0]:.2f}")
    root = Path(tempfile.mkdtemp(prefix="pj-units-"))
    n_arch, n_shards, pages = 8, 8, 1000
    build(root, n_arch, n_shards, pages, 10)
    store = ShardStore(root / "store")
    raw_bytes = sum(len(gzip.decompress(p.read_bytes())) for p in (root / "archives").iterdir())
    c0 = cpu()
    for p in sorted((root / "archives").iterdir()):
        with open(p, "rb") as fh:
            write_page_records(store, p.name.split(".")[0], fh, str(p))
    warc_cpu = cpu() - c0
    wat_raw = wat_archive(root / "x.wat.gz", 4000)
    c0 = cpu()
    with open(root / "x.wat.gz", "rb") as fh:
        write_page_records(ShardStore(root / "wat"), "x", fh, "x.wat.gz")
    wat_cpu = cpu() - c0

    shard_files = {p.name.split(".json")[0]: Location(str(p)) for p in sorted((root / "shards").iterdir())}
    tables = [Location(str(p)) for p in sorted((root / "store" / "tables" / "page_records").iterdir())]
    with dask_client(EngineSettings(n_workers=2)) as client:
        join_shard_pages(client, dict(list(shard_files.items())[:1]), tables[:1], Location(str(root / "warm")))
        c0, w0 = cpu(), time.perf_counter()
        workers_before = sum(client.run(lambda: sum(__import__("resource").getrusage(0)[:2])).values())
        report = join_shard_pages(client, shard_files, tables, Location(str(root / "store")))
        workers = sum(client.run(lambda: sum(__import__("resource").getrusage(0)[:2])).values()) - workers_before
        join_cpu, join_wall = cpu() - c0 + workers, time.perf_counter() - w0
    docs = n_shards * pages
    c0, images = cpu(), 0
    for shard, loc in shard_files.items():
        found = pages_from_rows(store.read_table(SHARD_PAGES_TABLE, shard).iter_rows(named=True))
        with open(loc.uri, "rb") as fh:
            for row in document_rows(
                iter_c4_lines(fh), found, shard, UrlFilter(), StepStats(), StepStats(), lambda q: None
            ):
                images += len(row["image_urls"])
    raw_cpu = cpu() - c0
    print(
        f"page_records WARC: {warc_cpu:.2f} CPU-s for {raw_bytes / 1e9:.3f} GB uncompressed "
        f"({n_arch * pages} pages): {warc_cpu / (raw_bytes / 1e9):.0f} CPU-s/GB, "
        f"{1e3 * warc_cpu / (n_arch * pages):.2f} ms/page"
    )
    print(
        f"page_records WAT:  {wat_cpu:.2f} CPU-s for {wat_raw / 1e9:.3f} GB uncompressed (4000 records): "
        f"{wat_cpu / (wat_raw / 1e9):.0f} CPU-s/GB, {1e3 * wat_cpu / 4000:.2f} ms/record"
    )
    print(
        f"join: {join_cpu:.2f} CPU-s ({join_wall:.1f} s wall) for {docs} documents x {n_arch * pages} page records "
        f"-> {report.pages} pages: {1e3 * join_cpu / (docs + n_arch * pages):.3f} ms per (document + record)"
    )
    print(
        f"raw_c4 from page table: {raw_cpu:.2f} CPU-s for {docs} documents, {images} images: "
        f"{1e3 * raw_cpu / docs:.3f} ms/document"
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
