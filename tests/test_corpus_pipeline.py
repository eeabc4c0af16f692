"""Cross-shard rules through Dagster: three shards materialized in sequence, then a republish.

Upstream spine tables (fetched_images, raw_c4, deduped_docs, clip_image_features) are
written directly with ShardStore to keep this fast; the corpus assets, the classifier
scores and published_shards with its blocking check run for real.
"""

import hashlib
import json

import dagster as dg
import numpy as np
import polars as pl
import pytest

from mmc4_assets.dedup.shard import DEDUPED_SCHEMA
from mmc4_assets.defs.classifiers import FeatureClassifiers
from mmc4_assets.defs.corpus_automation import _publish_sensor
from mmc4_assets.defs.corpus_doc_index import corpus_doc_index
from mmc4_assets.defs.corpus_image_counts import corpus_image_counts
from mmc4_assets.defs.doc_fingerprints import doc_fingerprints
from mmc4_assets.defs.image_classifier_scores import image_classifier_scores
from mmc4_assets.defs.image_hash_counts import image_hash_counts
from mmc4_assets.defs.partitions import shards
from mmc4_assets.defs.published_shards import published_shards, published_shards_match_mmc4_schema
from mmc4_assets.defs.quality import DataQuality
from mmc4_assets.defs.resources import StorageResource
from mmc4_assets.publish.shards import read_manifest, read_shard
from mmc4_assets.storage import ShardStore
from test_corpus_classifiers import DIM, train_torch_mlp

AD = "00000000000000ad"  # the stock picture: 6 documents on a, 4 on b, 2 on c
CORPUS_ASSETS = [
    image_hash_counts,
    doc_fingerprints,
    image_classifier_scores,
    corpus_image_counts,
    corpus_doc_index,
    published_shards,
    published_shards_match_mmc4_schema,
]
WORDS = [f"word{i}" for i in range(4000)]


def _phash(*parts) -> str:
    return hashlib.blake2b(repr(parts).encode(), digest_size=8).hexdigest()


def _text(seed: int, n: int = 60) -> list[str]:
    rng = np.random.default_rng(seed)
    words = [WORDS[i] for i in rng.integers(0, len(WORDS), n)]
    return [" ".join(words[i : i + 12]) + "." for i in range(0, n, 12)]  # five sentences


def write_shard(store: ShardStore, shard: str, docs: list[dict]) -> None:
    """docs: {"url", "text_list", "images": [(image_name, phash)]} -> the spine's tables."""
    deduped, fetched, raw, features = [], [], [], {}
    for i, d in enumerate(docs):
        doc_id = f"{shard}:{i}"
        raw.append({"doc_id": doc_id, "url": d["url"]})
        info = [
            {
                "image_index": j,
                "image_name": name,
                "raw_url": f"https://img.test/{name}",
                "phash": ph,
                "matched_text_index": j % len(d["text_list"]),
                "matched_sim": 0.3,
                "surplus": False,
            }
            for j, (name, ph) in enumerate(d["images"])
        ]
        fetched += [{"doc_id": doc_id, "status": "ok", "phash": ph} for _, ph in d["images"]]
        deduped.append(
            {
                "doc_id": doc_id,
                "url": d["url"],
                "text_list": d["text_list"],
                "image_info": info,
                "similarity_matrix": [[0.3] * len(d["text_list"]) for _ in info],
                "could_have_url_duplicate": 0,
            }
        )
        for name, _ in d["images"]:
            vec = np.random.default_rng(int(hashlib.md5(name.encode()).hexdigest()[:8], 16)).normal(size=DIM)
            # the test classifier's "face" direction is feature 0: far on one side or the other
            vec[0] = abs(vec[0]) + 3.0 if name.startswith("face") else -abs(vec[0]) - 3.0
            features[name] = (vec / np.linalg.norm(vec)).astype(np.float32)
    store.write_table("deduped_docs", shard, pl.DataFrame(deduped, schema=DEDUPED_SCHEMA))
    store.write_table("fetched_images", shard, pl.DataFrame(fetched))
    store.write_table("raw_c4", shard, pl.DataFrame(raw))
    store.write_table(
        "clip_image_features",
        shard,
        pl.DataFrame(
            {
                "image_name": list(features),
                "embedding": pl.Series(np.stack(list(features.values())), dtype=pl.Array(pl.Float32, DIM)),
            }
        ),
    )


def _docs(shard: str, n: int, ad_docs: int, seed: int) -> list[dict]:
    out = []
    for i in range(n):
        images = [(f"{shard}-{i}.jpg", _phash(shard, i))]
        if i < ad_docs:
            images.append((f"ad-{shard}-{i}.jpg", AD))
        out.append({"url": f"https://{shard}.test/{i}", "text_list": _text(seed * 100 + i), "images": images})
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Shards a, b, c materialized one after another; c tips the stock picture over 10 duplicates."""
    root = tmp_path_factory.mktemp("corpus")
    store = ShardStore(root)
    weights = root / "face.pt"
    train_torch_mlp(weights)
    resources = {
        "storage": StorageResource(root=str(root)),
        "quality": DataQuality(),
        "classifiers": FeatureClassifiers(face_weights=str(weights)),
    }
    a = _docs("a", 8, ad_docs=6, seed=1)
    a[7]["images"].append(("face-a-7.jpg", _phash("face", 7)))
    b = _docs("b", 6, ad_docs=4, seed=2)
    c = _docs("c", 4, ad_docs=2, seed=3)
    c[1]["text_list"] = a[2]["text_list"] + ["One more closing sentence."]  # near-duplicate of a:2
    c[2]["url"] = b[3]["url"]  # same URL as b:3
    for shard, docs in (("a", a), ("b", b), ("c", c)):
        write_shard(store, shard, docs)
    instance = dg.DagsterInstance.ephemeral()
    results = {}
    published_after = {}
    for shard in ("a", "b", "c"):
        instance.add_dynamic_partitions(shards.name, [shard])
        results[shard] = dg.materialize(
            CORPUS_ASSETS, partition_key=shard, instance=instance, resources=resources, raise_on_error=False
        )
        published_after[shard] = {
            s: read_shard(store, "docs_shard_" + s + "_v2.jsonl.zip")
            for s in ("a", "b", "c")[: ("a", "b", "c").index(shard) + 1]
        }
    return {
        "root": root,
        "store": store,
        "instance": instance,
        "resources": resources,
        "results": results,
        "published_after": published_after,
    }


def _md(result, asset):
    for m in result.get_asset_materialization_events():
        if m.asset_key.to_user_string() == asset:
            return {k: v.value for k, v in m.step_materialization_data.materialization.metadata.items()}
    raise KeyError(asset)


def _images(docs):
    return [im["image_name"] for d in docs for im in d["image_info"]]


def test_every_run_succeeds_with_its_blocking_check(corpus):
    for result in corpus["results"].values():
        assert result.success
        assert [c.passed for c in result.get_asset_check_evaluations()] == [True]


def test_more_than_ten_duplicates_in_the_sample_drop_the_picture(corpus):
    after_b = corpus["published_after"]["b"]
    assert sum(n.startswith("ad-") for n in _images(after_b["a"] + after_b["b"])) == 10  # 9 duplicates each: kept
    after_c = corpus["published_after"]["c"]
    assert not any(n.startswith("ad-") for n in _images(after_c["c"]))  # 12 copies, 11 duplicates: blocked
    md = _md(corpus["results"]["c"], "published_shards")
    # c:0 drops it; c:1 (the other copy) is a near-duplicate of a:2 and goes as a whole document
    assert md["images_dropped_frequent_image"] == md["images_dropped_by_image_rule"] == 1
    assert md["image_rule"] == "mmc4_sample_blocklist"
    rule = _md(corpus["results"]["c"], "corpus_image_counts")
    assert (rule["rule"], rule["blocklist_size"], rule["sampled_images"]) == ("mmc4_sample_blocklist", 1, 15 + 10 + 6)
    assert rule["sample_size"] == 60_000 and rule["blocklist_changed"]


def test_the_aggregate_reads_only_the_new_shard(corpus):
    for shard in ("a", "b", "c"):
        md = _md(corpus["results"][shard], "corpus_image_counts")
        assert md["shards_read"] == 1 and md["shards"] == ("a", "b", "c").index(shard) + 1
    assert _md(corpus["results"]["c"], "corpus_image_counts")["affected_shards"] == 3


def test_cross_shard_near_duplicate_and_url_duplicate(corpus):
    docs_c = corpus["published_after"]["c"]["c"]
    assert "https://c.test/1" not in [d["url"] for d in docs_c]  # near-duplicate of a:2, a sorts first
    assert _md(corpus["results"]["c"], "published_shards")["docs_dropped_near_duplicate"] == 1
    shared = [d for d in docs_c if d["url"] == "https://b.test/3"]
    assert len(shared) == 1 and shared[0]["could_have_url_duplicate"] == 1


def test_face_classifier_fills_face_detections_and_the_ff_subset(corpus):
    store = corpus["store"]
    full = read_shard(store, "docs_shard_a_v2.jsonl.zip")
    dets = {im["image_name"]: im["face_detections"] for d in full for im in d["image_info"]}
    assert dets["face-a-7.jpg"]["has_face"] is True and dets["face-a-7.jpg"]["p_face"] > 0.5
    assert all(set(v) == {"p_face", "has_face"} for v in dets.values())
    ff = read_shard(store, "docs_shard_a_v2.jsonl.zip", ("published", "mmc4-ff"))
    assert "face-a-7.jpg" not in _images(ff) and len(ff) == len(full)  # a:7 keeps its other image
    for subset, folder, name in (
        ("full", ("published",), "docs_shard_a_v2"),
        ("mmc4-ff", ("published", "mmc4-ff"), "docs_shard_a_v2"),
        ("mmc4-core", ("published", "mmc4-core"), "docs_shard_a_v3"),
        ("mmc4-core-ff", ("published", "mmc4-core-ff"), "docs_shard_a_v3"),
    ):
        manifest = read_manifest(store, f"{name}.manifest.json", folder)
        assert manifest["subset"] == subset and manifest["corpus"]["image_rule"] == "mmc4_sample_blocklist"
        assert manifest["corpus"]["max_near_duplicates"] == 10 and manifest["corpus"]["sample_size"] == 60_000
        assert manifest["classifiers"]["nsfw"].startswith("off")
    md = _md(corpus["results"]["a"], "published_shards")
    # core: five sentences, well-matched images; a:0-5 and a:7 hold 2 images (the stock picture
    # among them, still under the limit when a was published), a:6 only one
    assert (md["num_docs"], md["num_docs_ff"], md["num_docs_core"], md["num_docs_core_ff"]) == (8, 8, 7, 6)
    assert md["nsfw_filter"].startswith("off")


def test_sensor_republishes_the_shards_a_later_shard_changed(corpus):
    instance, store = corpus["instance"], corpus["store"]
    context = dg.build_sensor_context(instance=instance, resources={"storage": corpus["resources"]["storage"]})
    sensor = _publish_sensor(60)
    result = sensor(context)
    requested = sorted(r.partition_key for r in result.run_requests)
    assert requested == ["a", "b"]  # c was published after the change; a and b before it
    for shard in requested:
        rerun = dg.materialize(
            [published_shards, published_shards_match_mmc4_schema],
            partition_key=shard,
            instance=instance,
            resources=corpus["resources"],
            selection=None,
        )
        assert rerun.success
    assert not any(
        n.startswith("ad-") for s in "abc" for n in _images(read_shard(store, f"docs_shard_{s}_v2.jsonl.zip"))
    )
    docs_b = read_shard(store, "docs_shard_b_v2.jsonl.zip")
    assert [d["could_have_url_duplicate"] for d in docs_b if d["url"] == "https://b.test/3"] == [1]
    # nothing is behind any more
    again = sensor(
        dg.build_sensor_context(
            instance=instance, cursor=context.cursor, resources={"storage": corpus["resources"]["storage"]}
        )
    )
    assert not again.run_requests


def test_publishing_refuses_a_shard_the_corpus_has_not_absorbed(corpus, tmp_path):
    store, instance = corpus["store"], corpus["instance"]
    write_shard(store, "d", _docs("d", 2, ad_docs=0, seed=4))
    instance.add_dynamic_partitions(shards.name, ["d"])
    prep = dg.materialize(
        [image_hash_counts, doc_fingerprints, image_classifier_scores],
        partition_key="d",
        instance=instance,
        resources=corpus["resources"],
    )
    assert prep.success
    result = dg.materialize(
        [published_shards], partition_key="d", instance=instance, resources=corpus["resources"], raise_on_error=False
    )
    assert not result.success
    failure = json.dumps([str(e.event_specific_data) for e in result.all_events if e.is_step_failure])
    assert "has not absorbed" in failure
