"""Images per second, ours against img2dataset, side by side on the same URL list.

    .venv/bin/python benchmarks/fetch_vs_img2dataset.py --n 5000 --i2d /tmp/i2d/bin/img2dataset

What it does:

1. generates N pictures once into ``--workdir`` (benchmarks/fetch_corpus.py): photo-like
   JPEGs 300-2000 px and every tenth a PNG 300-1400 px, aspect 0.5-2, so about 60 % need a
   resize to 800 and a few are dropped by neither tool's rules (all are >= 150 px);
2. serves them from a separate process on 127.0.0.1 (benchmarks/fetch_server.py, aiohttp,
   from memory) -- it shares the machine's cores with the tool being measured, equally
   for both tools;
3. for each process count P in ``--processes``, runs our fetcher and img2dataset one after
   the other with the same P processes and the same total concurrency (``--concurrency``:
   our in-flight downloads, img2dataset's threads, split over the processes), and prints
   wall time, images stored per second, CPU seconds (user + sys of the whole process tree),
   images per CPU-second, peak RSS summed over the tree, and our img/s over theirs.

Our side is the real shard step, ``fetch_documents`` (download, sniff, validate, resize to
800, pHash, content-addressed store, fetch log, parquet table), 5 images per document; with
P processes the URL list is cut into P shards run as P processes, as P concurrent Dagster
runs would. img2dataset gets the same rules: longer side resized to 800 only if bigger
(``keep_ratio_largest``), JPEG quality 90, min side 150, max aspect 2, sha256, no retries,
no EXIF, opt-out headers honoured; ``--processes_count P --thread_count concurrency/P``.
It must live in its own virtualenv (never in .venv):
``python3 -m venv /tmp/i2d && /tmp/i2d/bin/pip install img2dataset``.

Per-host politeness is switched off for ours (``per_host_rps=0``, ``per_host=concurrency``;
img2dataset has none): every URL is on one host, 127.0.0.1. A benchmark, not a test.
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


def _tree_rss(root_pids: list[int]) -> int:
    """Resident bytes of some processes and all their descendants (Linux /proc)."""
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
    tree, frontier = set(root_pids), list(root_pids)
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(rss.get(pid, 0) for pid in tree)


def measure(cmds: list[list[str]], log_dir: Path, label: str, env: dict | None = None) -> dict:
    """Run the commands at once; wall until the last exits, CPU of all, peak of the summed RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    logs = [open(log_dir / f"{label}.{i}.log", "w") for i in range(len(cmds))]  # noqa: SIM115 (closed in finally)
    try:
        procs = [subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env) for cmd, log in zip(cmds, logs)]
        peak = 0
        while any(p.poll() is None for p in procs):
            peak = max(peak, _tree_rss([p.pid for p in procs if p.poll() is None]))
            time.sleep(0.05)
    finally:
        for log in logs:
            log.close()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    rc = max((p.returncode for p in procs), key=abs)
    return {"rc": rc, "wall": wall, "cpu": cpu, "peak_rss_mib": peak / 2**20}


# --------------------------------------------------------------------------- our fetcher (child)


def run_ours(urls_file: Path, out: Path, shard: str, concurrency: int, workers: int) -> None:
    """Child process: the shard step over the URL list, 5 images per document."""
    from mmc4_assets.fetch.http import FetchSettings
    from mmc4_assets.fetch.images import ImageLimits
    from mmc4_assets.fetch.shard import FETCHED_SCHEMA, ShardOptions, fetch_documents
    from mmc4_assets.stats import StepStats
    from mmc4_assets.storage import ShardStore

    urls = urls_file.read_text().split()
    docs = [{"doc_id": f"doc:{i // 5}", "image_urls": urls[i : i + 5]} for i in range(0, len(urls), 5)]
    settings = FetchSettings(
        allow_private=True,
        concurrency=concurrency,
        per_host=concurrency,
        per_host_rps=0,
        retries=0,
        total_timeout=60,
        read_timeout=10,
    )
    store, stats = ShardStore(out), StepStats()
    threads: dict[str, float] = {}
    started = time.process_time()
    with store.table_writer("fetched_images", shard, FETCHED_SCHEMA) as table:
        for row in fetch_documents(
            docs,
            store=store,
            shard=shard,
            settings=settings,
            limits=ImageLimits(),
            stats=stats,
            options=ShardOptions(workers=workers, refetch="all", progress_every=0.5),
            on_progress=lambda _: threads.update(_thread_cpu()),
        ):
            table.append(row)
    # where the CPU went: per thread, as last seen while the pipeline's threads were alive
    print(
        "CPU ms per URL by thread:",
        {k: round(1000 * v / len(urls), 2) for k, v in sorted(threads.items())},
        f"process total {1000 * (time.process_time() - started) / len(urls):.2f} (after imports)",
    )
    print(json.dumps({"ok": stats.kept, "dropped": dict(stats.dropped)}))


def _thread_cpu() -> dict[str, float]:
    """CPU seconds so far of each live thread, decode workers summed (Linux /proc)."""
    import threading

    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for thread in threading.enumerate():
        try:
            with open(f"/proc/self/task/{thread.native_id}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = thread.name.rsplit("_", 1)[0] if thread.name.startswith("mmc4-") else thread.name
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def ours_commands(urls: list[str], out: Path, processes: int, concurrency: int, workers: int) -> list[list[str]]:
    cmds = []
    for p in range(processes):
        part = out / f"urls.{p}.txt"
        part.write_text("".join(f"{u}\n" for u in urls[p::processes]))
        cmds.append(
            [
                sys.executable,
                __file__,
                "--run-ours",
                str(part),
                str(out),
                f"bench-{p}",
                "--concurrency",
                str(max(1, concurrency // processes)),
                "--workers",
                str(workers),
            ]
        )
    return cmds


def ours_successes(log_dir: Path, label: str, processes: int) -> int:
    total = 0
    for p in range(processes):
        lines = (log_dir / f"{label}.{p}.log").read_text().strip().splitlines()
        total += json.loads(lines[-1])["ok"] if lines and lines[-1].startswith("{") else 0
    return total


# --------------------------------------------------------------------------- img2dataset (child)


def i2d_command(i2d: str, urls_file: Path, out: Path, n: int, concurrency: int, processes: int) -> list[str]:
    return [
        i2d,
        str(urls_file),
        "--output_folder",
        str(out),
        "--output_format",
        "files",
        "--input_format",
        "txt",
        "--processes_count",
        str(processes),
        "--thread_count",
        str(max(1, concurrency // processes)),
        "--number_sample_per_shard",
        str(-(-n // processes)),
        "--image_size",
        "800",
        "--resize_mode",
        "keep_ratio_largest",
        "--resize_only_if_bigger",
        "True",
        "--encode_format",
        "jpg",
        "--encode_quality",
        "90",
        "--min_image_size",
        "150",
        "--max_aspect_ratio",
        "2",
        "--timeout",
        "10",
        "--retries",
        "0",
        "--enable_wandb",
        "False",
        "--extract_exif",
        "False",
        "--compute_hash",
        "sha256",
        "--distributor",
        "multiprocessing",
        "--disallowed_header_directives",
        '["noai","noimageai"]',
    ]


def i2d_successes(out: Path) -> int:
    return sum(json.loads(p.read_text()).get("successes", 0) for p in out.glob("*_stats.json"))


# --------------------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mmc4-fetch-bench"))
    parser.add_argument("--concurrency", type=int, default=64, help="total in-flight downloads / threads")
    parser.add_argument("--processes", default="1,2", help="comma list of process counts, each run by both tools")
    parser.add_argument(
        "--workers", type=int, default=0, help="our decode threads per process (0: the asset's default, cores + 1)"
    )
    parser.add_argument("--i2d", default="/tmp/i2d/bin/img2dataset", help="img2dataset executable ('' = skip)")
    parser.add_argument("--run-ours", nargs=3, metavar=("URLS", "OUT", "SHARD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_ours:
        urls, out, shard = args.run_ours
        run_ours(Path(urls), Path(out), shard, args.concurrency, args.workers)
        return

    load_before = os.getloadavg()[0]
    corpus = build_corpus(args.workdir / "corpus", args.n)
    pngs = sum(e["name"].endswith(".png") for e in corpus)
    resized = sum(max(e["width"], e["height"]) > 800 for e in corpus)
    mean_kib = sum(e["bytes"] for e in corpus) / len(corpus) / 1024
    print(
        f"corpus: {len(corpus)} pictures ({len(corpus) - pngs} JPEG, {pngs} PNG), {resized} need a resize, "
        f"mean {mean_kib:.0f} KiB, in {args.workdir / 'corpus'}",
        flush=True,
    )
    server = subprocess.Popen(
        [sys.executable, str(HERE / "fetch_server.py"), str(args.workdir / "corpus")],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        text=True,
    )
    rows: list[tuple[str, dict]] = []
    ratios: list[tuple[int, float]] = []
    try:
        port = int(server.stdout.readline().split()[1])
        urls = [f"http://127.0.0.1:{port}/img/{e['name']}" for e in corpus]
        urls_file = args.workdir / "urls.txt"
        urls_file.write_text("".join(f"{u}\n" for u in urls))
        for processes in [int(p) for p in args.processes.split(",") if p.strip()]:
            per = max(1, args.concurrency // processes)
            out = args.workdir / f"out-ours-{processes}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            label = f"ours-{processes}"
            ours = measure(ours_commands(urls, out, processes, args.concurrency, args.workers), args.workdir, label)
            ours["ok"] = ours_successes(args.workdir, label, processes)
            rows.append((f"ours        {processes} proc x {per} in flight", ours))
            print(f"ours done: {ours}", flush=True)
            if not args.i2d:
                continue
            out = args.workdir / f"out-i2d-{processes}"
            shutil.rmtree(out, ignore_errors=True)
            env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
            theirs = measure(
                [i2d_command(args.i2d, urls_file, out, len(corpus), args.concurrency, processes)],
                args.workdir,
                f"i2d-{processes}",
                env=env,
            )
            theirs["ok"] = i2d_successes(out)
            rows.append((f"img2dataset {processes} proc x {per} threads", theirs))
            print(f"img2dataset done: {theirs}", flush=True)
            if theirs["ok"] and ours["ok"]:
                ratios.append((processes, (ours["ok"] / ours["wall"]) / (theirs["ok"] / theirs["wall"])))
    finally:
        server.terminate()
        server.wait(10)

    print(
        f"\n{'tool':40s} {'ok':>5s} {'wall s':>7s} {'img/s':>7s} {'CPU s':>7s} {'img/CPU-s':>9s} {'peak RSS MiB':>12s}"
    )
    for name, m in rows:
        rate = m["ok"] / m["wall"] if m["wall"] else 0
        per_core = m["ok"] / m["cpu"] if m["cpu"] else 0
        flag = "" if m["rc"] == 0 else f"  (exit {m['rc']}, see {args.workdir}/*.log)"
        print(
            f"{name:40s} {m['ok']:5d} {m['wall']:7.1f} {rate:7.1f} {m['cpu']:7.1f} {per_core:9.1f} "
            f"{m['peak_rss_mib']:12.0f}{flag}"
        )
    for processes, ratio in ratios:
        print(f"ratio ours / img2dataset, {processes} proc: {ratio:.2f}x img/s (target >= 2x)")
    print(
        f"cores: {os.cpu_count()}; 1-min load average before/after: {load_before:.2f}/{os.getloadavg()[0]:.2f} "
        "(the image server runs beside both tools and is not counted in CPU or RSS)"
    )


if __name__ == "__main__":
    main()
