"""Wall time and peak memory of one shard through every asset, at 1x, 10x and 30x the bundled sample.

    .venv/bin/python benchmarks/shard_scaling.py                  # sizes 1 10 30
    .venv/bin/python benchmarks/shard_scaling.py --sizes 1 3      # quick look

A shard of K x the sample is K copies of the sample's 40 C4 lines: copy k's page URLs get
``?copy=k``, its pages (WARC responses and WAT records, rewritten with warcio) name the image
host ``c{k}.img.mmc4-sample.test`` (absolute, protocol-relative and <base>-relative URLs
alike), which the fetcher maps to ``c{k}/`` of the image server's directory, where the
sample's images are re-encoded with one pixel changed, so every copy's
images are new files (new sha256, new CLIP inputs) with the same sizes and perceptual
hashes (the in-document duplicate design of the sample holds in every copy).

Each size runs in a fresh subprocess (``--run K``): the whole pipeline as the end-to-end
test runs it (``dg.materialize`` of every asset and check of the code location, sample
resources, the tiny random CLIP), images fetched from a loopback server started by the
subprocess. Printed per size: wall time of the materialization, peak RSS of the process
(``ru_maxrss``, which includes the ~1 GB of imported libraries), per-step seconds.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, peak_rss_mb, print_json  # noqa: E402

SHARD_PREFIX = "c4-scale"
IMAGE_HOST = "img.mmc4-sample.test"


def _host(k: int) -> str:
    return f"c{k}.{IMAGE_HOST}"


def _with_copy(url: str, k: int) -> str:
    """Copy k of a page URL (pages on the image host move to copy k's image host too)."""
    url = url.replace(IMAGE_HOST, _host(k))
    return f"{url}{'&' if '?' in url else '?'}copy={k}"


def build_source(out: Path, copies: int) -> tuple[Path, list[str], Path]:
    """(shards_root, page archives, images dir) for a shard of ``copies`` x the sample."""
    from PIL import Image
    from warcio.archiveiterator import ArchiveIterator
    from warcio.warcwriter import WARCWriter

    from mmc4_assets.sample.server import sample_images_dir, sample_page_archives, sample_shard_path

    shard_key = f"{SHARD_PREFIX}.{copies:05d}-of-99999"
    done = out / "done"
    shards_root, pages, images = out / "c4", out / "pages", out / "images"
    archives = [pages / "pages.warc.gz", pages / "pages.wat.gz"]
    if done.exists():
        return shards_root, [str(p) for p in archives], images
    for d in (shards_root, pages, images):
        d.mkdir(parents=True, exist_ok=True)

    lines = gzip.decompress(sample_shard_path().read_bytes()).decode().splitlines()
    with gzip.open(shards_root / f"{shard_key}.json.gz", "wt") as fh:
        for k in range(copies):
            for line in lines:
                try:
                    doc = json.loads(line)
                    if isinstance(doc, dict) and isinstance(doc.get("url"), str):
                        doc["url"] = _with_copy(doc["url"], k)
                        line = json.dumps(doc)
                except ValueError:
                    pass  # broken lines stay broken, once per copy
                fh.write(line + "\n")

    warc_in, wat_in = sample_page_archives()
    with open(archives[0], "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        for k in range(copies):
            with open(warc_in, "rb") as src:
                for rec in ArchiveIterator(src, arc2warc=True):
                    if rec.rec_type != "response":
                        continue
                    uri = _with_copy(rec.rec_headers.get_header("WARC-Target-URI"), k)
                    body = rec.content_stream().read().replace(f"//{IMAGE_HOST}".encode(), f"//{_host(k)}".encode())
                    http = rec.http_headers
                    http.replace_header("Content-Length", str(len(body)))
                    writer.write_record(
                        writer.create_warc_record(
                            uri,
                            "response",
                            payload=io.BytesIO(body),
                            http_headers=http,
                            warc_headers_dict={"WARC-Date": rec.rec_headers.get_header("WARC-Date")},
                        )
                    )
    with open(archives[1], "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        for k in range(copies):
            with open(wat_in, "rb") as src:
                for rec in ArchiveIterator(src, arc2warc=True):
                    if rec.rec_type != "metadata":
                        continue
                    payload = json.loads(rec.content_stream().read())
                    header = payload["Envelope"]["WARC-Header-Metadata"]
                    page = header["WARC-Target-URI"]
                    header["WARC-Target-URI"] = _with_copy(page, k)
                    text = json.dumps(payload).replace(f"//{IMAGE_HOST}", f"//{_host(k)}")
                    writer.write_record(
                        writer.create_warc_record(
                            _with_copy(page, k),
                            "metadata",
                            payload=io.BytesIO(text.encode()),
                            warc_content_type="application/json",
                        )
                    )

    sources = [p for p in sample_images_dir().rglob("*") if p.is_file()]
    for k in range(copies):
        for src in sources:
            target = images / f"c{k}" / src.relative_to(sample_images_dir())
            target.parent.mkdir(parents=True, exist_ok=True)
            data = src.read_bytes()
            try:
                img = Image.open(io.BytesIO(data))
                fmt = img.format
                img.load()
                if fmt in ("JPEG", "PNG") and img.mode in ("RGB", "RGBA", "L"):
                    # one pixel per copy: a new file and CLIP input, the same picture and pHash
                    px = img.getpixel((0, 0))
                    bump = (k * 37) % 256
                    img.putpixel(
                        (0, 0), tuple((c + bump) % 256 for c in px) if isinstance(px, tuple) else (px + bump) % 256
                    )
                    buf = io.BytesIO()
                    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
                    data = buf.getvalue()
            except Exception:
                pass  # the sample's deliberately broken files are served as they are
            target.write_bytes(data)
    done.write_text(shard_key)
    return shards_root, [str(p) for p in archives], images


def run_one(copies: int, workdir: Path) -> dict:
    """Inside the subprocess: build (or reuse) the source, materialize everything, measure."""
    import dagster as dg

    from mmc4_assets.definitions import defs
    from mmc4_assets.defs.partitions import shards
    from mmc4_assets.defs.resources import ImageFetcher, sample_resources
    from mmc4_assets.sample.server import SampleImageServer

    source = workdir / f"source-{copies}x"
    shards_root, archives, images = build_source(source, copies)
    shard = (source / "done").read_text()
    storage = Path(tempfile.mkdtemp(prefix=f"scale-{copies}x-", dir=workdir))
    with SampleImageServer(images) as server:
        resources = sample_resources(str(storage), shards_root=str(shards_root), page_archives=archives)
        resources["fetcher"] = ImageFetcher(
            allow_private=True,
            concurrency=16,
            total_timeout=10.0,
            retries=1,
            url_rewrites={f"https://{_host(k)}/": f"{server.base_url}c{k}/" for k in range(copies)},
        )
        d = defs()
        instance = dg.DagsterInstance.ephemeral()
        instance.add_dynamic_partitions(shards.name, [shard])
        rss_before = peak_rss_mb()
        started = time.perf_counter()
        result = dg.materialize(
            [*d.assets, *d.asset_checks],
            partition_key=shard,
            instance=instance,
            # the page stages (archive partitions, the join) are not in this run:
            # raw_c4 scans the sample's two archives itself
            selection=dg.AssetSelection.all() - dg.AssetSelection.groups("pages"),
            resources=resources,
            raise_on_error=False,
        )
        wall = time.perf_counter() - started
    steps: dict[str, float] = {}
    starts: dict[str, float] = {}
    for event in result.all_events:
        if event.event_type_value == "STEP_START":
            starts[event.step_key] = event.timestamp if hasattr(event, "timestamp") else time.time()
    for record in instance.all_logs(result.run_id):
        ev = record.dagster_event
        if ev is None:
            continue
        if ev.event_type_value == "STEP_START":
            starts[ev.step_key] = record.timestamp
        elif ev.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE") and ev.step_key in starts:
            steps[ev.step_key] = round(record.timestamp - starts[ev.step_key], 2)
    md = {
        m.asset_key.to_user_string(): m.step_materialization_data.materialization.metadata
        for m in result.get_asset_materialization_events()
    }
    count = lambda asset, key: md.get(asset, {}).get(key).value if key in md.get(asset, {}) else None  # noqa: E731
    return {
        "copies": copies,
        "success": result.success,
        "wall_seconds": round(wall, 1),
        "peak_rss_mb": round(peak_rss_mb()),
        "rss_before_run_mb": round(rss_before),
        "lines": count("raw_c4", "num_lines"),
        "docs": count("raw_c4", "num_docs"),
        "candidates": count("fetched_images", "num_candidates"),
        "images_ok": count("fetched_images", "num_ok"),
        "clip_docs": count("clip_scores", "num_docs"),
        "assigned_docs": count("assignments", "num_docs"),
        "failed_steps": [k for k, v in steps.items() if False]
        or [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"],
        "step_seconds": steps,
        "load_average": load_average(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 30])
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "mmc4-shard-scaling"))
    ap.add_argument("--run", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.run:
        print_json("RESULT", run_one(args.run, workdir))
        return
    rows = []
    for size in args.sizes:
        proc = subprocess.run(
            [sys.executable, __file__, "--run", str(size), "--workdir", str(workdir)], capture_output=True, text=True
        )
        found = re.findall(r"^RESULT (.*)$", proc.stdout, re.M)
        if proc.returncode or not found:
            print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
            raise SystemExit(f"size {size}x failed (exit {proc.returncode})")
        row = json.loads(found[-1])
        rows.append(row)
        print_json("size", row)
    print("\n| shard | lines | docs | images ok | wall s | s per 1k lines | peak RSS MB | load avg |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['copies']}x sample | {r['lines']} | {r['docs']} | {r['images_ok']} | {r['wall_seconds']} | "
            f"{1000 * r['wall_seconds'] / max(r['lines'] or 1, 1):.1f} | {r['peak_rss_mb']} | {r['load_average']} |"
        )


if __name__ == "__main__":
    main()
