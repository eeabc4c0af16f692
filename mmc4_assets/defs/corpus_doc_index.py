import dagster as dg

from mmc4_assets.dedup.corpus_state import TableReader
from mmc4_assets.dedup.doc_index import NAME, SCHEME, update_doc_index
from mmc4_assets.defs.common import CORPUS_GROUP, config_hash
from mmc4_assets.defs.corpus_common import EngineConfig, run_corpus_update
from mmc4_assets.defs.doc_fingerprints import doc_fingerprints
from mmc4_assets.defs.resources import StorageResource
from mmc4_assets.mmc4_params import DocIndexSettings


class CorpusDocIndexConfig(dg.Config):
    """DocIndexSettings (mmc4_params.py), plus how the update runs."""

    near_duplicate_jaccard: float = DocIndexSettings.near_duplicate_jaccard
    buckets: int = 16
    full_recompute: bool = False
    engine: EngineConfig = EngineConfig()


@dg.asset(
    group_name=CORPUS_GROUP,
    code_version="1",
    kinds={"polars", "parquet", "dask"},
    tags={"mmc4/stage": "corpus"},
    pool="mmc4_corpus",
    deps=[dg.AssetDep(doc_fingerprints, partition_mapping=dg.AllPartitionMapping())],
)
def corpus_doc_index(
    context: dg.AssetExecutionContext, config: CorpusDocIndexConfig, storage: StorageResource
) -> dg.MaterializeResult:
    """Across all shards: URLs held by several documents, LSH bands of document texts, and verified
    near-duplicate pairs."""
    store = storage.store()
    update, metadata = run_corpus_update(
        context,
        store,
        state=NAME,
        contributions="doc_fingerprints",
        config=config,
        label="corpus doc index",
        update=lambda latest, client: update_doc_index(
            store,
            latest,
            TableReader(store, "doc_fingerprints"),
            threshold=config.near_duplicate_jaccard,
            buckets=config.buckets,
            full_recompute=config.full_recompute,
            client=client,
        ),
    )
    return dg.MaterializeResult(
        metadata={
            **metadata,
            "near_duplicate_jaccard": config.near_duplicate_jaccard,
            "scheme": SCHEME.id,
            "config_hash": config_hash(config),
            "path": dg.MetadataValue.path(store.uri("corpus", "doc_index")),
        }
    )
