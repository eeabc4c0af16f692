import json
import zipfile

import polars as pl
import pytest

from mmc4_assets.publish.mmc4_format import make_document, schema_errors, shard_filename
from mmc4_assets.publish.shards import file_sha256, read_manifest, read_shard, write_shard
from mmc4_assets.storage import ShardStore


def _doc(i=0):
    return make_document(
        f"https://s.test/{i}",
        ["A.", "B."],
        [
            {
                "image_name": "ab.jpg",
                "raw_url": "https://i.test/a.jpg",
                "matched_text_index": 1,
                "matched_sim": 0.2734567891,
            }
        ],
        [[0.1, 0.2734567891]],
        0,
    )


def test_shard_filename_follows_mmc4():
    assert shard_filename("c4-train.00042-of-01024") == "docs_shard_42_v2.jsonl.zip"
    assert shard_filename("my-crawl") == "docs_shard_my-crawl_v2.jsonl.zip"


def test_document_has_exact_mmc4_fields_and_validates():
    doc = _doc()
    assert list(doc) == ["url", "text_list", "image_info", "similarity_matrix", "could_have_url_duplicate"]
    assert list(doc["image_info"][0]) == [
        "image_name",
        "raw_url",
        "matched_text_index",
        "matched_sim",
        "face_detections",
    ]
    assert doc["image_info"][0]["matched_sim"] == 0.273457
    assert schema_errors(doc) == []


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("url"), "missing field url"),
        (lambda d: d["image_info"][0].update(matched_text_index=2), "outside text_list"),
        (lambda d: d["similarity_matrix"].append([0.1, 0.1]), "shape"),
        (lambda d: d["similarity_matrix"][0].__setitem__(0, 1.5), "finite cosines"),
        (lambda d: d.update(image_info=[]), "non-empty"),
        (lambda d: d.update(extra=1), "unexpected field"),
    ],
)
def test_schema_errors_catch_broken_documents(mutate, message):
    doc = _doc()
    mutate(doc)
    assert any(message in e for e in schema_errors(doc))


def test_write_shard_roundtrip_with_manifest(tmp_path):
    store = ShardStore(tmp_path)
    docs = [_doc(i) for i in range(3)]
    pub = write_shard(store, "docs_shard_7_v2.jsonl.zip", iter(docs), {"model": "m"})
    assert (pub.num_docs, pub.num_images) == (3, 3)
    assert read_shard(store, pub.zip_name) == docs
    manifest = read_manifest(store, pub.manifest_name)
    assert manifest["sha256"] == file_sha256(store, pub.zip_name) == pub.sha256
    assert manifest["num_docs"] == 3 and manifest["model"] == "m"
    with zipfile.ZipFile(tmp_path / "published" / pub.zip_name) as zf:
        assert zf.namelist() == ["docs_shard_7_v2.jsonl"]


def test_failed_write_leaves_nothing_under_the_final_name(tmp_path):
    store = ShardStore(tmp_path)

    def docs():
        yield _doc()
        raise RuntimeError("killed mid-shard")

    with pytest.raises(RuntimeError):
        write_shard(store, "docs_shard_1_v2.jsonl.zip", docs(), {})
    assert list((tmp_path / "published").iterdir()) == []


def test_table_writer_is_atomic_and_streams_batches(tmp_path):
    store = ShardStore(tmp_path)
    schema = {"doc_id": pl.String, "n": pl.Int64, "xs": pl.List(pl.String)}
    with store.table_writer("t", "s1", schema) as out:
        for i in range(10):
            out.append({"doc_id": f"d{i}", "n": i, "xs": ["a"] * i})
        out.write(pl.DataFrame({"doc_id": ["z"], "n": [99], "xs": [[]]}, schema=schema))
    assert store.num_rows("t", "s1") == 11
    assert [b.height for b in store.iter_batches("t", "s1", batch_size=4)] == [4, 4, 3]
    with pytest.raises(ValueError), store.table_writer("t", "s2", schema) as out:
        out.append({"doc_id": "a", "n": 1, "xs": []})
        raise ValueError("boom")
    assert not store.has_table("t", "s2")
    assert [p.name for p in (tmp_path / "tables" / "t").iterdir()] == ["s1.parquet"]


def test_store_refuses_keys_that_escape_the_root(tmp_path):
    store = ShardStore(tmp_path)
    for bad in ("..", "a/b", "", "."):
        with pytest.raises(ValueError):
            store.path("tables", bad)


def test_blobs_are_content_addressed_and_written_once(tmp_path):
    store = ShardStore(tmp_path)
    assert store.put_blob("ab" * 32, b"x") is True
    assert store.put_blob("ab" * 32, b"x") is False
    assert store.get_blob("ab" * 32 + ".jpg") == b"x"
    assert json.dumps(str(store.blob_path("ab" * 32))).count("/images/ab/") == 1
