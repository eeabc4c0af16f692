"""Documents per second of the assignment step on MMC4-shaped documents, on one core.

    .venv/bin/python benchmarks/assign_throughput.py               # 100k documents
    .venv/bin/python benchmarks/assign_throughput.py --docs 20000 --old-docs 5000

Documents have 1-30 images (mean ~5.7, most have one or two) and 4-200 sentences (mean
~28). Similarities are CLIP-like: 0.19 + a per-sentence topicality shared by all images of
the document (so images of a page tend to want the same sentence, as with real CLIP) +
per-cell noise; ``--independent`` draws every cell independently instead.

Thread pools of polars, pyarrow and BLAS are pinned to one thread before they load, and
every number is given per wall second and per CPU second of this process (the latter is
what "per core" means, and is what other processes on a shared machine disturb least).

Measured, each on the same documents:
* ``solver``: :func:`assign_flat` alone, the numpy core (input already a flat array);
* ``frame``: :func:`assign_frame`, the asset's per-batch work: arrow parsing of the
  clip_scores batch, the solver, the output columns rebuilt from offsets;
* ``asset_loop``: what the assignments asset body runs, from a stored clip_scores parquet
  to the stored assignments parquet (reads, zstd writes included);
* ``old_rows``: the previous per-row path (``iter_rows`` + ``assign_document`` +
  ``TableWriter.append``), on ``--old-docs`` documents, for comparison.
"""

from __future__ import annotations

import os

for _var in ("POLARS_MAX_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import pyarrow as pa  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import doc_shapes, load_average, print_json  # noqa: E402
from mmc4_assets.assign.batch import assign_flat  # noqa: E402
from mmc4_assets.assign.shard import ASSIGNMENTS_SCHEMA, assign_document, assign_frame  # noqa: E402
from mmc4_assets.clip.shard import CLIP_SCORES_SCHEMA  # noqa: E402
from mmc4_assets.stats import StepStats  # noqa: E402
from mmc4_assets.storage import ShardStore  # noqa: E402

pa.set_cpu_count(1)
pa.set_io_thread_count(1)


def similarities(rng: np.random.Generator, n: np.ndarray, m: np.ndarray, independent: bool) -> np.ndarray:
    """Flat float32 values of every document's images x sentences matrix."""
    chunks = []
    for ni, mi in zip(n.tolist(), m.tolist()):
        if independent:
            chunks.append(rng.normal(0.2, 0.05, ni * mi))
        else:
            topical = rng.normal(0.0, 0.04, mi)  # shared by the document's images
            chunks.append((0.19 + topical[None, :] + rng.normal(0.0, 0.03, (ni, mi))).ravel())
    return np.concatenate(chunks).astype(np.float32)


def clip_scores_frame(start: int, n: np.ndarray, m: np.ndarray, values: np.ndarray) -> pl.DataFrame:
    """A clip_scores batch built column-wise (as the clip_scores asset writes it)."""
    docs = n.size
    ids = [f"bench:{start + d}" for d in range(docs)]
    sent_offsets = np.r_[0, np.cumsum(m)]
    sentences = pa.array([f"Sentence number {j} of the batch." for j in range(int(sent_offsets[-1]))])
    img_offsets = np.r_[0, np.cumsum(n)]
    total = int(img_offsets[-1])
    images = pa.StructArray.from_arrays(
        [
            pa.array(np.concatenate([np.arange(k) for k in n]).astype(np.int32)),
            pa.array([f"{i:064x}.jpg" for i in range(total)]),
            pa.array([f"https://img.example/{i}.jpg" for i in range(total)]),
            pa.array([f"{i * 2654435761 % 2**64:016x}" for i in range(total)]),
        ],
        names=["image_index", "image_name", "raw_url", "phash"],
    )
    rows = pa.LargeListArray.from_arrays(pa.array(np.r_[0, np.cumsum(np.repeat(m, n))]), pa.array(values))
    table = pa.table(
        {
            "doc_id": pa.array(ids),
            "url": pa.array([f"https://site.example/{i}" for i in ids]),
            "text_list": pa.LargeListArray.from_arrays(pa.array(sent_offsets), sentences),
            "images": pa.LargeListArray.from_arrays(pa.array(img_offsets), images),
            "similarity_matrix": pa.LargeListArray.from_arrays(pa.array(img_offsets), rows),
        }
    )
    return pl.from_arrow(table).cast(CLIP_SCORES_SCHEMA)


def clock(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def report(label: str, docs: int, wall: float, cpu: float, **extra) -> None:
    print_json(
        label,
        {
            "docs": docs,
            "docs_per_second": round(docs / wall),
            "docs_per_cpu_second": round(docs / cpu),
            "seconds": round(wall, 2),
            "cpu_seconds": round(cpu, 2),
            "load_average": load_average(),
            **extra,
        },
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--old-docs", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=2000, help="documents per batch (AssignmentsConfig default)")
    ap.add_argument("--min-sim", type=float, default=0.15)
    ap.add_argument("--independent", action="store_true")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    n, m = doc_shapes(rng, args.docs)
    values = similarities(rng, n, m, args.independent)
    cells = np.r_[0, np.cumsum(n * m)]
    bounds = list(range(0, args.docs, args.batch)) + [args.docs]
    batches = [(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    print_json(
        "shapes",
        {
            "docs": args.docs,
            "mean_images": round(float(n.mean()), 2),
            "mean_sentences": round(float(m.mean()), 2),
            "single_image_docs": round(float((n == 1).mean()), 3),
            "similarity": "independent" if args.independent else "topical",
            "batch": args.batch,
        },
    )

    solved = [0]

    def run_solver():
        for a, b in batches:
            solved[0] += assign_flat(values[cells[a] : cells[b]], n[a:b], m[a:b], args.min_sim).docs_solved

    wall, cpu = clock(run_solver)
    report("solver", args.docs, wall, cpu, solver_share=round(solved[0] / args.docs, 3))

    frames = [clip_scores_frame(a, n[a:b], m[a:b], values[cells[a] : cells[b]]) for a, b in batches]
    kept = [0]

    def run_frames():
        for frame in frames:
            kept[0] += assign_frame(frame, args.min_sim).frame.height

    wall, cpu = clock(run_frames)
    report("frame", args.docs, wall, cpu, docs_kept=kept[0])

    with tempfile.TemporaryDirectory() as tmp:
        store = ShardStore(tmp)
        with store.table_writer("clip_scores", "bench", CLIP_SCORES_SCHEMA) as out:
            for frame in frames:
                out.write(frame)

        def run_asset_loop():  # the body of the assignments asset
            with store.table_writer("assignments", "bench", ASSIGNMENTS_SCHEMA) as out:
                for batch in store.iter_batches("clip_scores", "bench", batch_size=args.batch):
                    out.write(assign_frame(batch, args.min_sim).frame)

        wall, cpu = clock(run_asset_loop)
        report("asset_loop", args.docs, wall, cpu)

        old = min(args.old_docs, args.docs)

        def run_old_rows():  # the previous body: one dict per row in, one dict per row out
            images, done = StepStats(), 0
            with store.table_writer("assignments_old", "bench", ASSIGNMENTS_SCHEMA) as out:
                for batch in store.iter_batches("clip_scores", "bench", batch_size=args.batch):
                    for row in batch.head(old - done).iter_rows(named=True):
                        assigned = assign_document(row, args.min_sim, images)
                        if assigned is not None:
                            out.append(assigned)
                    done += min(batch.height, old - done)
                    if done >= old:
                        break

        if old:
            wall, cpu = clock(run_old_rows)
            report("old_rows", old, wall, cpu)


if __name__ == "__main__":
    main()
