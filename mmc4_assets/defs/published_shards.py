import datetime as dt

import dagster as dg

from mmc4_assets import __version__
from mmc4_assets.defs.common import GROUP, check_result, config_hash
from mmc4_assets.defs.deduped_docs import deduped_docs
from mmc4_assets.defs.partitions import shards
from mmc4_assets.defs.resources import StorageResource
from mmc4_assets.publish.mmc4_format import make_document, shard_filename
from mmc4_assets.publish.shards import MANIFEST_SUFFIX, file_sha256, iter_shard_lines, read_manifest, write_shard
from mmc4_assets.quality.rules import published_rules


class PublishConfig(dg.Config):
    version: str = "v2"  # MMC4's file suffix: docs_shard_{N}_v2.jsonl.zip
    ndigits: int = 6     # similarity decimals in the jsonl


def _docs(store, shard: str, ndigits: int):
    for batch in store.iter_batches("deduped_docs", shard, batch_size=1000):
        for row in batch.iter_rows(named=True):
            yield make_document(row["url"], row["text_list"], row["image_info"],
                                row["similarity_matrix"], row["could_have_url_duplicate"], ndigits)


def _upstream_metadata(context: dg.AssetExecutionContext) -> dict:
    """Model and config hashes of the upstream materializations this shard was built from."""
    out = {}
    for asset in ("raw_c4", "fetched_images", "clip_scores", "assignments", "deduped_docs"):
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[context.partition_key]),
            limit=1).records
        md = records[0].asset_materialization.metadata if records else {}
        out[asset] = {k: md[k].value for k in ("config_hash", "model", "random_weights") if k in md}
    return out


@dg.asset(partitions_def=shards, group_name=GROUP, code_version="1", kinds={"json"},
          deps=[deduped_docs], tags={"mmc4/stage": "publish"})
def published_shards(context: dg.AssetExecutionContext, config: PublishConfig,
                     storage: StorageResource) -> dg.MaterializeResult:
    """The shard in MMC4's jsonl.zip format with a manifest (counts, checksum, model, config)."""
    shard, store = context.partition_key, storage.store()
    upstream = _upstream_metadata(context)
    zip_name = shard_filename(shard, config.version)
    published = write_shard(store, zip_name, _docs(store, shard, config.ndigits), {
        "source_shard": shard, "format": "mmc4", "version": config.version,
        "mmc4_assets_version": __version__,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": upstream.get("clip_scores", {}).get("model"),
        "random_weights": upstream.get("clip_scores", {}).get("random_weights"),
        "upstream": upstream, "config_hash": config_hash(config),
    })
    return dg.MaterializeResult(metadata={
        "num_docs": published.num_docs,
        "num_images": published.num_images,
        "bytes": published.bytes,
        "sha256": published.sha256,
        "shard_file": zip_name,
        "manifest": published.manifest_name,
        "model": upstream.get("clip_scores", {}).get("model") or "unknown",
        "config_hash": config_hash(config),
        "path": dg.MetadataValue.path(store.uri("published", zip_name)),
    })


@dg.asset_check(asset=published_shards, blocking=True)
def published_shards_match_mmc4_schema(context: dg.AssetCheckExecutionContext,
                                       storage: StorageResource) -> dg.AssetCheckResult:
    """Every line parses and matches the MMC4 schema; doc count = deduped_docs; checksum = manifest."""
    store, shard = storage.store(), context.partition_key
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("published_shards"), asset_partitions=[shard]),
        limit=1).records
    version = "v2"
    if records:
        name = records[0].asset_materialization.metadata["shard_file"].value
        version = name.rsplit("_", 1)[-1].split(".")[0]
    zip_name = shard_filename(shard, version)
    manifest = read_manifest(store, zip_name[: -len(".jsonl.zip")] + MANIFEST_SUFFIX)
    lines = list(iter_shard_lines(store, zip_name))
    outcome = published_rules(lines, manifest, file_sha256(store, zip_name),
                              store.num_rows("deduped_docs", shard))
    return check_result(outcome, shard_file=zip_name)
