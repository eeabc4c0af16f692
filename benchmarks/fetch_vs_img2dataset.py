"""Images per second per core and peak memory: our fetcher versus img2dataset.

    .venv/bin/python benchmarks/fetch_throughput.py --n 2000 --i2d /tmp/i2d/bin/img2dataset

What it does:

1. generates N photo-like JPEGs (300-2000 px, aspect 0.5-2; benchmarks/fetch_corpus.py)
   once into ``--workdir``;
2. serves them from a separate process on 127.0.0.1 (benchmarks/fetch_server.py, aiohttp,
   from memory) so serving never shares the measured tool's GIL -- it does share the
   machine's cores, so wall-clock numbers are lower bounds;
3. runs each tool in a fresh child process on the same URL list and reports wall time,
   CPU seconds (user + sys of the child and everything it spawned), images per CPU-second
   (= per core) and the peak RSS summed over the child's process tree.

Our side is the real shard step (``fetch_documents``: fetch, sniff, validate, resize to
800, pHash, content-addressed store, fetch log, parquet table). img2dataset runs with
comparable settings: same concurrency in threads, longer side resized to 800 only if
bigger (``keep_ratio_largest``), JPEG quality 90, min side 150, max aspect 2, sha256, no
retries, no EXIF extraction. It must live in its own virtualenv (never in .venv):
``python3 -m venv /tmp/i2d && /tmp/i2d/bin/pip install img2dataset``.

Both tools have per-host politeness switched off here (ours: ``per_host_rps=0`` and
``per_host=concurrency``; img2dataset has none): every URL is on one host, 127.0.0.1.
This is a benchmark, not a test: run it by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fetch_corpus import build_corpus  # noqa: E402


# --------------------------------------------------------------------------- measuring


def _tree_rss(root_pid: int) -> int:
    """Resident bytes of a process and all its descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        rss[int(entry)] = int(fields[21]) * page
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(rss.get(pid, 0) for pid in tree)


def measure(cmd: list[str], log_path: Path, env: dict | None = None) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.05)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"rc": proc.returncode, "wall": wall, "cpu": cpu, "peak_rss_mib": peak / 2**20}


# --------------------------------------------------------------------------- our fetcher (child)


def run_ours(urls_file: Path, out: Path, concurrency: int, workers: int, variant: str) -> None:
    """Child process: the shard step over the URL list, 5 images per document."""
    from mmc4_assets.fetch import pipeline
    from mmc4_assets.fetch.http import FetchSettings
    from mmc4_assets.fetch.images import ImageLimits
    from mmc4_assets.fetch.shard import FETCHED_SCHEMA, ShardOptions, fetch_documents
    from mmc4_assets.stats import StepStats
    from mmc4_assets.storage import ShardStore

    if "uvloop" in variant:
        import uvloop

        pipeline._new_loop = uvloop.new_event_loop
    if "legacy-decode" in variant:
        pipeline.process_image = _legacy_process_image
    urls = urls_file.read_text().split()
    docs = [{"doc_id": f"doc:{i // 5}", "image_urls": urls[i:i + 5]} for i in range(0, len(urls), 5)]
    settings = FetchSettings(allow_private=True, concurrency=concurrency, per_host=concurrency,
                             per_host_rps=0, retries=0, total_timeout=60, read_timeout=10)
    store, stats = ShardStore(out), StepStats()
    threads: dict[str, float] = {}
    with store.table_writer("fetched_images", "bench", FETCHED_SCHEMA) as table:
        for row in fetch_documents(docs, store=store, shard="bench", settings=settings,
                                   limits=ImageLimits(), stats=stats,
                                   options=ShardOptions(workers=workers, refetch="all", progress_every=0.5),
                                   on_progress=lambda p: threads.update(_thread_cpu())):
            table.append(row)
    print("CPU seconds by thread:", {k: round(v, 1) for k, v in sorted(threads.items())})
    print(json.dumps({"ok": stats.kept, "dropped": dict(stats.dropped)}))


def _thread_cpu() -> dict[str, float]:
    """CPU seconds so far of each live thread, by a short name (Linux /proc)."""
    import re
    import threading

    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for thread in threading.enumerate():
        try:
            with open(f"/proc/self/task/{thread.native_id}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = re.sub(r"_\d+$", "", thread.name) if "decode" in thread.name else thread.name
        name = f"{name}[{thread.name.rsplit('_', 1)[-1]}]" if "decode" in thread.name else name
        out[name] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _legacy_process_image(body, limits):
    """The decode path before this benchmark: full-size decode, Lanczos, imagehash.phash."""
    import hashlib
    import io

    import imagehash
    from PIL import Image

    from mmc4_assets.fetch.images import ProcessedImage, _to_rgb

    img = Image.open(io.BytesIO(body))
    width, height = img.size
    img.load()
    rgb = _to_rgb(img)
    rgb.thumbnail((limits.max_side, limits.max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=limits.jpeg_quality, optimize=True)
    data = buf.getvalue()
    return ProcessedImage(data, hashlib.sha256(data).hexdigest(), str(imagehash.phash(rgb)),
                          rgb.width, rgb.height, width, height, img.format or "?"), "ok"


# --------------------------------------------------------------------------- img2dataset (child)


def i2d_command(i2d: str, urls_file: Path, out: Path, n: int, concurrency: int, processes: int) -> list[str]:
    return [
        i2d, str(urls_file), "--output_folder", str(out), "--output_format", "files",
        "--input_format", "txt", "--processes_count", str(processes),
        "--thread_count", str(max(1, concurrency // processes)),
        "--number_sample_per_shard", str(-(-n // processes)), "--image_size", "800",
        "--resize_mode", "keep_ratio_largest", "--resize_only_if_bigger", "True",
        "--encode_format", "jpg", "--encode_quality", "90", "--min_image_size", "150",
        "--max_aspect_ratio", "2", "--timeout", "10", "--retries", "0", "--enable_wandb", "False",
        "--extract_exif", "False", "--compute_hash", "sha256", "--distributor", "multiprocessing",
        "--disallowed_header_directives", '["noai","noimageai"]',
    ]


def i2d_successes(out: Path) -> int:
    total = 0
    for stats in out.glob("*_stats.json"):
        total += json.loads(stats.read_text()).get("successes", 0)
    return total


# --------------------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mmc4-fetch-bench"))
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="our decode threads (the asset's default is cores + 1)")
    parser.add_argument("--variants", default="ours",
                        help="comma list of: ours, ours-uvloop, ours-legacy-decode, ours-w1, ours-w3")
    parser.add_argument("--i2d", default="/tmp/i2d/bin/img2dataset", help="img2dataset executable ('' = skip)")
    parser.add_argument("--i2d-processes", default="1,2")
    parser.add_argument("--run-ours", nargs=2, type=Path, metavar=("URLS", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="ours", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_ours:
        run_ours(*args.run_ours, args.concurrency, args.workers, args.variant)
        return

    corpus = build_corpus(args.workdir / "corpus", args.n)
    mean_kib = sum(e["bytes"] for e in corpus) / len(corpus) / 1024
    print(f"corpus: {len(corpus)} JPEGs, mean {mean_kib:.0f} KiB, in {args.workdir / 'corpus'}")
    server = subprocess.Popen([sys.executable, str(HERE / "fetch_server.py"), str(args.workdir / "corpus")],
                              stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline().split()[1])
        urls_file = args.workdir / "urls.txt"
        urls_file.write_text("".join(f"http://127.0.0.1:{port}/img/{e['name']}\n" for e in corpus))
        results = []
        for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
            workers = int(variant.split("-w")[1]) if "-w" in variant else args.workers
            out = args.workdir / f"out-{variant}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = [sys.executable, __file__, "--run-ours", str(urls_file), str(out), "--variant", variant,
                   "--concurrency", str(args.concurrency), "--workers", str(workers)]
            m = measure(cmd, args.workdir / f"{variant}.log")
            last = (args.workdir / f"{variant}.log").read_text().strip().splitlines()[-1:]
            m["ok"] = json.loads(last[0])["ok"] if m["rc"] == 0 and last else 0
            results.append((f"{variant} (1 proc, {args.concurrency} conc, {workers} decode thr)", m))
        if args.i2d:
            for processes in [int(p) for p in args.i2d_processes.split(",") if p]:
                out = args.workdir / f"out-i2d-{processes}"
                shutil.rmtree(out, ignore_errors=True)
                env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
                m = measure(i2d_command(args.i2d, urls_file, out, len(corpus), args.concurrency, processes),
                            args.workdir / f"i2d-{processes}.log", env=env)
                m["ok"] = i2d_successes(out)
                results.append((f"img2dataset ({processes} proc x {max(1, args.concurrency // processes)} thr)", m))
    finally:
        server.terminate()
        server.wait(10)

    print(f"\n{'tool':58s} {'ok':>5s} {'wall s':>7s} {'img/s':>7s} {'CPU s':>7s} {'img/CPU-s':>9s} {'peak RSS MiB':>12s}")
    for name, m in results:
        rate = m["ok"] / m["wall"] if m["wall"] else 0
        per_core = m["ok"] / m["cpu"] if m["cpu"] else 0
        flag = "" if m["rc"] == 0 else f"  (exit {m['rc']}, see {args.workdir}/*.log)"
        print(f"{name:58s} {m['ok']:5d} {m['wall']:7.1f} {rate:7.1f} {m['cpu']:7.1f} {per_core:9.1f} "
              f"{m['peak_rss_mib']:12.0f}{flag}")
    print(f"\ncores on this machine: {os.cpu_count()} (the image server runs beside the tool and is not counted)")


if __name__ == "__main__":
    main()
