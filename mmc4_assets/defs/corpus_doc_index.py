import time

import dagster as dg

from mmc4_assets.dedup.corpus_state import TableReader
from mmc4_assets.dedup.doc_index import NAME, SCHEME, update_doc_index
from mmc4_assets.defs.common import CORPUS_GROUP, config_hash
from mmc4_assets.defs.corpus_common import (EngineConfig, engine_for, latest_versions, shards_to_read, update_metadata,
                                            with_retries)
from mmc4_assets.defs.doc_fingerprints import doc_fingerprints
from mmc4_assets.defs.resources import StorageResource


class CorpusDocIndexConfig(dg.Config):
    near_duplicate_jaccard: float = 0.8  # estimated word 5-gram Jaccard at or above: near-duplicate
    buckets: int = 16
    full_recompute: bool = False
    engine: EngineConfig = EngineConfig()


@dg.asset(group_name=CORPUS_GROUP, code_version="1", kinds={"polars", "parquet", "dask"}, tags={"mmc4/stage": "corpus"},
          pool="mmc4_corpus",
          deps=[dg.AssetDep(doc_fingerprints, partition_mapping=dg.AllPartitionMapping())])
def corpus_doc_index(context: dg.AssetExecutionContext, config: CorpusDocIndexConfig,
                     storage: StorageResource) -> dg.MaterializeResult:
    """Across all shards: URLs held by several documents, LSH bands of document texts, and verified near-duplicate pairs."""
    store = storage.store()
    started = time.perf_counter()
    latest = latest_versions(context.instance, "doc_fingerprints")
    with engine_for(config.engine, shards_to_read(store, NAME, latest, config.full_recompute), context) as client:
        update = with_retries(context, lambda: update_doc_index(
            store, latest, TableReader(store, "doc_fingerprints"), threshold=config.near_duplicate_jaccard,
            buckets=config.buckets, full_recompute=config.full_recompute, client=client))
    context.log.info(f"corpus doc index v{update.version}: read {len(update.absorbed)} shard(s), "
                     f"{len(update.affected_shards)} published shard(s) affected")
    return dg.MaterializeResult(metadata={
        **update_metadata(update, time.perf_counter() - started),
        "near_duplicate_jaccard": config.near_duplicate_jaccard,
        "scheme": SCHEME.id,
        "config_hash": config_hash(config),
        "path": dg.MetadataValue.path(store.uri("corpus", "doc_index")),
    })
