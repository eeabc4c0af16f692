"""MMC4's frequent-image rule: a pHash blocklist learned from a seeded sample, applied to every shard.

MMC4 (paper, section 3) removed images "with more than 10 duplicates in a sample of 60K
images", duplicates meaning findimagedupes' pHash distance <= 5. Here:

- **Sample.** A *fetched image* is one distinct pHash of one document (what
  ``image_hash_counts`` counts: a row ``(key, n)`` is n such images). Each image gets a
  priority, a seeded 64-bit hash of ``(shard, pHash, j)``; the sample is the ``sample_size``
  images of smallest priority over all shards (bottom-k sampling). It depends only on the
  set of shards and the seed, never on the order they arrived in, and it merges: the
  sample of a corpus plus a batch of new shards is the bottom-k of the old sample and the
  new shards' images, so a batch costs O(new rows).
- **Blocklist.** A sampled pHash is blocked when more than ``max_near_duplicates`` *other*
  sampled images lie within ``max_distance`` bits of it (exact copies included).
- **Lookup.** Multi-index hashing: a 64-bit hash split into ``max_distance + 1`` bands
  (11, 11, 11, 11, 10, 10 bits for distance 5) shares at least one band exactly with any
  hash within ``max_distance`` bits (pigeonhole), so candidates come from an equi-join on
  (band, value) and are verified with a popcount. A shard is checked in O(shard + hits).

No Dagster import here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import polars as pl

from mmc4_assets.dedup.corpus_state import CorpusState, CorpusUpdate, plan
from mmc4_assets.engine import map_ordered
from mmc4_assets.mmc4_params import BlocklistRule
from mmc4_assets.storage import ShardStore

RULE = "mmc4_sample_blocklist"  # MMC4's rule (default)
EXACT_RULE = "exact_corpus_count"  # the stricter variant: exact pHash in > 10 documents corpus-wide
SAMPLE_SCHEMA = {"priority": pl.UInt64, "key": pl.UInt64, "shard": pl.String}
BLOCKLIST_SCHEMA = {"key": pl.UInt64, "near_duplicates": pl.UInt32}
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (uniform 64-bit output from structured input)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _shard_salt(shard: str, seed: int) -> np.uint64:
    # blake2b: stable across processes and versions (Python's hash() is salted per process)
    digest = hashlib.blake2b(f"{seed}:{shard}".encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "little"))


def shard_sample_candidates(shard: str, counts: pl.DataFrame, rule: BlocklistRule) -> pl.DataFrame:
    """This shard's images (``counts``: key, n) with their priorities, the ``sample_size`` smallest.

    No shard can put more than ``sample_size`` images into the sample, so the rest are
    dropped here: a batch holds at most sample_size rows per shard.
    """
    keys = counts["key"].cast(pl.UInt64).to_numpy()
    n = counts["n"].cast(pl.Int64).to_numpy()
    if keys.size == 0:
        return pl.DataFrame(schema=SAMPLE_SCHEMA)
    rep = np.repeat(keys, n)
    # j-th document holding the key in this shard: 0..n-1
    j = np.arange(rep.size, dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)
    with np.errstate(over="ignore"):
        priority = _mix(_mix(rep ^ _shard_salt(shard, rule.seed)) + j.astype(np.uint64) * _GOLDEN)
    frame = pl.DataFrame({"priority": priority, "key": rep}, schema={"priority": pl.UInt64, "key": pl.UInt64})
    if frame.height > rule.sample_size:
        frame = frame.top_k(rule.sample_size, by="priority", reverse=True)
    return frame.with_columns(shard=pl.lit(shard, pl.String)).select(list(SAMPLE_SCHEMA))


def merge_sample(parts: Iterable[pl.DataFrame], rule: BlocklistRule) -> pl.DataFrame:
    """Bottom-k of the union: the sample of every shard the parts came from."""
    frames = [p for p in parts if p.height]
    if not frames:
        return pl.DataFrame(schema=SAMPLE_SCHEMA)
    merged = pl.concat(frames)
    if merged.height > rule.sample_size:
        merged = merged.top_k(rule.sample_size, by="priority", reverse=True)
    # a canonical order: the same set of shards gives the same bytes
    return merged.sort("priority", "key", "shard").select(list(SAMPLE_SCHEMA))


def band_layout(max_distance: int, bits: int = 64) -> list[tuple[int, int]]:
    """(shift, width) of ``max_distance + 1`` contiguous bands covering ``bits`` bits."""
    count = max_distance + 1
    widths = [bits // count + (1 if i < bits % count else 0) for i in range(count)]
    shifts = np.concatenate([[0], np.cumsum(widths)[:-1]]).tolist()
    return [(int(s), int(w)) for s, w in zip(shifts, widths)]


def _within(a: pl.Series, b: pl.Series, max_distance: int) -> np.ndarray:
    return np.bitwise_count(a.to_numpy() ^ b.to_numpy()) <= max_distance


def _band(keys: np.ndarray, shift: int, width: int) -> np.ndarray:
    return (keys >> np.uint64(shift)) & np.uint64((1 << width) - 1)


def near_pairs(left: np.ndarray, right: np.ndarray, max_distance: int, *, ordered: bool = False) -> pl.DataFrame:
    """Every (key, other) with key from ``left``, other from ``right`` and distance <= max_distance.

    Distinct keys in, each pair once (a pair sharing several bands is deduplicated). One band
    at a time: candidates of a band are verified (popcount) before the next band is joined,
    so memory holds one band's candidates, not all six. ``ordered`` keeps only key < other
    (a self-join: half the pairs).
    """
    left, right = np.asarray(left, dtype=np.uint64), np.asarray(right, dtype=np.uint64)
    found = []
    for shift, width in band_layout(max_distance):
        a = pl.DataFrame({"key": left, "band": _band(left, shift, width)})
        b = pl.DataFrame({"other": right, "band": _band(right, shift, width)})
        cand = a.join(b, on="band").select("key", "other")
        if ordered:
            cand = cand.filter(pl.col("key") < pl.col("other"))
        if cand.height:
            found.append(cand.filter(pl.Series(_within(cand["key"], cand["other"], max_distance))))
        del cand
    if not found:
        return pl.DataFrame(schema={"key": pl.UInt64, "other": pl.UInt64})
    return pl.concat(found).unique()


def build_blocklist(sample: pl.DataFrame, rule: BlocklistRule) -> pl.DataFrame:
    """Sampled pHashes with more than ``max_near_duplicates`` other sampled images within distance."""
    counts = sample.group_by("key").agg(m=pl.len().cast(pl.UInt32))
    if counts.height == 0:
        return pl.DataFrame(schema=BLOCKLIST_SCHEMA)
    keys = counts["key"].to_numpy()
    half = near_pairs(keys, keys, rule.max_distance, ordered=True)
    # each unordered pair counts for both ends
    pairs = pl.concat([half, half.select(key="other", other="key")])
    others = pairs.join(counts.rename({"key": "other"}), on="other").group_by("key").agg(near=pl.col("m").sum())
    out = (
        counts.join(others, on="key", how="left")
        # exact copies are duplicates too: m - 1 of them besides the image itself
        .select("key", near_duplicates=(pl.col("m") - 1 + pl.col("near").fill_null(0)).cast(pl.UInt32))
        .filter(pl.col("near_duplicates") > rule.max_near_duplicates)
        .sort("key")
    )
    return out.cast(BLOCKLIST_SCHEMA)


@dataclass(frozen=True)
class Blocklist:
    """The blocked pHashes and the distance within which they drop an image."""

    keys: np.ndarray  # u64, sorted
    max_distance: int = BlocklistRule.max_distance
    version: int = 0
    rule: str = RULE

    @property
    def size(self) -> int:
        return int(self.keys.size)

    def matches(self, phashes: Iterable[str]) -> frozenset[str]:
        """The given hex pHashes within ``max_distance`` of a blocked one: O(len + hits)."""
        distinct = sorted({p for p in phashes if p})
        if not distinct or not self.keys.size:
            return frozenset()
        values = np.array([int(p, 16) for p in distinct], dtype=np.uint64)
        hit = near_pairs(values, self.keys, self.max_distance)["key"].unique()
        hit_set = set(hit.to_list())
        return frozenset(p for p, v in zip(distinct, values.tolist()) if v in hit_set)


def blocklist_id(blocklist: pl.DataFrame, rule: BlocklistRule) -> str:
    """Content hash of the blocked keys and the rule: equal ids, equal decisions."""
    h = hashlib.sha256(repr(sorted(rule.as_dict().items())).encode())
    h.update(np.ascontiguousarray(blocklist["key"].to_numpy(), dtype=np.uint64).tobytes())
    return h.hexdigest()[:16]


# -- the corpus-wide asset: sample and blocklist as versioned corpus state -----------------

NAME = "image_blocklist"


def sample_chunk(shards: list[str], read: Callable[[str], pl.DataFrame], rule: BlocklistRule) -> pl.DataFrame:
    """The sample of a group of shards (one engine task): at most sample_size rows."""
    out = pl.DataFrame(schema=SAMPLE_SCHEMA)
    for shard in shards:
        out = merge_sample([out, shard_sample_candidates(shard, read(shard), rule)], rule)
    return out


def sample_shards(
    shards: list[str], read: Callable[[str], pl.DataFrame], rule: BlocklistRule, client=None, chunk: int = 64
) -> pl.DataFrame:
    """The bottom-k sample of ``shards``: chunks of shards sampled on the engine, merged here.

    Memory here: two chunk samples (<= 2 x sample_size rows) whatever the corpus size.
    """
    groups = [shards[i : i + chunk] for i in range(0, len(shards), chunk)]
    sample = pl.DataFrame(schema=SAMPLE_SCHEMA)
    for part in map_ordered(client, sample_chunk, groups, read, rule):
        sample = merge_sample([sample, part], rule)
    return sample


def update_image_blocklist(
    store: ShardStore,
    latest: dict[str, int | None],
    read_counts: Callable[[str], pl.DataFrame],
    rule: BlocklistRule = BlocklistRule(),
    *,
    full_recompute: bool = False,
    frozen: bool = False,
    client=None,
) -> CorpusUpdate:
    """Bring the sample and blocklist to ``latest`` (shard -> version of its image_hash_counts).

    New shards are merged into the stored sample (O(new rows)). A re-materialized or removed
    shard, a change of rule, or ``full_recompute`` re-samples every shard (bottom-k cannot
    forget rows), on the engine when ``client`` is given. ``frozen`` keeps the blocklist as it
    is while the sample goes on absorbing shards (pin it once the sample is representative).
    The affected list is every absorbed shard when the blocklist changed, else the new ones.
    """
    state = CorpusState.load(store, NAME)
    settings = rule.as_dict()
    full_recompute = full_recompute or bool(state.version and {k: state.settings.get(k) for k in settings} != settings)
    changes, removed = plan(state, latest, full_recompute)
    if not changes and not removed:
        return CorpusUpdate(state.version, [], [], [], False, None, _stats(state, rule, frozen))
    if not full_recompute and (removed or any(s in state.registry for s in changes)):
        full_recompute = True
        changes, removed = plan(state, latest, True)
    old_blocklist = state.read("blocklist", BLOCKLIST_SCHEMA)
    old_id = state.settings.get("blocklist_id")
    if full_recompute:
        state = state.fresh(settings)
        sample = sample_shards(sorted(changes), read_counts, rule, client)
    else:
        sample = merge_sample(
            [state.read("sample", SAMPLE_SCHEMA), sample_shards(sorted(changes), read_counts, rule, client)], rule
        )
    for shard, version in changes.items():
        state.shard_id(shard)
        state.registry[shard]["storage_id"] = version
    for shard in removed:
        state.registry.pop(shard, None)
    keep = frozen and old_id is not None
    blocklist = old_blocklist if keep else build_blocklist(sample, rule)
    new_id = blocklist_id(blocklist, rule)
    state.stage("sample", sample)
    state.stage("blocklist", blocklist)
    changed = old_id is not None and new_id != old_id
    # a changed blocklist may drop (or restore) an image on any shard: all republish; otherwise
    # only the new shards are published from this version
    publish = set(state.registry) if changed else set(changes)
    version = state.commit(publish, **settings, blocklist_id=new_id, frozen=keep)
    return CorpusUpdate(
        version,
        sorted(changes),
        removed,
        sorted(state.registry) if changed else [],
        full_recompute,
        state.affected_file,
        {
            **_stats(state, rule, frozen),
            "blocklist_changed": changed,
            "blocked_added": int((~blocklist["key"].is_in(old_blocklist["key"].implode())).sum()),
            "blocked_removed": int((~old_blocklist["key"].is_in(blocklist["key"].implode())).sum()),
        },
    )


def _stats(state: CorpusState, rule: BlocklistRule, frozen: bool) -> dict:
    sample = state.read("sample", SAMPLE_SCHEMA)
    return {
        "rule": RULE,
        "shards": len(state.registry),
        "sample_size": rule.sample_size,
        "sampled_images": sample.height,
        "sampled_shards": sample["shard"].n_unique(),
        "blocklist_size": state.read("blocklist", BLOCKLIST_SCHEMA).height,
        "blocklist_id": state.settings.get("blocklist_id", ""),
        "frozen": frozen,
        "max_near_duplicates": rule.max_near_duplicates,
        "max_distance": rule.max_distance,
        "seed": rule.seed,
    }


def load_blocklist(store: ShardStore) -> tuple[Blocklist, dict[str, int | None], dict]:
    """The current blocklist, the shards it absorbed (shard -> storage id), and its settings."""
    state = CorpusState.load(store, NAME)
    keys = state.read("blocklist", BLOCKLIST_SCHEMA)["key"].to_numpy()
    blocklist = Blocklist(np.sort(keys), state.settings.get("max_distance", BlocklistRule.max_distance), state.version)
    return blocklist, {s: e["storage_id"] for s, e in state.registry.items()}, dict(state.settings)
