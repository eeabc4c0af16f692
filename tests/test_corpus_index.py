"""Corpus-wide state without Dagster: image counts (the > 10 rule), URL duplicates, near-duplicate texts."""

import random

import numpy as np
import polars as pl
import pytest

from mmc4_assets.dedup.corpus_state import CorpusState, read_affected
from mmc4_assets.dedup.doc_index import candidate_fingerprints, load_doc_decisions, other_fingerprints, update_doc_index
from mmc4_assets.dedup.image_counts import image_hash_contribution, load_image_counts, update_image_counts
from mmc4_assets.dedup.keys import url_key
from mmc4_assets.dedup.minhash import MinHashScheme, band_keys, estimated_jaccard, signatures
from mmc4_assets.storage import ShardStore
from test_s3_support import s3_server  # noqa: F401  (fixture)

AD = "00000000000000ad"


def _fetched(docs_with_ad: int, unique: int = 2, shard: str = "s") -> pl.DataFrame:
    """fetched_images rows: docs_with_ad documents each holding the ad twice, plus unique images."""
    rows = []
    for d in range(docs_with_ad + unique):
        doc = f"{shard}:{d}"
        if d < docs_with_ad:
            rows += [{"doc_id": doc, "status": "ok", "phash": AD}] * 2  # twice in one doc counts once
        else:
            rows.append({"doc_id": doc, "status": "ok", "phash": f"{hash((shard, d)) & (2**64 - 1):016x}"})
        rows.append({"doc_id": doc, "status": "http_404", "phash": None})
    return pl.DataFrame(rows, schema={"doc_id": pl.String, "status": pl.String, "phash": pl.String})


class Reader:
    """Per-shard tables, counting which shards the aggregate reads."""

    def __init__(self, tables):
        self.tables, self.reads = tables, []

    def __call__(self, shard):
        self.reads.append(shard)
        return self.tables[shard]


def test_contribution_counts_documents_not_occurrences():
    c = image_hash_contribution(_fetched(3, unique=1))
    assert c.filter(pl.col("key") == int(AD, 16))["n"].to_list() == [3]
    assert c.height == 2


def test_ten_documents_kept_eleventh_drops_across_shards(tmp_path):
    store = ShardStore(tmp_path)
    tables = {
        "a": image_hash_contribution(_fetched(4, shard="a")),
        "b": image_hash_contribution(_fetched(3, shard="b")),
        "c": image_hash_contribution(_fetched(3, shard="c")),
    }
    read = Reader(tables)
    versions = {}
    for i, shard in enumerate(["a", "b", "c"]):  # shards arrive one by one
        versions[shard] = i
        update = update_image_counts(store, dict(versions), read, buckets=4)
    assert not load_image_counts(store).is_frequent(AD)  # 4 + 3 + 3 = 10: kept
    assert update.affected_shards == []
    tables["d"] = image_hash_contribution(_fetched(1, shard="d"))
    update = update_image_counts(store, {**versions, "d": 9}, read, buckets=4)
    assert load_image_counts(store).is_frequent(AD)  # 11: dropped everywhere
    assert update.affected_shards == ["a", "b", "c", "d"]
    assert read_affected(store, "image_counts", update.affected_file) == ["a", "b", "c", "d"]
    assert read.reads == ["a", "b", "c", "d"]  # each shard read once: adding d read only d


def test_rematerialized_and_removed_shards_replace_their_contribution(tmp_path):
    store = ShardStore(tmp_path)
    tables = {
        "a": image_hash_contribution(_fetched(6, shard="a")),
        "b": image_hash_contribution(_fetched(5, shard="b")),
    }
    update_image_counts(store, {"a": 1, "b": 1}, Reader(tables), buckets=4)
    assert load_image_counts(store).is_frequent(AD)
    tables["b"] = image_hash_contribution(_fetched(4, shard="b"))  # b re-materialized: 6 + 4
    read = Reader(tables)
    update = update_image_counts(store, {"a": 1, "b": 2}, read, buckets=4)
    assert read.reads == ["b"] and not load_image_counts(store).is_frequent(AD)
    assert update.affected_shards == ["a", "b"]
    nothing = update_image_counts(store, {"a": 1, "b": 2}, read, buckets=4)
    assert nothing.version == update.version and nothing.absorbed == []  # no change, no new version
    gone = update_image_counts(store, {"a": 1}, read, buckets=4)  # b's partition deleted
    assert gone.removed == ["b"] and set(load_image_counts(store).absorbed) == {"a"}


def test_full_recompute_matches_incremental(tmp_path):
    rng = random.Random(3)
    tables = {}
    for s in range(6):
        rows = [{"doc_id": f"{s}:{d}", "status": "ok", "phash": f"{rng.randrange(40):016x}"} for d in range(60)]
        tables[f"s{s}"] = image_hash_contribution(pl.DataFrame(rows))
    inc, full = ShardStore(tmp_path / "inc"), ShardStore(tmp_path / "full")
    versions = {}
    for shard in tables:
        versions[shard] = 1
        update_image_counts(inc, dict(versions), Reader(tables), limit=8, buckets=4)
    update_image_counts(full, versions, Reader(tables), limit=8, buckets=4, full_recompute=True)
    assert load_image_counts(inc).over_limit == load_image_counts(full).over_limit
    assert load_image_counts(inc).over_limit  # the test means something
    # a killed update leaves only the committed version's files behind
    state = CorpusState.load(inc, "image_counts")
    names = {p.name for p in (tmp_path / "inc" / "corpus" / "image_counts").iterdir() if p.suffix == ".parquet"}
    assert names == set(state.files.values())


# -- documents ---------------------------------------------------------------------------
VOCAB = [f"w{i}" for i in range(3000)]


def _text(rng, n=60):
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def _fingerprints(shard, docs):
    """docs: (url, text or None for a non-candidate)."""
    frame = pl.DataFrame(
        {
            "doc_id": [f"{shard}:{i}" for i in range(len(docs))],
            "url": [u for u, _ in docs],
            "text_list": [[t] if t else [""] for _, t in docs],
        }
    )
    cand = frame.filter(pl.Series([t is not None for _, t in docs]))
    other = frame.filter(pl.Series([t is None for _, t in docs]))
    return pl.concat([candidate_fingerprints(cand), other_fingerprints(other)])


def test_minhash_estimates_jaccard_and_is_batch_independent():
    scheme = MinHashScheme()
    rng = random.Random(0)
    a = _text(rng, 200)
    words = a.split()
    b = " ".join(words[:190] + ["x"] * 10)
    together = signatures([a, b, "", "tiny text"], scheme)
    alone = signatures([b], scheme)
    assert (together[1] == alone[0]).all()  # a signature does not depend on its batch
    assert estimated_jaccard(together[0], together[0]) == 1.0
    assert 0.8 < estimated_jaccard(together[0], together[1]) < 1.0
    assert (together[2] == np.iinfo(np.uint32).max).all()  # no words: matches nothing
    keys = band_keys(together, scheme)
    assert keys.shape == (4, scheme.bands) and len(set(keys[0])) == scheme.bands
    assert scheme.candidate_probability(0.8) > 0.9 and scheme.candidate_probability(0.5) < 0.1


def test_near_duplicates_across_shards_keep_the_smallest_shard_key(tmp_path):
    store = ShardStore(tmp_path)
    rng = random.Random(1)
    base = _text(rng, 120)
    near = base + " one more closing remark"  # Jaccard ~0.97
    tables = {
        "b": _fingerprints("b", [("https://b.test/1", near), ("https://b.test/2", _text(rng))]),
        "c": _fingerprints("c", [("https://c.test/1", _text(rng))]),
        "a": _fingerprints("a", [("https://a.test/1", base)]),
    }
    read = Reader(tables)
    update_doc_index(store, {"b": 1, "c": 1}, read)
    assert load_doc_decisions(store, "b").near_duplicates == {}
    # a arrives later but sorts first: b's copy becomes the duplicate, and b must republish
    update = update_doc_index(store, {"b": 1, "c": 1, "a": 1}, read)
    assert load_doc_decisions(store, "b").near_duplicates.keys() == {"b:0"}
    assert load_doc_decisions(store, "b").near_duplicates["b:0"][:2] == ("a", "a:0")
    assert load_doc_decisions(store, "a").near_duplicates == {}
    assert update.affected_shards == ["b"]
    assert sorted(read.reads[2:]) == ["a", "b"]  # a's fingerprints, and b's (it shares a band); never c
    assert update.stats["shards_read_for_verification"] == 2
    # same result from scratch, in any order
    fresh = ShardStore(tmp_path / "fresh")
    update_doc_index(fresh, {"a": 1, "b": 1, "c": 1}, Reader(tables), full_recompute=True)
    assert load_doc_decisions(fresh, "b").near_duplicates == load_doc_decisions(store, "b").near_duplicates


def test_rewritten_text_is_not_a_near_duplicate(tmp_path):
    # the sample's two crawls of the lemon-bars page: word 5-gram Jaccard 0.69 < 0.8
    one = (
        "These lemon bars have a buttery shortbread base and a sharp, silky filling. Press the crust into "
        "a lined tin and bake it until it is just golden. Whisk four eggs with sugar, lemon juice, zest and "
        "a little flour. Pour the filling over the hot crust and bake for another 20 minutes. Cool "
        "completely, then dust with powdered sugar before slicing."
    )
    two = one.replace("20 minutes", "20 to 25 minutes").replace(
        "before slicing.", ". Update: several readers asked, and yes, limes work just as well!"
    )
    store = ShardStore(tmp_path)
    tables = {"a": _fingerprints("a", [("u", one)]), "b": _fingerprints("b", [("u", two)])}
    update_doc_index(store, {"a": 1, "b": 1}, Reader(tables))
    assert load_doc_decisions(store, "b").near_duplicates == {}


def test_url_duplicates_across_shards_flag_every_copy_and_name_an_owner(tmp_path):
    store = ShardStore(tmp_path)
    rng = random.Random(2)
    tables = {
        "a": _fingerprints("a", [("https://x.test/", None), ("https://y.test/", _text(rng))]),
        "b": _fingerprints("b", [("https://x.test/", _text(rng)), ("https://y.test/", _text(rng))]),
    }
    update = update_doc_index(store, {"a": 1, "b": 1}, Reader(tables))
    x, y = url_key("https://x.test/"), url_key("https://y.test/")
    dec = load_doc_decisions(store, "b", [x, y])
    assert set(dec.duplicated_urls.to_list()) == {x, y}  # any C4 copy sets the flag
    # only candidates can own a URL: x's only candidate is on b, y's first candidate is on a
    assert dec.url_owner == {y: "a"}
    assert update.affected_shards == ["a", "b"]


def test_scheme_or_threshold_change_forces_a_full_recompute(tmp_path):
    store = ShardStore(tmp_path)
    rng = random.Random(4)
    tables = {"a": _fingerprints("a", [("u", _text(rng))])}
    update_doc_index(store, {"a": 1}, Reader(tables))
    again = update_doc_index(store, {"a": 1}, Reader(tables), threshold=0.9)
    assert again.full_recompute and again.absorbed == ["a"]


@pytest.mark.parametrize("buckets", [1, 8])
def test_bucket_count_does_not_change_results(tmp_path, buckets):
    store = ShardStore(tmp_path)
    tables = {s: image_hash_contribution(_fetched(6, shard=s)) for s in ("a", "b")}
    update_image_counts(store, {"a": 1, "b": 1}, Reader(tables), buckets=buckets)
    assert load_image_counts(store).is_frequent(AD)


def test_an_index_that_outgrows_its_buckets_splits_them(tmp_path, monkeypatch):
    import mmc4_assets.dedup.corpus_state as cs

    monkeypatch.setattr(cs, "MAX_BUCKET_ROWS", 20)  # a few shards overflow 2 buckets
    tables = {f"s{i}": image_hash_contribution(_fetched(2 + i % 3, unique=8, shard=f"s{i}")) for i in range(6)}
    grown = ShardStore(tmp_path / "grown")
    for i in range(1, 7):  # shard by shard: 2 -> 4 -> 8 buckets as rows accumulate
        update = update_image_counts(grown, {f"s{j}": 1 for j in range(i)}, Reader(tables), buckets=2)
    state = CorpusState.load(grown, "image_counts")
    assert state.settings["phash.buckets"] >= 4 and state.settings["phash.rows"] == update.stats["index_rows"]
    rows = pl.concat([state.read(f"phash.b{b:04d}", cs.KEY_ROWS) for b in range(state.settings["phash.buckets"])])
    assert all(
        (k % state.settings["phash.buckets"]) == b
        for b in range(state.settings["phash.buckets"])
        for k in state.read(f"phash.b{b:04d}", cs.KEY_ROWS)["key"].to_list()
    )
    assert rows.height == sum(t.height for t in tables.values())  # every shard's rows exactly once
    fresh = ShardStore(tmp_path / "fresh")
    update_image_counts(fresh, {f"s{j}": 1 for j in range(6)}, Reader(tables), buckets=2)
    assert load_image_counts(fresh).over_limit == load_image_counts(grown).over_limit and load_image_counts(
        grown
    ).is_frequent(AD)


def test_corpus_state_on_an_object_store(s3_server):  # noqa: F811  (the fixture)
    # listing, sweeping and versioned reads through fsspec, not the local filesystem
    s3_server.create_bucket("corpus")
    store = ShardStore("s3://corpus/root", s3_server.storage_options())
    tables = {
        "a": image_hash_contribution(_fetched(6, shard="a")),
        "b": image_hash_contribution(_fetched(5, shard="b")),
    }
    update_image_counts(store, {"a": 1}, Reader(tables), buckets=2)
    update = update_image_counts(store, {"a": 1, "b": 1}, Reader(tables), buckets=2)
    assert load_image_counts(store).is_frequent(AD) and update.affected_shards == ["a", "b"]
    keys = s3_server.keys("corpus", "root/corpus/image_counts/")
    state = CorpusState.load(store, "image_counts")
    assert {k.rsplit("/", 1)[1] for k in keys if k.endswith(".parquet")} == set(state.files.values())


def test_a_concurrent_commit_is_refused_not_lost(tmp_path):
    from mmc4_assets.dedup.corpus_state import ConcurrentUpdate

    store = ShardStore(tmp_path)
    tables = {
        "a": image_hash_contribution(_fetched(2, shard="a")),
        "b": image_hash_contribution(_fetched(2, shard="b")),
    }

    def racing_read(shard):  # another run commits while this update reads its shard
        update_image_counts(store, {"b": 1}, Reader(tables), buckets=2)
        return tables[shard]

    with pytest.raises(ConcurrentUpdate):
        update_image_counts(store, {"a": 1}, racing_read, buckets=2)
    assert set(load_image_counts(store).absorbed) == {"b"}  # the other run's commit stands
    update_image_counts(store, {"a": 1, "b": 1}, Reader(tables), buckets=2)  # the retry
    assert set(load_image_counts(store).absorbed) == {"a", "b"}


# -- the bucketed near-duplicate check against the in-memory one it replaced ---------------
def _in_memory_edges(shared, changed, id_to_shard, read, threshold, scheme):
    """The pair check as it was before it streamed by band-key bucket (every shared document's
    band rows and signature in memory at once): the reference the bucketed one must equal."""
    from mmc4_assets.dedup.doc_index import EDGES_SCHEMA, doc_band_rows

    keys_by_shard = (
        shared.explode("shards")
        .group_by("shards")
        .agg("key")
        .with_columns(shard=pl.col("shards").replace_strict(id_to_shard, return_dtype=pl.String))
    )
    rows, sigs = [], {}
    for shard, keys in zip(keys_by_shard["shard"], keys_by_shard["key"]):
        fp = read(shard)
        bands = doc_band_rows(fp, scheme).join(
            pl.DataFrame({"key": keys}, schema={"key": pl.UInt64}), on="key", how="semi"
        )
        held = fp.filter(pl.col("doc_id").is_in(bands["doc_id"].unique().implode()))
        sigs[shard] = dict(zip(held["doc_id"].to_list(), held["signature"].to_numpy()))
        rows.append(bands.with_columns(shard=pl.lit(shard)))
    long = pl.concat(rows)
    pairs = (
        long.join(long, on="key", suffix="_b")
        .filter(
            (pl.col("shard") < pl.col("shard_b"))
            | ((pl.col("shard") == pl.col("shard_b")) & (pl.col("doc_id") < pl.col("doc_id_b")))
        )
        .filter(pl.col("shard").is_in(list(changed)) | pl.col("shard_b").is_in(list(changed)))
        .select(a_shard="shard", a_doc="doc_id", b_shard="shard_b", b_doc="doc_id_b")
        .unique()
    )
    a = np.stack([sigs[s][d] for s, d in zip(pairs["a_shard"], pairs["a_doc"])])
    b = np.stack([sigs[s][d] for s, d in zip(pairs["b_shard"], pairs["b_doc"])])
    return (
        pairs.with_columns(jaccard=pl.Series(estimated_jaccard(a, b), dtype=pl.Float32))
        .filter(pl.col("jaccard") >= threshold)
        .cast(EDGES_SCHEMA)
    ), len(sigs)


def _signed_shards(seed=5, shards=6, docs=40):
    """Fingerprints with random signatures and near-copies across shards: exact copies (all 16
    bands shared), close ones (Jaccard ~0.95), copies sharing exactly one band (one entry redrawn
    in each other band: Jaccard 0.88, found in one bucket only) and far ones (~0.7: they share
    bands, fail the check)."""
    from mmc4_assets.dedup.doc_index import SCHEME, fingerprint_schema

    rng = np.random.default_rng(seed)
    sigs = {s: rng.integers(0, 2**32, (docs, SCHEME.num_perm), dtype=np.uint32) for s in range(shards)}
    for s in range(1, shards):
        for j, redraw in enumerate([0.0, 0.0, 0.05, 0.05, 0.05, 0.3, 0.3, 0.3]):
            src = sigs[int(rng.integers(0, s))][int(rng.integers(0, 4))]  # a few popular originals
            sigs[s][j] = src
            flip = rng.random(SCHEME.num_perm) < redraw
            sigs[s][j, flip] = rng.integers(0, 2**32, flip.sum(), dtype=np.uint32)
        for j in range(8, 20):  # one band kept, one entry of every other band redrawn
            sigs[s][j] = sigs[int(rng.integers(0, s))][int(rng.integers(4, docs))]
            kept = int(rng.integers(0, SCHEME.bands))
            cols = [b * SCHEME.rows + int(rng.integers(0, SCHEME.rows)) for b in range(SCHEME.bands) if b != kept]
            sigs[s][j, cols] += np.uint32(1)
    return {
        f"s{s}": pl.DataFrame(
            {
                "doc_id": [f"s{s}:{d}" for d in range(docs)],
                "url_key": np.arange(docs, dtype=np.uint64) + 1000 * s,
                "candidate": [True] * docs,
                "signature": pl.Series(sigs[s], dtype=fingerprint_schema()["signature"]),
            },
            schema=fingerprint_schema(),
        )
        for s in range(shards)
    }


@pytest.mark.parametrize("changed", [["s0", "s1", "s2", "s3", "s4", "s5"], ["s2", "s5"]])
def test_bucketed_pair_check_equals_the_in_memory_one(monkeypatch, changed):
    import mmc4_assets.dedup.doc_index as di
    from mmc4_assets.dedup.corpus_state import BucketSpill

    tables = _signed_shards()
    ids = {shard: i for i, shard in enumerate(tables)}
    id_to_shard = {i: shard for shard, i in ids.items()}
    band = pl.concat([di.doc_band_rows(fp).with_columns(shard=pl.lit(ids[s], pl.UInt32)) for s, fp in tables.items()])
    postings = band.group_by("key").agg(n=pl.len().cast(pl.UInt32), shards=pl.col("shard").unique().sort())
    monkeypatch.setattr(di, "PAIR_BUCKET_ROWS", 100)  # the pair check splits into 4-8 buckets
    with BucketSpill(di.SHARED_ROWS, by="shard") as shared:
        di.shared_key_sink(shared, [ids[s] for s in changed])(postings)
        streamed, read_streamed = di.near_duplicate_edges(shared, changed, id_to_shard, Reader(tables), 0.8)
    fresh = pl.Series([ids[s] for s in changed], dtype=pl.UInt32).implode()
    reference, read_reference = _in_memory_edges(
        postings.filter((pl.col("n") >= 2) & pl.col("shards").list.eval(pl.element().is_in(fresh)).list.any()),
        set(changed),
        id_to_shard,
        Reader(tables),
        0.8,
        di.SCHEME,
    )
    order = ["a_shard", "a_doc", "b_shard", "b_doc"]
    assert streamed.sort(order).equals(reference.sort(order))
    assert read_streamed == read_reference
    # the generator made what the check must tell apart: exact and close copies kept, far ones refused
    assert reference.height >= 10 and (reference["jaccard"] == 1.0).any() and (reference["jaccard"] < 1.0).any()
    assert (reference["jaccard"] == np.float32(113 / 128)).any()  # a copy sharing a single band
    shared_pairs = band.join(band, on="key").filter(pl.col("doc_id") < pl.col("doc_id_right"))
    assert shared_pairs.select("doc_id", "doc_id_right").unique().height > reference.height
    keys = band.join(reference.select(doc_id="b_doc"), on="doc_id", how="semi")["key"]
    assert (keys % 16).n_unique() > 4  # the copies' band keys fall in many buckets
