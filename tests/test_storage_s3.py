"""ShardStore, StorageResource and ShardSource on S3 (moto on 127.0.0.1)."""

import gzip
import os

import polars as pl
import pytest

from mmc4_assets.defs.resources import ShardSource, StorageResource, s3_fields
from mmc4_assets.publish.shards import read_manifest, read_shard, write_shard
from mmc4_assets.storage import ShardStore
from mmc4_assets.storage.s3 import options_for, s3fs_storage_options
from test_s3_support import s3_server  # noqa: F401  (fixture)

BUCKET = "mmc4-storage"


@pytest.fixture(scope="module")
def bucket(s3_server):
    s3_server.create_bucket(BUCKET)
    return s3_server


def _store(s3, prefix, **extra):
    return ShardStore(f"s3://{BUCKET}/{prefix}", {**s3.storage_options(), **extra})


def test_storage_options_follow_dagster_aws_field_names():
    assert s3fs_storage_options() == {}
    opts = s3fs_storage_options(
        endpoint_url="http://127.0.0.1:9",
        region_name="eu-west-1",
        aws_access_key_id="k",
        aws_secret_access_key="s",
        aws_session_token="t",
        profile_name=None,
        use_unsigned_session=False,
        use_ssl=True,
        verify=False,
        max_attempts=7,
    )
    assert opts == {
        "endpoint_url": "http://127.0.0.1:9",
        "key": "k",
        "secret": "s",
        "token": "t",
        "client_kwargs": {"region_name": "eu-west-1", "verify": False},
        "config_kwargs": {"retries": {"max_attempts": 7, "mode": "standard"}},
    }
    assert s3fs_storage_options(use_unsigned_session=True) == {"anon": True}
    assert options_for("/data/x", opts) == {} and options_for("s3://b/x", opts) == opts


def test_storage_resource_takes_its_endpoint_from_an_s3_resource(bucket):
    resource = StorageResource(root=f"s3://{BUCKET}/from-resource", **s3_fields(bucket.s3_resource()))
    store = resource.store()
    assert store.storage_options["endpoint_url"] == bucket.endpoint and not store.is_local
    store.write_bytes(store.path("probe.txt"), b"ok")
    assert bucket.keys(BUCKET, "from-resource/") == ["from-resource/probe.txt"]
    # a local root ignores the S3 settings
    assert StorageResource(root="/tmp/x", **s3_fields(bucket.s3_resource())).store().storage_options == {}


def test_failed_small_write_puts_nothing(bucket):
    store = _store(bucket, "small")
    with pytest.raises(RuntimeError), store.open_atomic(store.path("tables", "t", "s.parquet")) as fh:
        fh.write(b"partial")
        raise RuntimeError("killed")
    assert bucket.keys(BUCKET, "small/") == []


def test_failed_multipart_write_is_aborted_not_committed(bucket):
    # 5 MiB blocks (S3's minimum part size): 11 MiB makes s3fs start a multipart upload
    store = _store(bucket, "multipart", default_block_size=5 * 2**20)
    chunk = os.urandom(2**20)
    with pytest.raises(RuntimeError), store.open_atomic(store.path("published", "big.zip")) as fh:
        for _ in range(11):
            fh.write(chunk)
        raise RuntimeError("killed mid-shard")
    client = bucket.client()
    assert bucket.keys(BUCKET, "multipart/") == []
    assert not client.list_multipart_uploads(Bucket=BUCKET).get("Uploads")
    with store.open_atomic(store.path("published", "big.zip")) as fh:
        for _ in range(11):
            fh.write(chunk)
    assert client.head_object(Bucket=BUCKET, Key="multipart/published/big.zip")["ContentLength"] == 11 * 2**20


def test_tables_blobs_and_published_shards_round_trip(bucket):
    store = _store(bucket, "roundtrip")
    schema = {"doc_id": pl.String, "n": pl.Int64}
    with store.table_writer("t", "s1", schema) as out:
        for i in range(5):
            out.append({"doc_id": f"d{i}", "n": i})
    assert store.num_rows("t", "s1") == 5 and store.has_table("t", "s1")
    assert [b.height for b in store.iter_batches("t", "s1", batch_size=2)] == [2, 2, 1]
    assert store.scan("t", "s1").filter(pl.col("n") > 2).collect()["doc_id"].to_list() == ["d3", "d4"]
    assert store.put_blob("cd" * 32, b"img") is True and store.put_blob("cd" * 32, b"img") is False
    assert store.get_blob("cd" * 32 + ".jpg") == b"img"
    doc = {
        "url": "https://a.test/",
        "text_list": ["A."],
        "image_info": [],
        "similarity_matrix": [],
        "could_have_url_duplicate": 0,
    }
    pub = write_shard(store, "docs_shard_3_v2.jsonl.zip", iter([doc, doc]), {"model": "m"})
    assert read_shard(store, pub.zip_name) == [doc, doc]
    assert read_manifest(store, pub.manifest_name)["sha256"] == pub.sha256
    store.delete(store.path("published", pub.manifest_name))
    store.delete(store.path("published", "absent.json"))
    assert not store.exists(store.path("published", pub.manifest_name))


def test_shard_source_lists_globs_and_streams_s3(bucket):
    client = bucket.client()
    for key in ("c4-train.00001-of-01024", "c4-train.00000-of-01024"):
        client.put_object(
            Bucket=BUCKET,
            Key=f"src/c4/{key}.json.gz",
            Body=gzip.compress(b'{"text": "A.", "timestamp": "t", "url": "https://a.test/"}\n'),
        )
    client.put_object(Bucket=BUCKET, Key="src/c4/notes.txt", Body=b"x")
    for name in ("b.warc.gz", "a.wat.gz", "skip.txt"):
        client.put_object(Bucket=BUCKET, Key=f"src/pages/{name}", Body=b"x")
    source = ShardSource(
        shards_root=f"s3://{BUCKET}/src/c4",
        **s3_fields(bucket.s3_resource()),
        page_archives=[f"s3://{BUCKET}/src/pages/*.gz", f"s3://{BUCKET}/src/pages/skip.txt"],
    )
    assert source.list_shards() == ["c4-train.00000-of-01024", "c4-train.00001-of-01024"]
    assert source.archive_paths() == [
        f"s3://{BUCKET}/src/pages/a.wat.gz",
        f"s3://{BUCKET}/src/pages/b.warc.gz",
        f"s3://{BUCKET}/src/pages/skip.txt",
    ]
    with source.open(str(source.shard_path("c4-train.00000-of-01024"))) as fh, gzip.open(fh) as lines:
        assert b'"url": "https://a.test/"' in next(iter(lines))
    # a new shard shows up on the next listing (the sensor lists every tick)
    client.put_object(Bucket=BUCKET, Key="src/c4/c4-train.00002-of-01024.json.gz", Body=b"")
    assert source.list_shards()[-1] == "c4-train.00002-of-01024"
    assert ShardSource(shards_root=f"s3://{BUCKET}/nothing-here", **s3_fields(bucket.s3_resource())).list_shards() == []
