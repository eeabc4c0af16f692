import dagster as dg

from mmc4_assets.dedup.image_counts import image_hash_contribution
from mmc4_assets.defs.common import CORPUS_GROUP
from mmc4_assets.defs.fetched_images import fetched_images
from mmc4_assets.defs.partitions import SHARD_BACKFILL, shards
from mmc4_assets.defs.resources import StorageResource


@dg.asset(
    partitions_def=shards,
    backfill_policy=SHARD_BACKFILL,
    group_name=CORPUS_GROUP,
    code_version="1",
    kinds={"polars", "parquet"},
    deps=[fetched_images],
    tags={"mmc4/stage": "corpus"},
)
def image_hash_counts(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    """This shard's share of the corpus image counts: each fetched pHash and how many of its documents hold it."""
    shard, store = context.partition_key, storage.store()
    counts = image_hash_contribution(store.read_table("fetched_images", shard, ["doc_id", "status", "phash"]))
    store.write_table("image_hash_counts", shard, counts)
    return dg.MaterializeResult(
        metadata={
            "num_hashes": counts.height,
            "num_doc_images": int(counts["n"].sum() or 0),
            "max_docs_per_hash": int(counts["n"].max() or 0),
            "path": dg.MetadataValue.path(str(store.table_path("image_hash_counts", shard))),
        }
    )
