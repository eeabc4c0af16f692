"""MMC4's frequent-image rule: seeded sample, near-duplicate blocklist, multi-index lookup."""

import numpy as np
import polars as pl
import pytest

from mmc4_assets.dedup.blocklist import (
    BlocklistRule,
    band_layout,
    build_blocklist,
    load_blocklist,
    merge_sample,
    near_pairs,
    sample_shards,
    shard_sample_candidates,
    update_image_blocklist,
)
from mmc4_assets.dedup.corpus_state import TableReader, read_affected
from mmc4_assets.storage import ShardStore

RNG = np.random.default_rng(7)


def _flip(key: int, bits: int, rng) -> int:
    for b in rng.choice(64, bits, replace=False):
        key ^= 1 << int(b)
    return key


def test_bands_cover_64_bits_and_any_pair_within_5_shares_one():
    layout = band_layout(5)
    assert [w for _, w in layout] == [11, 11, 11, 11, 10, 10] and sum(w for _, w in layout) == 64
    base = RNG.integers(0, 2**63, 300, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    near = np.array([_flip(int(k), int(RNG.integers(0, 6)), RNG) for k in base], dtype=np.uint64)
    far = np.array([_flip(int(k), 6 + int(RNG.integers(0, 3)), RNG) for k in base], dtype=np.uint64)
    found = near_pairs(base, near, 5)
    assert set(zip(base.tolist(), near.tolist())) <= set(zip(found["key"].to_list(), found["other"].to_list()))
    assert not set(zip(base.tolist(), far.tolist())) & set(
        zip(*(near_pairs(base, far, 5)[c].to_list() for c in ("key", "other")))
    )


def test_near_pairs_equal_brute_force_on_clustered_hashes():
    centers = RNG.integers(0, 2**64 - 1, 20, dtype=np.uint64)
    keys = np.unique(
        np.array([_flip(int(c), int(RNG.integers(0, 9)), RNG) for c in centers for _ in range(15)], dtype=np.uint64)
    )
    brute = {(int(a), int(b)) for a in keys for b in keys if (int(a) ^ int(b)).bit_count() <= 5}
    got = near_pairs(keys, keys, 5)
    assert set(zip(got["key"].to_list(), got["other"].to_list())) == brute


def _sample(keys: list[int]) -> pl.DataFrame:
    return pl.DataFrame(
        {"priority": range(len(keys)), "key": keys, "shard": ["s"] * len(keys)},
        schema={"priority": pl.UInt64, "key": pl.UInt64, "shard": pl.String},
    )


def test_more_than_ten_near_duplicates_in_the_sample_blocks_a_hash():
    rule = BlocklistRule()
    ad = 0x00FF00FF00FF00FF
    variants = [_flip(ad, 1 + i % 5, np.random.default_rng(i)) for i in range(10)]
    eleven = _sample([ad, *variants] + [int(k) for k in RNG.integers(0, 2**63, 50, dtype=np.uint64)])
    # the ad and 10 variants: the ad has exactly 10 near-duplicates -> kept (MMC4: more than 10)
    assert ad not in build_blocklist(eleven, rule)["key"].to_list()
    twelve = pl.concat([eleven, _sample([ad])])  # a second exact copy: 11 duplicates
    blocked = build_blocklist(twelve, rule)
    assert ad in blocked["key"].to_list()
    assert blocked.filter(pl.col("key") == ad)["near_duplicates"].to_list() == [11]
    far = _flip(ad, 6, np.random.default_rng(99))  # 6 bits away: not a duplicate of anything
    assert far not in build_blocklist(pl.concat([twelve, _sample([far])]), rule)["key"].to_list()


def _counts(seed: int, n: int = 400, stock: list[int] | None = None) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 2**63, n, dtype=np.uint64).tolist() + (stock or [])
    n_docs = rng.integers(1, 4, n).tolist() + [1] * len(stock or [])  # each stock picture: one document
    return pl.DataFrame({"key": keys, "n": n_docs}, schema={"key": pl.UInt64, "n": pl.UInt32})


def test_sample_is_seeded_order_free_and_bounded():
    rule = BlocklistRule(sample_size=500)
    tables = {f"s{i}": _counts(i) for i in range(6)}
    one_by_one = pl.DataFrame(schema={"priority": pl.UInt64, "key": pl.UInt64, "shard": pl.String})
    for shard in reversed(list(tables)):
        one_by_one = merge_sample([one_by_one, shard_sample_candidates(shard, tables[shard], rule)], rule)
    at_once = sample_shards(sorted(tables), tables.__getitem__, rule, chunk=4)
    assert one_by_one.equals(at_once) and at_once.height == 500
    assert at_once["shard"].n_unique() == 6  # drawn across shards
    other_seed = sample_shards(sorted(tables), tables.__getitem__, BlocklistRule(sample_size=500, seed=1))
    assert not other_seed.equals(at_once)


@pytest.fixture
def stock_tables():
    ad = 0x1234567890ABCDEF
    variants = [_flip(ad, 2, np.random.default_rng(i)) for i in range(3)]
    return {f"s{i}": _counts(i, 200, [ad, *variants]) for i in range(8)}, ad


def test_batch_updates_equal_a_full_recompute_and_report_what_changed(tmp_path, stock_tables):
    tables, ad = stock_tables
    rule = BlocklistRule(sample_size=100_000)
    a, b = ShardStore(tmp_path / "a"), ShardStore(tmp_path / "b")
    first = update_image_blocklist(a, {s: 1 for s in list(tables)[:2]}, tables.__getitem__, rule)
    assert first.stats["blocklist_size"] == 0  # 2 shards: 8 near-copies, 7 duplicates each
    second = update_image_blocklist(a, {s: 1 for s in tables}, tables.__getitem__, rule)
    assert second.absorbed == list(tables)[2:] and not second.full_recompute
    assert second.stats["blocklist_changed"] and second.stats["blocklist_size"] == 4
    assert read_affected(a, "image_blocklist", second.affected_file) == sorted(tables)  # all republish
    full = update_image_blocklist(b, {s: 1 for s in tables}, tables.__getitem__, rule)
    blocklist, absorbed, settings = load_blocklist(a)
    assert settings["blocklist_id"] == load_blocklist(b)[2]["blocklist_id"] and absorbed == {s: 1 for s in tables}
    assert full.stats["sampled_images"] == second.stats["sampled_images"]
    near, far = f"{_flip(ad, 5, RNG):016x}", f"{_flip(ad, 12, RNG):016x}"
    assert blocklist.matches([f"{ad:016x}", near, far]) == {f"{ad:016x}", near}
    # a re-materialized shard: bottom-k cannot forget, so everything is re-sampled
    tables["s0"] = _counts(100, 200)
    redo = update_image_blocklist(a, {**{s: 1 for s in tables}, "s0": 2}, tables.__getitem__, rule)
    assert redo.full_recompute and redo.stats["shards"] == 8


def test_frozen_blocklist_stays_while_the_sample_grows(tmp_path, stock_tables):
    tables, _ = stock_tables
    store, rule = ShardStore(tmp_path), BlocklistRule()
    update_image_blocklist(store, {s: 1 for s in list(tables)[:2]}, tables.__getitem__, rule)
    frozen = update_image_blocklist(store, {s: 1 for s in tables}, tables.__getitem__, rule, frozen=True)
    assert frozen.stats["blocklist_size"] == 0 and not frozen.stats["blocklist_changed"]
    assert read_affected(store, "image_blocklist", frozen.affected_file) == sorted(list(tables)[2:])


def test_lookup_is_exact_against_brute_force():
    blocked = np.sort(RNG.integers(0, 2**63, 50, dtype=np.uint64))
    from mmc4_assets.dedup.blocklist import Blocklist

    bl = Blocklist(blocked, 5)
    shard = [int(RNG.integers(0, 2**63)) for _ in range(500)] + [_flip(int(k), 4, RNG) for k in blocked[:20]]
    hexes = [f"{k:016x}" for k in shard]
    brute = {h for h, k in zip(hexes, shard) if any((k ^ int(b)).bit_count() <= 5 for b in blocked)}
    assert bl.matches(hexes) == brute and len(brute) >= 20


def test_full_recompute_on_the_engine_equals_one_process(tmp_path, stock_tables):
    """The same code on a Dask LocalCluster: the same sample, document index and exact counts."""
    import random

    from mmc4_assets.dedup.doc_index import load_doc_decisions, update_doc_index
    from mmc4_assets.dedup.image_counts import load_image_counts, update_image_counts
    from mmc4_assets.engine import EngineSettings, dask_client
    from test_corpus_index import VOCAB, _fingerprints

    tables, _ = stock_tables
    data = ShardStore(tmp_path / "data")
    rng = random.Random(3)
    shared = " ".join(rng.choice(VOCAB) for _ in range(80))
    for i, (s, t) in enumerate(tables.items()):
        data.write_table("image_hash_counts", s, t)
        docs = [(f"https://{s}.test/{j}", " ".join(rng.choice(VOCAB) for _ in range(60))) for j in range(5)]
        docs += [("https://shared.test/", shared + f" tail {i}")]  # a URL duplicate and near-duplicates
        data.write_table("doc_fingerprints", s, _fingerprints(s, docs))
    latest = {s: 1 for s in tables}
    counts, fps = TableReader(data, "image_hash_counts", ("key", "n")), TableReader(data, "doc_fingerprints")
    rule = BlocklistRule(sample_size=300)
    here, there = ShardStore(tmp_path / "here"), ShardStore(tmp_path / "there")
    with dask_client(EngineSettings(n_workers=1, memory_limit="1GiB")) as client:
        for store, c in ((here, None), (there, client)):
            update_image_blocklist(store, latest, counts, rule, full_recompute=True, client=c)
            update_doc_index(store, latest, fps, full_recompute=True, client=c)
            update_image_counts(store, latest, counts, limit=2, full_recompute=True, client=c)
    assert load_blocklist(here)[2]["blocklist_id"] == load_blocklist(there)[2]["blocklist_id"]
    from mmc4_assets.dedup.corpus_state import CorpusState

    assert (
        CorpusState.load(here, "image_blocklist")
        .read("sample", {})
        .equals(CorpusState.load(there, "image_blocklist").read("sample", {}))
    )
    assert load_image_counts(here).over_limit == load_image_counts(there).over_limit != frozenset()
    for s in tables:
        a, b = load_doc_decisions(here, s), load_doc_decisions(there, s)
        assert a.near_duplicates == b.near_duplicates and a.url_owner == b.url_owner
    assert load_doc_decisions(here, "s7").near_duplicates  # the shared text: later copies are dropped
