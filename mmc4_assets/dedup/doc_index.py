"""Corpus-wide document duplicates: shared URLs and near-duplicate texts across shards.

Per shard, ``doc_fingerprints`` holds one row per raw_c4 document: its URL key, whether it
reached deduped_docs (a *candidate* for publication), and for candidates a MinHash
signature of its text. The corpus index keeps three key indexes over them:

- ``url``: every document's URL; n > 1 sets ``could_have_url_duplicate`` (MMC4's flag),
- ``url_candidate``: candidates' URLs; who holds a duplicate decides which copy stays when
  URL duplicates are dropped (the smallest ``(shard, doc_id)`` stays),
- ``band``: LSH band keys of candidate signatures; a shared band key makes a candidate pair,

and ``edges``: verified near-duplicate pairs (estimated Jaccard >= threshold), stored as
``(a, b)`` with ``(a_shard, a_doc) < (b_shard, b_doc)``. The rule that uses them is local
and order-free: a candidate is a near-duplicate when it has an edge to a smaller
``(shard, doc_id)``, so the copy on the smallest shard key is the one kept, whatever the
order shards arrived in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import polars as pl

from mmc4_assets.dedup.corpus_state import (
    POSTINGS,
    SPILL_PARTS,
    BucketSpill,
    CorpusState,
    CorpusUpdate,
    flipped_shards,
    over_set_changes,
    plan,
    update_key_index,
    update_over_limit,
)
from mmc4_assets.dedup.keys import url_keys
from mmc4_assets.dedup.minhash import MinHashScheme, band_keys, estimated_jaccard, signatures
from mmc4_assets.engine import map_ordered
from mmc4_assets.mmc4_params import DocIndexSettings
from mmc4_assets.storage import ShardStore

NAME = "doc_index"
SCHEME = MinHashScheme()
EDGES_SCHEMA = {
    "a_shard": pl.String,
    "a_doc": pl.String,
    "b_shard": pl.String,
    "b_doc": pl.String,
    "jaccard": pl.Float32,
}
COUNTERS = ("url", "url_candidate", "band")


def fingerprint_schema(scheme: MinHashScheme = SCHEME) -> dict:
    return {
        "doc_id": pl.String,
        "url_key": pl.UInt64,
        "candidate": pl.Boolean,
        "signature": pl.Array(pl.UInt32, scheme.num_perm),
    }


def candidate_fingerprints(docs: pl.DataFrame, scheme: MinHashScheme = SCHEME) -> pl.DataFrame:
    """Fingerprint rows of deduped_docs rows (doc_id, url, text_list); text is the sentences joined."""
    texts = docs["text_list"].list.join(" ").to_list()
    sigs = signatures(texts, scheme)
    empty = (sigs == np.iinfo(np.uint32).max).all(axis=1)  # no word at all: matches nothing
    return (
        pl.DataFrame(
            {
                "doc_id": docs["doc_id"],
                "url_key": url_keys(docs["url"]),
                "candidate": pl.Series([True] * docs.height, dtype=pl.Boolean),
                "signature": pl.Series("signature", sigs, dtype=pl.Array(pl.UInt32, scheme.num_perm)),
            }
        )
        .with_columns(
            pl.when(pl.Series(empty, dtype=pl.Boolean)).then(None).otherwise(pl.col("signature")).alias("signature")
        )
        .cast(fingerprint_schema(scheme))
    )


def other_fingerprints(docs: pl.DataFrame, scheme: MinHashScheme = SCHEME) -> pl.DataFrame:
    """Fingerprint rows of raw_c4 documents (doc_id, url) that are not candidates."""
    return (
        pl.DataFrame({"doc_id": docs["doc_id"], "url_key": url_keys(docs["url"])})
        .with_columns(candidate=pl.lit(False), signature=pl.lit(None, dtype=pl.Array(pl.UInt32, scheme.num_perm)))
        .cast(fingerprint_schema(scheme))
    )


def doc_band_rows(fingerprints: pl.DataFrame, scheme: MinHashScheme = SCHEME) -> pl.DataFrame:
    """(doc_id, key) for every LSH band of every candidate with a signature."""
    signed = fingerprints.filter(pl.col("candidate") & pl.col("signature").is_not_null())
    if signed.height == 0:
        return pl.DataFrame(schema={"doc_id": pl.String, "key": pl.UInt64})
    keys = band_keys(signed["signature"].to_numpy(), scheme)
    return pl.DataFrame(
        {"doc_id": np.repeat(signed["doc_id"].to_numpy(), scheme.bands), "key": keys.reshape(-1)},
        schema={"doc_id": pl.String, "key": pl.UInt64},
    )


def contributions(fingerprints: pl.DataFrame, scheme: MinHashScheme = SCHEME) -> dict[str, pl.DataFrame]:
    """(key, n) per counter: what one shard adds to the corpus index."""

    def count(frame: pl.DataFrame, col: str) -> pl.DataFrame:
        return frame.group_by(pl.col(col).alias("key")).agg(n=pl.len().cast(pl.UInt32))

    return {
        "url": count(fingerprints, "url_key"),
        "url_candidate": count(fingerprints.filter(pl.col("candidate")), "url_key"),
        "band": count(doc_band_rows(fingerprints, scheme), "key"),
    }


def _shard_contributions(
    shard: str, read: Callable[[str], pl.DataFrame], scheme: MinHashScheme
) -> dict[str, pl.DataFrame]:
    return contributions(read(shard), scheme)


def _dropped(edges: pl.DataFrame) -> pl.DataFrame:
    return edges.select(shard="b_shard", doc_id="b_doc").unique()


SHARED_ROWS = {"key": pl.UInt64, "shard": pl.UInt32}  # a band key held by two documents or more, per holder
PAIR_BUCKET_ROWS = 200_000  # band rows (with signatures, ~0.6 KB each) one pair-check bucket holds at most


def pair_rows_schema(scheme: MinHashScheme = SCHEME) -> dict:
    return {
        "key": pl.UInt64,
        "shard": pl.String,
        "doc_id": pl.String,
        "signature": pl.Array(pl.UInt32, scheme.num_perm),
    }


def shared_key_sink(spill: BucketSpill, fresh_ids: Iterable[int]) -> Callable[[pl.DataFrame], None]:
    """For the band index update: route each bucket's keys held by two documents or more, one of
    them on a changed shard, to ``spill`` as (key, shard id) rows, partitioned by shard."""
    fresh = pl.Series(sorted(set(fresh_ids)), dtype=pl.UInt32).implode()

    def sink(after: pl.DataFrame) -> None:
        shared = after.filter((pl.col("n") >= 2) & pl.col("shards").list.eval(pl.element().is_in(fresh)).list.any())
        spill.append(shared.select("key", shard="shards").explode("shard"))

    return sink


def _spill_shared_band_rows(
    shared: BucketSpill,
    id_to_shard: dict[int, str],
    read: Callable[[str], pl.DataFrame],
    scheme: MinHashScheme,
    out: BucketSpill,
) -> int:
    """Band rows (with signatures) of every document holding a shared key, into ``out`` by band key;
    returns how many shards were read. ``shared`` is partitioned by shard id: one partition's
    keys and one shard's fingerprints are in memory at a time, and each shard is read once."""
    shards_read = 0
    for part in range(SPILL_PARTS):
        held = shared.bucket(part, SPILL_PARTS)
        if held.height == 0:
            continue
        for shard_id, keys in held.group_by("shard").agg("key").sort("shard").iter_rows():
            shard = id_to_shard[shard_id]
            fp = read(shard)
            bands = doc_band_rows(fp, scheme).join(
                pl.DataFrame({"key": keys}, schema={"key": pl.UInt64}), on="key", how="semi"
            )
            out.append(bands.join(fp.select("doc_id", "signature"), on="doc_id").with_columns(shard=pl.lit(shard)))
            shards_read += 1
        del held
    return shards_read


def _bucket_edges(rows: pl.DataFrame, changed: pl.Series, threshold: float) -> pl.DataFrame:
    """Verified pairs among one bucket's band rows (every row of a key is in the same bucket)."""
    docs = rows.unique(["shard", "doc_id"]).with_row_index("i")
    ids = rows.select("key", "shard", "doc_id").join(docs.select("shard", "doc_id", "i"), on=["shard", "doc_id"])
    pairs = (
        ids.join(ids, on="key", suffix="_b")
        .filter(
            (pl.col("shard") < pl.col("shard_b"))
            | ((pl.col("shard") == pl.col("shard_b")) & (pl.col("doc_id") < pl.col("doc_id_b")))
        )
        .filter(pl.col("shard").is_in(changed.implode()) | pl.col("shard_b").is_in(changed.implode()))
        .select(a_shard="shard", a_doc="doc_id", b_shard="shard_b", b_doc="doc_id_b", a_i="i", b_i="i_b")
        .unique(["a_shard", "a_doc", "b_shard", "b_doc"])
    )
    if pairs.height == 0:
        return pl.DataFrame(schema=EDGES_SCHEMA)
    sigs = docs["signature"].to_numpy()
    jaccard = estimated_jaccard(sigs[pairs["a_i"].to_numpy()], sigs[pairs["b_i"].to_numpy()])
    return (
        pairs.with_columns(jaccard=pl.Series(jaccard, dtype=pl.Float32))
        .filter(pl.col("jaccard") >= threshold)
        .select(list(EDGES_SCHEMA))
        .cast(EDGES_SCHEMA)
    )


def near_duplicate_edges(
    shared: BucketSpill,
    changed: Iterable[str],
    id_to_shard: dict[int, str],
    read: Callable[[str], pl.DataFrame],
    threshold: float,
    scheme: MinHashScheme = SCHEME,
) -> tuple[pl.DataFrame, int]:
    """Verified pairs among documents sharing a band key, at least one of them on a changed
    shard; and how many shards were read for them.

    ``shared`` holds (key, shard id) for every shared band key (``shared_key_sink``). The band
    rows of the documents holding them are spilled by band key with their signatures, then
    checked one bucket at a time: memory holds one bucket, never every shared document.
    A pair sharing several bands is found in several buckets; the edges are made unique.
    """
    changed = pl.Series(sorted(set(changed)), dtype=pl.String)
    with BucketSpill(pair_rows_schema(scheme), flush_rows=PAIR_BUCKET_ROWS) as rows:
        shards_read = _spill_shared_band_rows(shared, id_to_shard, read, scheme, rows)
        buckets = 1
        while rows.rows > buckets * PAIR_BUCKET_ROWS and buckets < SPILL_PARTS:
            buckets *= 2
        edges = [_bucket_edges(rows.bucket(b, buckets), changed, threshold) for b in range(buckets)]
    return pl.concat([pl.DataFrame(schema=EDGES_SCHEMA), *edges]).unique(), shards_read


def update_doc_index(
    store: ShardStore,
    latest: dict[str, int | None],
    read_fingerprints: Callable[[str], pl.DataFrame],
    *,
    threshold: float = DocIndexSettings.near_duplicate_jaccard,
    buckets: int = 16,
    scheme: MinHashScheme = SCHEME,
    full_recompute: bool = False,
    client=None,
) -> CorpusUpdate:
    """Bring the document index to ``latest`` (shard -> version of its fingerprints).

    Reads the fingerprints of new or changed shards, plus, for near-duplicate
    verification, the signatures of earlier shards that share an LSH band with them.
    """
    state = CorpusState.load(store, NAME)
    settings = {"threshold": threshold, "buckets": buckets, "scheme": scheme.id}
    full_recompute = full_recompute or bool(state.version and {k: state.settings.get(k) for k in settings} != settings)
    changes, removed = plan(state, latest, full_recompute)
    if not changes and not removed:
        return CorpusUpdate(state.version, [], [], [], False, None, {"shards": len(state.registry)})
    old_ids = id_to_shard = state.shard_keys()
    old_edges = state.read("edges", EDGES_SCHEMA)
    old_over = {c: state.read(f"{c}.over", POSTINGS) for c in ("url", "url_candidate")}
    if full_recompute:
        state = state.fresh(settings)
        id_to_shard = {}
    replaced = [state.registry[s]["id"] for s in (*changes, *removed) if s in state.registry]
    # a few changed shards (the incremental case) are kept in memory for the near-duplicate
    # step; a full recompute reads them again rather than holding the corpus
    cache: dict[str, pl.DataFrame] = {}

    def read(shard: str) -> pl.DataFrame:
        if shard in cache:
            return cache[shard]
        frame = read_fingerprints(shard)
        if shard in changes and len(changes) <= 8:
            cache[shard] = frame
        return frame

    with contextlib.ExitStack() as stack:
        # each counter's new rows go to disk by bucket: a batch or a full recompute holds one
        # shard's rows and one bucket in memory, never the corpus
        added = {c: stack.enter_context(BucketSpill()) for c in COUNTERS}
        order = sorted(changes)
        ids = [state.shard_id(s) for s in order]  # assigned in order: the same with or without an engine
        # the per-shard work (reading signatures, band keys) runs on the engine when given one
        # (here, the caching reader: a small batch is read once for counting and verification)
        reader = read if client is None else read_fingerprints
        for shard_id, counts in zip(ids, map_ordered(client, _shard_contributions, order, reader, scheme)):
            for counter, rows in counts.items():
                added[counter].append(rows.with_columns(shard=pl.lit(shard_id, pl.UInt32)))
        id_to_shard = {**id_to_shard, **state.shard_keys()}
        affected: set[str] = set()
        stats: dict[str, int] = {}
        # band keys now held by two documents or more, one of them on a changed shard: spilled
        # by shard as each bucket is rewritten (they grow with the corpus, so never held)
        shared = stack.enter_context(BucketSpill(SHARED_ROWS, by="shard"))
        sink = shared_key_sink(shared, [state.registry[s]["id"] for s in changes])
        for counter, postings_matter in (("url", False), ("url_candidate", True), ("band", False)):
            update = update_key_index(
                state, counter, buckets, replaced, added[counter], limit=1, sink=sink if counter == "band" else None
            )
            stats[f"{counter}_rows"] = update.rows
            if counter != "band":
                over = update_over_limit(state, counter, update, 1)
                stats[f"{counter}_duplicated_keys"] = over.height
                if full_recompute:  # ids were renumbered: compare the duplicate sets themselves
                    affected |= over_set_changes(
                        old_over[counter], old_ids, over, state.shard_keys(), postings_matter=postings_matter
                    )
                else:
                    affected |= {id_to_shard[i] for i in flipped_shards(update, 1, postings_matter=postings_matter)}
            del update
        new_edges, verified_from = near_duplicate_edges(shared, changes, id_to_shard, read, threshold, scheme)

    gone = set(changes) | set(removed)
    kept = old_edges.filter(~pl.col("a_shard").is_in(list(gone)) & ~pl.col("b_shard").is_in(list(gone)))
    edges = pl.concat([kept, new_edges]).unique().sort("b_shard", "b_doc", "a_shard", "a_doc")
    state.stage("edges", edges)
    flipped = pl.concat([_dropped(old_edges), _dropped(edges)]).filter(pl.len().over("shard", "doc_id") == 1)
    affected_shards = sorted((affected | set(flipped["shard"].to_list())) - set(removed))

    for s, version in changes.items():
        state.registry[s]["storage_id"] = version
    for s in removed:
        state.registry.pop(s, None)
    # the file lists every shard to (re)publish: affected ones and the newly absorbed
    version = state.commit(set(affected_shards) | set(changes), **settings)
    stats.update(
        shards=len(state.registry),
        near_duplicate_pairs=edges.height,
        near_duplicate_docs=_dropped(edges).height,
        new_pairs=new_edges.height,
        shards_read_for_verification=verified_from,
    )
    return CorpusUpdate(version, sorted(changes), removed, affected_shards, full_recompute, state.affected_file, stats)


@dataclass(frozen=True)
class DocDecisions:
    """What one shard's publication needs from the document index, as of one version."""

    version: int
    threshold: float
    duplicated_urls: pl.Series  # url keys held by more than one document (u64)
    url_owner: dict[int, str]  # duplicated candidate url key -> smallest shard holding it
    near_duplicates: dict[str, tuple[str, str, float]]  # doc_id -> (shard, doc_id) it repeats, jaccard
    absorbed: dict[str, int | None]


def load_doc_decisions(store: ShardStore, shard: str, url_keys_of_shard: Iterable[int] = ()) -> DocDecisions:
    state = CorpusState.load(store, NAME)
    id_to_shard = state.shard_keys()
    dup = state.read("url.over", {"key": pl.UInt64})["key"]
    owners = state.read("url_candidate.over", {"key": pl.UInt64, "shards": pl.List(pl.UInt32)})
    wanted = pl.Series(list(url_keys_of_shard), dtype=pl.UInt64)
    owners = owners.filter(pl.col("key").is_in(wanted.implode()))
    url_owner = {
        k: min(id_to_shard[i] for i in ids) for k, ids in zip(owners["key"].to_list(), owners["shards"].to_list())
    }
    edges = state.read("edges", EDGES_SCHEMA).filter(pl.col("b_shard") == shard)
    near: dict[str, tuple[str, str, float]] = {}
    for row in edges.sort("a_shard", "a_doc").iter_rows(named=True):
        near.setdefault(row["b_doc"], (row["a_shard"], row["a_doc"], round(float(row["jaccard"]), 4)))
    threshold = state.settings.get("threshold", DocIndexSettings.near_duplicate_jaccard)
    return DocDecisions(
        state.version, threshold, dup, url_owner, near, {s: e["storage_id"] for s, e in state.registry.items()}
    )
