"""Per-document image x sentence cosine similarity, streamed batch by batch.

:class:`ShardScorer` takes document batches one after another and, per batch:

1. looks every distinct image and sentence up in bounded LRU caches that live for the
   whole shard (boilerplate sentences and site-wide images recur across documents, not
   only within a batch);
2. decodes and preprocesses the images it misses in a thread pool, ``lookahead``
   batches ahead, so the JPEG work for batch k+1 runs while the model encodes batch k;
3. encodes the missing images in batches of ``batch_size`` and the missing sentences
   sorted by length (see :meth:`ClipEncoder.encode_tokens`);
4. returns one images x sentences matrix per document, flattened into one array.

Memory is bounded by the caches and ``lookahead + 1`` batches, never by the shard.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mmc4_assets.clip.encoder import ClipEncoder


@dataclass
class DocImages:
    doc_id: str
    text_list: Sequence[str]
    image_names: Sequence[str]


@dataclass
class ScoredBatch:
    similarity_matrices: list[np.ndarray]  # per doc, images x sentences, float32
    image_names: list[str]  # distinct images of the batch, feature row order
    image_features: np.ndarray
    num_distinct_sentences: int  # distinct sentences of the batch
    sentences_encoded: int = 0  # of those, not found in the shard's cache
    images_encoded: int = 0  # distinct images of the batch not found in the cache


class LRU:
    """A bounded key -> value map that forgets the least recently used entry."""

    def __init__(self, capacity: int):
        self.capacity = max(0, int(capacity))
        self._data: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key):
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key, value) -> None:
        if self.capacity == 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)


def _background_priority() -> None:
    """Decode threads yield to the model on a CPU-only host: nice +10 for this thread alone (Linux)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


@dataclass
class _Pending:
    docs: Sequence[DocImages]
    image_names: list[str]
    sentences: list[str]
    futures: dict[str, Future] = field(default_factory=dict)
    tokens: Future | None = None
    to_tokenize: list[str] = field(default_factory=list)


class ShardScorer:
    """Scores document batches of one shard with shard-wide caches and a decode pool.

    Use as a context manager (the pool is shut down on exit)."""

    def __init__(
        self,
        encoder: ClipEncoder,
        load_image: Callable[[str], bytes],
        *,
        decode_workers: int = 0,
        sentence_cache_size: int = 32768,
        image_cache_size: int = 4096,
        lookahead: int = 1,
    ):
        self.encoder = encoder
        self.load_image = load_image
        on_gpu = not encoder.device.startswith("cpu")
        if decode_workers <= 0:
            # a GPU needs every core decoding; on a CPU the model already uses them all and the
            # decoders only fill its gaps, so a couple of low-priority threads are enough
            decode_workers = min(32, os.cpu_count() or 1) if on_gpu else 2
        self.decode_workers = decode_workers
        self._pool = ThreadPoolExecutor(
            decode_workers, thread_name_prefix="clip-decode", initializer=None if on_gpu else _background_priority
        )
        self.sentence_cache = LRU(sentence_cache_size)
        self.image_cache = LRU(image_cache_size)
        self.lookahead = max(0, lookahead)
        self._inflight: dict[str, Future] = {}
        # seconds the calling thread spent per phase: where a shard's time goes
        self.timings: dict[str, float] = dict.fromkeys(
            ("wait_decode", "encode_images", "wait_tokenize", "encode_sentences", "similarity"), 0.0
        )
        # CPU seconds the pool threads spent reading + decoding + preprocessing, and tokenising
        self.background_cpu: dict[str, float] = {"decode_cpu": 0.0, "tokenize_cpu": 0.0}
        self._lock = threading.Lock()

    def _tick(self, phase: str, since: float) -> float:
        now = time.perf_counter()
        self.timings[phase] += now - since
        return now

    def __enter__(self) -> ShardScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- the stream ----------------------------------------------------------------------
    def score(self, batches: Iterable[tuple[Any, Sequence[DocImages]]]) -> Iterator[tuple[Any, ScoredBatch]]:
        """``(key, docs)`` in, ``(key, ScoredBatch)`` out, in order; batch k+1 decodes while k encodes."""
        pending: deque[tuple[Any, _Pending]] = deque()
        for key, docs in batches:
            pending.append((key, self._start(docs)))
            while len(pending) > self.lookahead:
                key_done, job = pending.popleft()
                yield key_done, self._finish(job)
        while pending:
            key_done, job = pending.popleft()
            yield key_done, self._finish(job)

    def score_batch(self, docs: Sequence[DocImages]) -> ScoredBatch:
        return self._finish(self._start(docs))

    def _background(self, what: str, fn, *args):
        started = time.thread_time()
        try:
            return fn(*args)
        finally:
            with self._lock:
                self.background_cpu[what] += time.thread_time() - started

    def _prepare(self, name: str):
        return self._background("decode_cpu", lambda: self.encoder.prepare(self.load_image(name)))

    def _start(self, docs: Sequence[DocImages]) -> _Pending:
        names = list(dict.fromkeys(n for d in docs for n in d.image_names))
        sentences = list(dict.fromkeys(s for d in docs for s in d.text_list))
        job = _Pending(docs, names, sentences)
        for name in names:
            if self.image_cache.get(name) is not None:
                continue
            future = self._inflight.get(name)
            if future is None:
                future = self._inflight[name] = self._pool.submit(self._prepare, name)
            job.futures[name] = future
        job.to_tokenize = [s for s in sentences if self.sentence_cache.get(s) is None]
        if job.to_tokenize:
            job.tokens = self._pool.submit(self._background, "tokenize_cpu", self.encoder.tokenize, job.to_tokenize)
        return job

    def _finish(self, job: _Pending) -> ScoredBatch:
        image_feats, images_encoded = self._image_features(job)
        sentence_feats, sentences_encoded = self._sentence_features(job)
        image_row = {n: i for i, n in enumerate(job.image_names)}
        sentence_row = {s: i for i, s in enumerate(job.sentences)}
        started = time.perf_counter()
        matrices = []
        for doc in job.docs:
            rows = image_feats[[image_row[n] for n in doc.image_names]]
            cols = sentence_feats[[sentence_row[s] for s in doc.text_list]]
            # both sides are unit vectors, so the dot product is the cosine; clip float noise
            matrices.append(np.clip(rows @ cols.T, -1.0, 1.0).astype(np.float32, copy=False))
        self._tick("similarity", started)
        return ScoredBatch(
            matrices, job.image_names, image_feats, len(job.sentences), sentences_encoded, images_encoded
        )

    def _image_features(self, job: _Pending) -> tuple[np.ndarray, int]:
        feats = np.empty((len(job.image_names), self.encoder.embed_dim), np.float32)
        todo: list[int] = []
        for i, name in enumerate(job.image_names):
            cached = self.image_cache.get(name)
            if cached is not None:
                feats[i] = cached
            else:
                todo.append(i)
        step = self.encoder.spec.batch_size
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            inputs = []
            started = time.perf_counter()
            for i in chunk:
                name = job.image_names[i]
                future = job.futures.get(name) or self._inflight.get(name)
                inputs.append(future.result() if future is not None else self._prepare(name))
            started = self._tick("wait_decode", started)
            feats[chunk] = self.encoder.encode_prepared(inputs)
            self._tick("encode_images", started)
            for i in chunk:
                name = job.image_names[i]
                self.image_cache.put(name, feats[i].copy())
                self._inflight.pop(name, None)
        return feats, len(todo)

    def _sentence_features(self, job: _Pending) -> tuple[np.ndarray, int]:
        feats = np.empty((len(job.sentences), self.encoder.embed_dim), np.float32)
        todo: list[int] = []
        for i, s in enumerate(job.sentences):
            cached = self.sentence_cache.get(s)
            if cached is not None:
                feats[i] = cached
            else:
                todo.append(i)
        if todo:
            started = time.perf_counter()
            tokens = job.tokens.result() if job.tokens is not None else None
            row = {s: k for k, s in enumerate(job.to_tokenize)}
            missing = [job.sentences[i] for i in todo if job.sentences[i] not in row]
            if missing:  # evicted since the batch was started: tokenise here
                extra = self.encoder.tokenize(missing)
                row.update({s: len(row) + k for k, s in enumerate(missing)})
                tokens = extra if tokens is None else torch.cat([tokens, extra])
            picked = tokens[[row[job.sentences[i]] for i in todo]]
            started = self._tick("wait_tokenize", started)
            feats[todo] = self.encoder.encode_tokens(picked)
            self._tick("encode_sentences", started)
            for i in todo:
                self.sentence_cache.put(job.sentences[i], feats[i].copy())
        return feats, len(todo)


def score_documents(docs: Sequence[DocImages], encoder: ClipEncoder, load_image: Callable[[str], bytes]) -> ScoredBatch:
    """One batch, no caches kept: each distinct image and sentence of the batch embedded once."""
    with ShardScorer(encoder, load_image, sentence_cache_size=0, image_cache_size=0, decode_workers=1) as scorer:
        return scorer.score_batch(docs)
