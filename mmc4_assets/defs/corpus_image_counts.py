import time

import dagster as dg

from mmc4_assets.dedup.image_counts import update_image_counts
from mmc4_assets.defs.common import GROUP, config_hash
from mmc4_assets.defs.corpus_common import latest_versions, update_metadata, with_retries
from mmc4_assets.defs.image_hash_counts import image_hash_counts
from mmc4_assets.defs.resources import StorageResource


class CorpusImageCountsConfig(dg.Config):
    max_docs_per_image: int = 10  # MMC4: drop images appearing more than 10 times across the corpus
    buckets: int = 16             # key-index buckets: memory per update ~ corpus rows / buckets
    full_recompute: bool = False  # re-read every shard instead of the new and changed ones


@dg.asset(group_name=GROUP, code_version="1", kinds={"polars", "parquet"}, tags={"mmc4/stage": "corpus"},
          # one writer at a time: set a limit of 1 on this pool (see README)
          pool="mmc4_corpus",
          # every shard's counts feed the one aggregate; said explicitly so lineage shows it
          deps=[dg.AssetDep(image_hash_counts, partition_mapping=dg.AllPartitionMapping())])
def corpus_image_counts(context: dg.AssetExecutionContext, config: CorpusImageCountsConfig,
                        storage: StorageResource) -> dg.MaterializeResult:
    """Documents per image pHash across all shards, kept shard by shard, and the pHashes over the limit."""
    store = storage.store()
    started = time.perf_counter()
    latest = latest_versions(context.instance, "image_hash_counts")
    update = with_retries(context, lambda: update_image_counts(
        store, latest, lambda s: store.read_table("image_hash_counts", s), limit=config.max_docs_per_image,
        buckets=config.buckets, full_recompute=config.full_recompute))
    context.log.info(f"corpus image counts v{update.version}: read {len(update.absorbed)} shard(s), "
                     f"{len(update.affected_shards)} published shard(s) affected")
    return dg.MaterializeResult(metadata={
        **update_metadata(update, time.perf_counter() - started),
        "max_docs_per_image": config.max_docs_per_image,
        "config_hash": config_hash(config),
        "path": dg.MetadataValue.path(store.uri("corpus", "image_counts")),
    })
