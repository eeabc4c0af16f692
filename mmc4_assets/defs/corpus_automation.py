"""Keeping published shards true to the corpus: the republish sensor and the two-pass jobs.

Republish mode (default): a shard is published as soon as its run has folded it into the
corpus state. When a later shard changes a decision about an earlier one (an image
crossing 10 documents, a new smaller near-duplicate, a URL becoming duplicated), the
corpus asset lists the affected shards for that version, and ``corpus_republish_sensor``
re-runs ``published_shards`` for those whose published output predates the version.

Two-pass mode: ``mmc4_prepare_job`` for every shard, then ``corpus_update_job`` once, then
``mmc4_publish_job`` for every shard: nothing is published before the corpus is counted,
so nothing needs republishing (an asset backfill of all assets does the same by itself:
the unpartitioned corpus assets wait for every shard, and publishing waits for them).
"""

from __future__ import annotations

import json

import dagster as dg

from mmc4_assets.dedup.corpus_state import read_affected
from mmc4_assets.defs.corpus_doc_index import corpus_doc_index
from mmc4_assets.defs.corpus_image_counts import corpus_image_counts
from mmc4_assets.defs.page_records import PAGES_GROUP
from mmc4_assets.defs.partitions import shards
from mmc4_assets.defs.published_shards import published_shards
from mmc4_assets.defs.resources import StorageResource

CORPUS_ASSETS = {  # corpus asset -> (state folder, published_shards metadata key of its version)
    "corpus_image_counts": ("image_counts", "corpus_image_counts_version"),
    "corpus_doc_index": ("doc_index", "corpus_doc_index_version"),
}

mmc4_publish_job = dg.define_asset_job(
    "mmc4_publish_job", selection=dg.AssetSelection.assets(published_shards), partitions_def=shards,
    description="Publish (or re-publish) shards from the current corpus state; the republish sensor's target.")

mmc4_prepare_job = dg.define_asset_job(
    "mmc4_prepare_job",
    selection=dg.AssetSelection.assets(published_shards).upstream() - dg.AssetSelection.assets(
        published_shards, corpus_image_counts, corpus_doc_index) - dg.AssetSelection.groups(PAGES_GROUP),
    partitions_def=shards,
    description="Two-pass mode, pass 1: every per-shard stage and corpus contribution, nothing published.")

corpus_update_job = dg.define_asset_job(
    "corpus_update_job", selection=dg.AssetSelection.assets(corpus_image_counts, corpus_doc_index),
    description="Fold every new or changed shard into the corpus counts and document index.")


def stale_shards(instance: dg.DagsterInstance, affected: list[str], metadata_key: str, version: int) -> list[str]:
    """Affected shards already published from an older version of that corpus asset."""
    stale = []
    for shard in affected:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=published_shards.key, asset_partitions=[shard]), limit=1).records
        if not records:
            continue  # never published: its first publication will see the new state
        md = records[0].asset_materialization.metadata
        published_from = md[metadata_key].value if metadata_key in md else -1
        if published_from < version:
            stale.append(shard)
    return stale


class RepublishConfig(dg.Config):
    max_runs_per_tick: int = 200


@dg.sensor(job=mmc4_publish_job, minimum_interval_seconds=60,
           default_status=dg.DefaultSensorStatus.RUNNING)
def corpus_republish_sensor(context: dg.SensorEvaluationContext, storage: StorageResource) -> dg.SensorResult:
    """Re-publishes shards whose corpus decisions changed after they were published."""
    store = storage.store()
    cursor = json.loads(context.cursor) if context.cursor else {}
    limit = RepublishConfig().max_runs_per_tick
    stale: dict[str, None] = {}
    for asset, (folder, metadata_key) in CORPUS_ASSETS.items():
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), after_storage_id=cursor.get(asset)),
            limit=50, ascending=True).records
        for record in records:
            if len(stale) >= limit:
                break  # the cursor stays here: the next tick goes on from this version
            md = record.asset_materialization.metadata
            if "affected_file" in md and md["affected_shards"].value:
                version = md["version"].value
                affected = read_affected(store, folder, md["affected_file"].value)
                if affected is None:  # pruned: a sensor this far behind republishes what it can see
                    context.log.warning(f"{asset} v{version}: affected list pruned; run mmc4_publish_job "
                                        "for all shards to be sure")
                    affected = []
                for shard in stale_shards(context.instance, affected, metadata_key, version):
                    stale.setdefault(shard)
            cursor[asset] = record.storage_id
    if not stale:
        return dg.SensorResult(skip_reason="no published shard is behind the corpus state",
                               cursor=json.dumps(cursor))
    tag = ".".join(str(cursor.get(a, 0)) for a in CORPUS_ASSETS)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=s, run_key=f"republish:{s}:{tag}",
                                    tags={"mmc4/republish": "corpus"}) for s in stale],
        cursor=json.dumps(cursor))
