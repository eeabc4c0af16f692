"""The full sample pipeline with every root on S3 (moto on 127.0.0.1), against a local run.

Source shard, page archives and storage root all live in a loopback S3 bucket; all six
assets and their blocking checks run; what comes back from S3 must equal what a local
run publishes.
"""

import io
import json
import zipfile

import dagster as dg
import polars as pl
import pytest

from mmc4_assets.definitions import defs
from mmc4_assets.defs.partitions import shards
from mmc4_assets.defs.resources import sample_resources
from mmc4_assets.storage import ShardStore
from test_s3_support import s3_server, upload_sample_source  # noqa: F401  (fixture)

SHARD = "c4-sample.00000-of-00001"
BUCKET = "mmc4-pipeline"
ZIP, MANIFEST = "docs_shard_0_v2.jsonl.zip", "docs_shard_0_v2.manifest.json"
ASSETS = {"raw_c4", "fetched_images", "clip_scores", "assignments", "deduped_docs", "published_shards"}
# tables whose content must not depend on where they are stored
TABLES = ["raw_c4", "raw_c4_quarantine", "fetched_images", "clip_scores", "assignments", "deduped_docs"]
TIMINGS = {"fetch_ms"}  # wall-clock measurements, different in every run


def _materialize(resources):
    d = defs()
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(shards.name, [SHARD])
    return dg.materialize(
        [*d.assets, *d.asset_checks],
        partition_key=SHARD,
        instance=instance,
        # the page stages (archive partitions, the join) are not in this run:
        # raw_c4 scans the sample's two archives itself
        selection=dg.AssetSelection.all() - dg.AssetSelection.groups("pages"),
        resources=resources,
        raise_on_error=False,
    )


@pytest.fixture(scope="module")
def runs(s3_server, tmp_path_factory):
    local_root = tmp_path_factory.mktemp("local-storage")
    local = _materialize(sample_resources(str(local_root)))
    s3_server.create_bucket(BUCKET)
    shards_root, archives = upload_sample_source(s3_server, BUCKET)
    root = f"s3://{BUCKET}/mmc4/run-1"
    remote = _materialize(
        sample_resources(root, shards_root=shards_root, page_archives=archives, s3=s3_server.s3_resource())
    )
    return (ShardStore(local_root), local), (ShardStore(root, s3_server.storage_options()), remote)


def _docs(store: ShardStore) -> list[dict]:
    with zipfile.ZipFile(io.BytesIO(store.path("published", ZIP).read_bytes())) as zf:
        assert zf.namelist() == [ZIP[: -len(".zip")]]
        return [json.loads(line) for line in zf.read(ZIP[: -len(".zip")]).splitlines()]


def test_every_asset_and_check_succeeds_on_s3(runs):
    (_, local), (_, remote) = runs
    for result in (local, remote):
        assert result.success
        assert {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()} >= ASSETS
        checks = result.get_asset_check_evaluations()
        assert len(checks) >= len(ASSETS) and all(c.passed for c in checks)
    assert {m.asset_key.to_user_string() for m in remote.get_asset_materialization_events()} == {
        m.asset_key.to_user_string() for m in local.get_asset_materialization_events()
    }


def test_outputs_are_on_s3_and_nothing_local(runs, s3_server):
    (_, _), (store, result) = runs
    keys = s3_server.keys(BUCKET, "mmc4/run-1/")
    assert f"mmc4/run-1/published/{ZIP}" in keys and f"mmc4/run-1/published/{MANIFEST}" in keys
    assert f"mmc4/run-1/tables/raw_c4/{SHARD}.parquet" in keys
    assert any(k.startswith("mmc4/run-1/images/") and k.endswith(".jpg") for k in keys)
    # no temporary names, and no zip a reader could find without its manifest
    published = [k for k in keys if "/published/" in k]
    assert not [k for k in published if "/.tmp" in k]
    zips = [k for k in published if k.endswith(".jsonl.zip")]
    assert zips and all(z[: -len(".jsonl.zip")] + ".manifest.json" in published for z in zips)
    paths = {
        m.asset_key.to_user_string(): m.step_materialization_data.materialization.metadata["path"].value
        for m in result.get_asset_materialization_events()
    }
    assert all(p.startswith(f"s3://{BUCKET}/mmc4/run-1/") for p in paths.values())


def test_published_shard_read_back_from_s3_equals_the_local_run(runs):
    (local_store, _), (s3_store, _) = runs
    local_docs, s3_docs = _docs(local_store), _docs(s3_store)
    assert local_docs and s3_docs == local_docs
    local_manifest = json.loads(local_store.path("published", MANIFEST).read_bytes())
    s3_manifest = json.loads(s3_store.path("published", MANIFEST).read_bytes())
    # the zip member has a fixed date (publish/shards.py): same documents, same bytes
    volatile = {"created_at"}
    assert {k: v for k, v in s3_manifest.items() if k not in volatile} == {
        k: v for k, v in local_manifest.items() if k not in volatile
    }
    from mmc4_assets.publish.shards import file_sha256

    assert s3_manifest["sha256"] == file_sha256(s3_store, ZIP) == local_manifest["sha256"]


@pytest.mark.parametrize("table", TABLES)
def test_every_table_is_the_same_on_s3(runs, table):
    (local_store, _), (s3_store, _) = runs
    local, remote = local_store.read_table(table, SHARD), s3_store.read_table(table, SHARD)
    assert remote.schema == local.schema
    local, remote = local.drop(TIMINGS, strict=False), remote.drop(TIMINGS, strict=False)
    assert remote.equals(local), table


def test_scan_reads_s3_tables_lazily(runs):
    (local_store, _), (s3_store, _) = runs
    query = pl.col("status") == "ok"
    got = s3_store.scan("fetched_images", SHARD).filter(query).select("image_name").collect()
    want = local_store.scan("fetched_images", SHARD).filter(query).select("image_name").collect()
    assert got.height > 0 and got.equals(want)
