"""Shared pieces of the CLIP, assignment and shard-scaling benchmarks.

* the machine: load average, peak RSS, measured matmul FLOP/s;
* MMC4-like document shapes: 1-30 images (mean ~5.7, most documents have one or two)
  and 4-200 sentences (mean ~28) per document;
* synthetic shards for clip_scores: photo-like JPEGs as the fetch step stores them
  (longer side <= 800, quality 90) and English-looking sentences with C4-like lengths,
  ~10 % of them boilerplate that recurs across documents.

Nothing here means anything about quality: the text is made of random words.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import resource
import time
from pathlib import Path

import numpy as np

MEAN_IMAGES, MEAN_SENTENCES = 5.7, 28.0


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}/{five:.2f}/{fifteen:.2f}"


def peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _gemm_runs(n: int, dtype, device: str) -> list:
    """One n x n x n matmul per library torch has on this device, each writing into a preallocated output.

    On CPU: MKL (``torch.mm(out=)``) and oneDNN with a prepacked weight (what
    ``torch.compile(freezing)`` runs; fp32 only here). A fresh output per call would fault in
    16-36 MB of new pages every call and measure the allocator, not the GEMM.
    """
    import torch

    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    runs = [lambda: torch.mm(a, b, out=out)]
    onednn = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if device == "cpu" else None
    if onednn is not None and dtype == torch.float32:
        packed = torch.ops.mkldnn._reorder_linear_weight(b, None)
        runs.append(lambda: onednn(a, packed, None, "none", [], ""))
    return runs


def matmul_peak(dtype=None, sizes=(2048, 3072), repeats: int = 4) -> float:
    """Burst peak: the best FLOP/s of single large square matmuls on all of torch's threads.

    Both of torch's CPU GEMM libraries are tried (MKL and oneDNN with a prepacked weight, see
    :func:`_gemm_runs`) at two sizes, ``repeats`` calls each, and the fastest single call
    counts: the best this machine has shown, so a model is never measured against a low bar.
    """
    import torch

    dtype = dtype or torch.float32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    best = 0.0
    for n in sizes:
        for run in _gemm_runs(n, dtype, device):
            run()
            for _ in range(repeats):
                if device == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                run()
                if device == "cuda":
                    torch.cuda.synchronize()
                best = max(best, 2 * n**3 / (time.perf_counter() - started))
    return best


def matmul_sustained(seconds: float = 3.0, n: int = 2048) -> float:
    """Steady GEMM rate: FLOP/s of n x n matmuls run back to back for ``seconds`` per library (the faster counts).

    Context, not the peak: on a shared VM a single call (:func:`matmul_peak`) can run 15-25 %
    faster than the same call's average over seconds. The machine's speed drifts with its
    neighbours, so this is measured around every timed section and the highest value is
    used; a model can still beat a reading taken in a slow moment.
    """
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    best = 0.0
    for run in _gemm_runs(n, torch.float32, device):
        run()
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            run()
            calls += 1
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, calls * 2 * n**3 / (time.perf_counter() - started))
    return best


def doc_shapes(rng: np.random.Generator, n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """Images and sentences per document, skewed like MMC4 (mean ~5.7 and ~28)."""
    images = np.minimum(rng.geometric(1 / 5.75, n_docs), 30)
    sentences = np.clip(np.round(rng.lognormal(np.log(20.5), 0.8, n_docs)), 4, 200).astype(np.int64)
    return images.astype(np.int64), sentences


# -- synthetic content -------------------------------------------------------------------


def render_photo(seed: int, width: int, height: int):
    """A smooth random colour field plus grain: compresses like a photo, not like noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(rng.integers(3, 9), rng.integers(3, 9), 3), dtype=np.uint8)
    img = Image.fromarray(coarse, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    detail = rng.integers(0, 256, size=(max(2, height // 24), max(2, width // 24), 3), dtype=np.uint8)
    img = Image.blend(img, Image.fromarray(detail, "RGB").resize((width, height), Image.Resampling.BICUBIC), 0.35)
    grain = rng.integers(-10, 11, size=(height, width, 1), dtype=np.int16)
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + grain, 0, 255).astype(np.uint8), "RGB")


def jpeg_corpus(directory: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` JPEGs as fetched_images stores them (side 150-800, aspect 0.5-2, q90); cached on disk."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        longer = int(rng.integers(300, 801))
        aspect = float(rng.uniform(0.5, 2.0))
        w, h = (longer, max(150, round(longer / aspect))) if aspect >= 1 else (max(150, round(longer * aspect)), longer)
        path = directory / f"img{seed}-{i:06d}.jpg"
        if not path.exists():
            buf = io.BytesIO()
            render_photo(seed * 1_000_003 + i, w, h).save(buf, "JPEG", quality=90)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(buf.getvalue())
            tmp.replace(path)
        paths.append(path)
    return paths


_SYLLABLES = [
    "ka",
    "ro",
    "mi",
    "ten",
    "sal",
    "ver",
    "do",
    "lin",
    "pa",
    "gre",
    "an",
    "us",
    "chi",
    "mor",
    "the",
    "and",
    "for",
    "with",
    "ing",
    "tion",
    "er",
    "st",
    "pl",
    "ow",
    "ee",
    "ph",
    "qu",
    "ai",
]


class SentenceMaker:
    """Sentences of random pseudo-words, 3-60 words (median ~12, ~28 CLIP tokens on average); some from a recurring
    boilerplate pool.
    """

    def __init__(self, seed: int = 0, vocab: int = 20000, boilerplate: int = 300, boiler_rate: float = 0.1):
        rng = np.random.default_rng(seed)
        self.rng = rng
        lengths = rng.integers(1, 4, vocab)
        self.vocab = ["".join(rng.choice(_SYLLABLES, k)) for k in lengths]
        self.boiler_rate = boiler_rate
        self.boilerplate = [self._fresh() for _ in range(boilerplate)]

    def _fresh(self) -> str:
        n = int(np.clip(self.rng.lognormal(np.log(12), 0.6), 3, 60))
        words = [self.vocab[i] for i in self.rng.zipf(1.3, n) % len(self.vocab)]
        return " ".join(words).capitalize() + "."

    def sentence(self) -> str:
        if self.rng.random() < self.boiler_rate:
            return self.boilerplate[int(self.rng.integers(len(self.boilerplate)))]
        return self._fresh()


def build_scoring_shard(
    store, shard: str, n_docs: int, images: list[Path], *, seed: int = 0, failed_rate: float = 0.2
) -> dict:
    """raw_c4 + fetched_images tables and stored blobs for a clip_scores run; returns counts.

    Images are used in order, each once (wrapping around only if ``images`` runs out), and
    about ``failed_rate`` of the candidates are failed fetches, as in a real shard.
    """
    import polars as pl

    rng = np.random.default_rng(seed)
    maker = SentenceMaker(seed)
    n_img, n_sent = doc_shapes(rng, n_docs)
    names = []
    for path in images:
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        store.put_blob(digest, data)
        names.append(f"{digest}.jpg")
    raw, fetched, used = [], [], 0
    for d in range(n_docs):
        doc_id = f"{shard}:{d}"
        raw.append(
            {
                "doc_id": doc_id,
                "url": f"https://site{d % 997}.example/page/{d}",
                "text_list": [maker.sentence() for _ in range(int(n_sent[d]))],
            }
        )
        for i in range(int(n_img[d])):
            ok = rng.random() >= failed_rate
            name = names[used % len(names)] if ok else None
            used += ok
            fetched.append(
                {
                    "doc_id": doc_id,
                    "image_index": i,
                    "raw_url": f"https://img.example/{d}/{i}.jpg",
                    "status": "ok" if ok else "http_404",
                    "image_name": name,
                    "phash": f"{rng.integers(0, 2**63):016x}" if ok else None,
                }
            )
    store.write_table(
        "raw_c4",
        shard,
        pl.DataFrame(raw, schema={"doc_id": pl.String, "url": pl.String, "text_list": pl.List(pl.String)}),
    )
    store.write_table(
        "fetched_images",
        shard,
        pl.DataFrame(
            fetched,
            schema={
                "doc_id": pl.String,
                "image_index": pl.Int32,
                "raw_url": pl.String,
                "status": pl.String,
                "image_name": pl.String,
                "phash": pl.String,
            },
        ),
    )
    return {"docs": n_docs, "ok_images": used, "distinct_images": min(used, len(names)), "sentences": int(n_sent.sum())}


def print_json(label: str, payload: dict) -> None:
    print(f"{label} {json.dumps(payload, sort_keys=True)}")
