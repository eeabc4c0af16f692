"""Cross-shard image frequency: MMC4 drops images whose pHash appears more than 10 times.

What is counted: for every document, the distinct pHashes of its images that were fetched
(``fetched_images.status == "ok"``), i.e. before the CLIP similarity filter, as in MMC4
where this rule belongs to the dedup step right after fetching. A pHash counts once per
document; 11 documents carrying the same picture put it over the limit of 10. Equality is
exact on the 64-bit pHash (near-equal hashes across documents are counted apart).

This is the ``exact_corpus_count`` variant, stricter than MMC4; MMC4's own rule (the
default) is the sample-based blocklist in ``dedup.blocklist``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import polars as pl

from mmc4_assets.dedup.corpus_state import (
    POSTINGS,
    BucketSpill,
    CorpusState,
    CorpusUpdate,
    flipped_shards,
    over_set_changes,
    plan,
    update_key_index,
    update_over_limit,
)
from mmc4_assets.dedup.keys import phash_keys
from mmc4_assets.engine import map_ordered
from mmc4_assets.mmc4_params import ExactCountSettings
from mmc4_assets.storage import ShardStore

NAME = "image_counts"
COUNTER = "phash"
CONTRIBUTION_SCHEMA = {"key": pl.UInt64, "n": pl.UInt32}


def image_hash_contribution(fetched: pl.DataFrame) -> pl.DataFrame:
    """(key = pHash as u64, n = documents of the shard holding it) over fetched images."""
    return (
        fetched.lazy()
        .filter((pl.col("status") == "ok") & pl.col("phash").is_not_null())
        .select("doc_id", key=phash_keys(pl.col("phash")))
        .unique()
        .group_by("key")
        .agg(n=pl.len().cast(pl.UInt32))
        .sort("key")
        .collect()
    )


def _spill_added(
    state: CorpusState, shards: Iterable[str], read: Callable[[str], pl.DataFrame], spill: BucketSpill, client=None
) -> BucketSpill:
    """Every new shard's rows, routed to their buckets on local disk (memory: one flush).

    With an engine client the shards are read on the cluster, a few in flight at a time.
    """
    shards = list(shards)
    ids = [state.shard_id(s) for s in shards]  # assigned in order: the same ids with or without an engine
    for shard_id, rows in zip(ids, map_ordered(client, read, shards)):
        spill.append(rows.select("key", "n").with_columns(shard=pl.lit(shard_id, pl.UInt32)))
    return spill


def update_image_counts(
    store: ShardStore,
    latest: dict[str, int | None],
    read_contribution: Callable[[str], pl.DataFrame],
    *,
    limit: int = ExactCountSettings.max_docs_per_image,
    buckets: int = 16,
    full_recompute: bool = False,
    client=None,
) -> CorpusUpdate:
    """Bring the corpus counts to ``latest`` (shard -> version of its contribution).

    Only shards that are new or whose version differs from the absorbed one are read;
    shards missing from ``latest`` are forgotten. A change of limit or buckets, or
    ``full_recompute``, rebuilds from every shard in ``latest``.
    """
    state = CorpusState.load(store, NAME)
    settings = {"limit": limit, "buckets": buckets}
    full_recompute = full_recompute or bool(state.version and {k: state.settings.get(k) for k in settings} != settings)
    changes, removed = plan(state, latest, full_recompute)
    if not changes and not removed:
        return CorpusUpdate(state.version, [], [], [], False, None, {"shards": len(state.registry)})
    id_to_shard = state.shard_keys()
    old_over = state.read(f"{COUNTER}.over", POSTINGS)
    if full_recompute:
        state = state.fresh(settings)
    replaced = [state.registry[s]["id"] for s in (*changes, *removed) if s in state.registry]
    with BucketSpill() as added:
        _spill_added(state, sorted(changes), read_contribution, added, client)
        if not full_recompute:
            id_to_shard.update(state.shard_keys())
        update = update_key_index(state, COUNTER, buckets, replaced, added, limit)
    over = update_over_limit(state, COUNTER, update, limit)
    if full_recompute:  # ids were renumbered: compare the over-limit sets themselves
        affected_set = over_set_changes(old_over, id_to_shard, over, state.shard_keys())
    else:
        affected_set = {id_to_shard[i] for i in flipped_shards(update, limit)}
    affected = sorted(affected_set - set(removed))
    for s, version in changes.items():
        state.registry[s]["storage_id"] = version
    for s in removed:
        state.registry.pop(s, None)
    # the file lists every shard to (re)publish: affected ones and the newly absorbed
    version = state.commit(set(affected) | set(changes), **settings)
    return CorpusUpdate(
        version,
        sorted(changes),
        removed,
        affected,
        full_recompute,
        state.affected_file,
        {
            "shards": len(state.registry),
            "index_rows": update.rows,
            "buckets_rewritten": update.buckets_rewritten,
            "images_over_limit": over.height,
            "rows_added": added.rows,
        },
    )


@dataclass(frozen=True)
class ImageCounts:
    """What a shard's publication needs: the pHashes over the limit, as of one version."""

    version: int
    limit: int
    over_limit: frozenset[int]
    absorbed: dict[str, int | None]  # shard -> storage id of the absorbed contribution

    def is_frequent(self, phash: str) -> bool:
        return int(phash, 16) in self.over_limit


def load_image_counts(store: ShardStore) -> ImageCounts:
    state = CorpusState.load(store, NAME)
    over = state.read(f"{COUNTER}.over", {"key": pl.UInt64})
    limit = state.settings.get("limit", ExactCountSettings.max_docs_per_image)
    return ImageCounts(
        state.version, limit, frozenset(over["key"].to_list()), {s: e["storage_id"] for s, e in state.registry.items()}
    )
