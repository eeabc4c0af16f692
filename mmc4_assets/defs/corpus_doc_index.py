import time

import dagster as dg

from mmc4_assets.dedup.doc_index import SCHEME, update_doc_index
from mmc4_assets.defs.common import GROUP, config_hash
from mmc4_assets.defs.corpus_common import latest_versions, update_metadata, with_retries
from mmc4_assets.defs.doc_fingerprints import doc_fingerprints
from mmc4_assets.defs.resources import StorageResource


class CorpusDocIndexConfig(dg.Config):
    near_duplicate_jaccard: float = 0.8  # estimated word 5-gram Jaccard at or above: near-duplicate
    buckets: int = 16
    full_recompute: bool = False


@dg.asset(group_name=GROUP, code_version="1", kinds={"polars", "parquet"}, tags={"mmc4/stage": "corpus"},
          pool="mmc4_corpus",
          deps=[dg.AssetDep(doc_fingerprints, partition_mapping=dg.AllPartitionMapping())])
def corpus_doc_index(context: dg.AssetExecutionContext, config: CorpusDocIndexConfig,
                     storage: StorageResource) -> dg.MaterializeResult:
    """Across all shards: URLs held by several documents, LSH bands of document texts, and verified near-duplicate pairs."""
    store = storage.store()
    started = time.perf_counter()
    latest = latest_versions(context.instance, "doc_fingerprints")
    update = with_retries(context, lambda: update_doc_index(
        store, latest, lambda s: store.read_table("doc_fingerprints", s), threshold=config.near_duplicate_jaccard,
        buckets=config.buckets, full_recompute=config.full_recompute))
    context.log.info(f"corpus doc index v{update.version}: read {len(update.absorbed)} shard(s), "
                     f"{len(update.affected_shards)} published shard(s) affected")
    return dg.MaterializeResult(metadata={
        **update_metadata(update, time.perf_counter() - started),
        "near_duplicate_jaccard": config.near_duplicate_jaccard,
        "scheme": SCHEME.id,
        "config_hash": config_hash(config),
        "path": dg.MetadataValue.path(store.uri("corpus", "doc_index")),
    })
