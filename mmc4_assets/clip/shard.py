"""clip_scores for a shard, streamed: raw_c4 and fetched_images merge-joined batch by batch.

Both tables are written in document order (fetched_images is built by walking raw_c4's
batches), so the ``ok`` images of a raw_c4 batch are the next rows of fetched_images:
:func:`join_fetched` pulls fetched rows only until it has passed the batch, and nothing
of the shard is held but one batch of each table. A fetched row that does not come in
that order is an error, never silently dropped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa

from mmc4_assets.clip.scoring import DocImages, ScoredBatch, ShardScorer
from mmc4_assets.stats import StepStats

IMAGE_STRUCT = pl.Struct({"image_index": pl.Int32, "image_name": pl.String, "raw_url": pl.String, "phash": pl.String})
CLIP_SCORES_SCHEMA = {
    "doc_id": pl.String,
    "url": pl.String,
    "text_list": pl.List(pl.String),
    "images": pl.List(IMAGE_STRUCT),
    "similarity_matrix": pl.List(pl.List(pl.Float32)),
}
RAW_COLUMNS = ["doc_id", "url", "text_list"]
FETCHED_COLUMNS = ["doc_id", "image_index", "image_name", "raw_url", "phash", "status"]
_IMAGE_FIELDS = list(IMAGE_STRUCT.to_schema())


def features_schema(dim: int) -> dict:
    return {"image_name": pl.String, "embedding": pl.Array(pl.Float32, dim)}


class FetchedOrderError(ValueError):
    """fetched_images rows are not in raw_c4's document order (or name unknown documents)."""


@dataclass
class DocBatch:
    """The documents of one raw_c4 batch that kept an image, with their images in order."""

    docs: pl.DataFrame  # doc_id, url, text_list
    images: pl.DataFrame  # image_index, image_name, raw_url, phash; grouped by doc
    images_per_doc: np.ndarray  # int64, one per row of docs
    num_without_images: int  # documents of the raw batch with no ok image

    def doc_images(self) -> list[DocImages]:
        names = self.images["image_name"].to_list()
        ends = np.cumsum(self.images_per_doc).tolist()
        starts = [0, *ends[:-1]]
        return [
            DocImages(d, t, names[a:b])
            for d, t, a, b in zip(self.docs["doc_id"].to_list(), self.docs["text_list"].to_list(), starts, ends)
        ]


def join_fetched(raw_batches: Iterable[pl.DataFrame], fetched_batches: Iterable[pl.DataFrame]) -> Iterator[DocBatch]:
    """Merge-join raw_c4 batches with the ``ok`` rows of fetched_images, both in document order."""
    fetched = (b.filter(pl.col("status") == "ok").drop("status") for b in fetched_batches)
    buffer: pl.DataFrame | None = None
    exhausted = False
    for raw in raw_batches:
        ids = raw["doc_id"]
        wanted = set(ids.to_list())
        # pull fetched rows until the buffer ends past this batch: its images are all in hand
        while not exhausted and (buffer is None or buffer.height == 0 or buffer["doc_id"][-1] in wanted):
            nxt = next(fetched, None)
            if nxt is None:
                exhausted = True
            else:
                buffer = nxt if buffer is None or buffer.height == 0 else pl.concat([buffer, nxt])
        if buffer is None or buffer.height == 0:
            mine = None
        else:
            inside = buffer["doc_id"].is_in(ids).to_numpy()
            k = int(inside.size if inside.all() else inside.argmin())
            if inside[k:].any():
                raise FetchedOrderError(
                    f"fetched_images row for {buffer['doc_id'][k + int(inside[k:].argmax())]!r} comes after "
                    f"{buffer['doc_id'][k]!r}, which is not in the same raw_c4 batch"
                )
            mine, buffer = buffer[:k], buffer[k:]
        yield _doc_batch(raw, mine)
    leftover = buffer.height if buffer is not None else 0
    for rest in fetched:
        leftover += rest.height
    if leftover:
        raise FetchedOrderError(f"{leftover} ok fetched_images rows match no raw_c4 document in order")


def _doc_batch(raw: pl.DataFrame, images: pl.DataFrame | None) -> DocBatch:
    docs = raw.select(RAW_COLUMNS)
    if images is None or images.height == 0:
        empty = pl.DataFrame(schema={k: IMAGE_STRUCT.to_schema()[k] for k in _IMAGE_FIELDS})
        return DocBatch(docs.clear(), empty, np.zeros(0, np.int64), raw.height)
    pos = docs.select("doc_id").with_row_index("pos")
    images = images.join(pos, on="doc_id", how="left", maintain_order="left").sort(
        "pos", "image_index", maintain_order=True
    )
    counts = np.bincount(images["pos"].to_numpy(), minlength=raw.height)
    kept = counts > 0
    return DocBatch(
        docs.filter(pl.Series(kept)), images.select(_IMAGE_FIELDS), counts[kept].astype(np.int64), int((~kept).sum())
    )


class DigestSet:
    """Which image names were seen in this shard, in 16 bytes each (blake2b-128 of the name).

    Sorted runs merged as they grow (log n runs), so membership is a few ``searchsorted``
    and a shard of 2M distinct images costs 32 MB instead of a Python set's ~300 MB.
    """

    def __init__(self):
        self._runs: list[np.ndarray] = []
        self.size = 0

    @staticmethod
    def _keys(names: list[str]) -> np.ndarray:
        return np.array([hashlib.blake2b(n.encode(), digest_size=16).digest() for n in names], dtype="S16")

    def _contains(self, keys: np.ndarray) -> np.ndarray:
        found = np.zeros(keys.size, dtype=bool)
        for run in self._runs:
            idx = np.minimum(np.searchsorted(run, keys), run.size - 1)
            found |= run[idx] == keys
        return found

    def add_new(self, names: list[str]) -> np.ndarray:
        """Add distinct ``names``; True for those not seen before."""
        if not names:
            return np.zeros(0, dtype=bool)
        keys = self._keys(names)
        new = ~self._contains(keys)
        if new.any():
            self._runs.append(np.sort(keys[new]))
            self.size += int(new.sum())
            while len(self._runs) > 1 and self._runs[-2].size <= 2 * self._runs[-1].size:
                last = self._runs.pop()
                self._runs[-1] = np.sort(np.concatenate([self._runs[-1], last]))
        return new


@dataclass
class ShardScoreStats:
    """What a shard's scoring did, beyond kept/dropped documents."""

    images_scored: int = 0  # distinct images written to clip_image_features
    images_encoded: int = 0  # image forward passes (cache misses)
    sentences: int = 0  # sentences of scored documents
    sentences_distinct_in_batches: int = 0
    sentences_encoded: int = 0  # sentence forward passes (cache misses)
    seen: DigestSet = field(default_factory=DigestSet)


def score_shard(
    raw_batches: Iterable[pl.DataFrame],
    fetched_batches: Iterable[pl.DataFrame],
    scorer: ShardScorer,
    stats: StepStats,
    totals: ShardScoreStats,
) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    """(clip_scores rows, new clip_image_features rows) per raw_c4 batch, streamed."""
    batches = ((b, b.doc_images()) for b in join_fetched(raw_batches, fetched_batches))
    for batch, scored in scorer.score(batches):
        if batch.num_without_images:
            stats.drop("no_images_fetched", batch.num_without_images)
        stats.keep(batch.docs.height)
        totals.images_encoded += scored.images_encoded
        totals.sentences_distinct_in_batches += scored.num_distinct_sentences
        totals.sentences_encoded += scored.sentences_encoded
        totals.sentences += sum(m.shape[1] for m in scored.similarity_matrices)
        new = totals.seen.add_new(scored.image_names)
        totals.images_scored += int(new.sum())
        features = pl.DataFrame(
            {
                "image_name": [n for n, is_new in zip(scored.image_names, new) if is_new],
                "embedding": scored.image_features[new],
            },
            schema=features_schema(scored.image_features.shape[1]),
        )
        yield scores_frame(batch, scored), features


def scores_frame(batch: DocBatch, scored: ScoredBatch) -> pl.DataFrame:
    """clip_scores rows of a batch, built column-wise from offsets (no per-row dicts)."""
    if batch.docs.height == 0:
        return pl.DataFrame(schema=CLIP_SCORES_SCHEMA)
    n = batch.images_per_doc
    m = batch.docs["text_list"].list.len().to_numpy().astype(np.int64)
    values = np.concatenate([mat.ravel() for mat in scored.similarity_matrices]).astype(np.float32, copy=False)
    row_offsets = np.zeros(int(n.sum()) + 1, np.int64)
    np.cumsum(np.repeat(m, n), out=row_offsets[1:])
    doc_offsets = np.zeros(n.size + 1, np.int64)
    np.cumsum(n, out=doc_offsets[1:])
    rows = pa.LargeListArray.from_arrays(pa.array(row_offsets), pa.array(values))
    images = batch.images.to_arrow().to_struct_array().combine_chunks()
    table = (
        batch.docs.to_arrow()
        .append_column("images", pa.LargeListArray.from_arrays(pa.array(doc_offsets), images))
        .append_column("similarity_matrix", pa.LargeListArray.from_arrays(pa.array(doc_offsets), rows))
    )
    return pl.from_arrow(table).cast(CLIP_SCORES_SCHEMA)


def write_clip_scores(
    store,
    shard: str,
    scorer: ShardScorer,
    stats: StepStats,
    *,
    docs_per_batch: int = 256,
    fetched_rows_per_batch: int = 4096,
    params: dict | None = None,
) -> ShardScoreStats:
    """The clip_scores step of one shard: read raw_c4 + fetched_images, score, write both tables.

    ``params`` (the model the scores come from) travel with both tables (``read_table_params``).
    """
    totals = ShardScoreStats()
    # both tables stream in document order and are merge-joined: memory is per batch, not per shard
    raw = store.iter_batches("raw_c4", shard, RAW_COLUMNS, docs_per_batch)
    fetched = store.iter_batches("fetched_images", shard, FETCHED_COLUMNS, fetched_rows_per_batch)
    features = features_schema(scorer.encoder.embed_dim)
    with (
        store.table_writer("clip_scores", shard, CLIP_SCORES_SCHEMA, params) as out,
        store.table_writer("clip_image_features", shard, features, params) as feats,
    ):
        for rows, features in score_shard(raw, fetched, scorer, stats, totals):
            out.write(rows)
            feats.write(features)
    return totals
