import dagster as dg

from mmc4_assets.dedup import blocklist as bl
from mmc4_assets.dedup.corpus_state import TableReader
from mmc4_assets.dedup.image_counts import NAME as COUNTS_NAME
from mmc4_assets.dedup.image_counts import update_image_counts
from mmc4_assets.dedup.image_rule import RULES, write_pointer
from mmc4_assets.defs.common import CORPUS_GROUP, config_hash
from mmc4_assets.defs.corpus_common import EngineConfig, run_corpus_update
from mmc4_assets.defs.image_hash_counts import image_hash_counts
from mmc4_assets.defs.resources import StorageResource
from mmc4_assets.mmc4_params import BlocklistRule, ExactCountSettings


class CorpusImageCountsConfig(dg.Config):
    # MMC4's rule (default): pHashes with > 10 near-duplicates (<= 5 bits) in a seeded sample of
    # 60,000 fetched images. "exact_corpus_count": exact pHash in > max_docs_per_image documents.
    rule: str = bl.RULE
    sample_size: int = BlocklistRule.sample_size
    max_near_duplicates: int = BlocklistRule.max_near_duplicates
    max_distance: int = BlocklistRule.max_distance
    seed: int = BlocklistRule.seed
    frozen_blocklist: bool = False  # keep the current blocklist while the sample grows
    max_docs_per_image: int = ExactCountSettings.max_docs_per_image  # exact_corpus_count only
    buckets: int = 16  # exact_corpus_count only: memory per update ~ index rows / buckets
    full_recompute: bool = False  # re-read every shard instead of the new and changed ones
    engine: EngineConfig = EngineConfig()


@dg.asset(
    group_name=CORPUS_GROUP,
    code_version="2",
    kinds={"polars", "parquet", "dask"},
    tags={"mmc4/stage": "corpus"},
    # one writer at a time (corpus_update_job runs one at a time, see dagster.yaml)
    pool="mmc4_corpus",
    # every shard's counts feed the one aggregate; said explicitly so lineage shows it
    deps=[dg.AssetDep(image_hash_counts, partition_mapping=dg.AllPartitionMapping())],
)
def corpus_image_counts(
    context: dg.AssetExecutionContext, config: CorpusImageCountsConfig, storage: StorageResource
) -> dg.MaterializeResult:
    """Frequent images across the corpus: MMC4's blocklist from a sample of fetched images (default), or exact pHash
    counts.
    """
    if config.rule not in RULES:
        raise dg.Failure(f"unknown rule {config.rule!r}; choose from {list(RULES)}")
    store = storage.store()
    if config.rule == bl.RULE:
        rule = bl.BlocklistRule(config.sample_size, config.max_near_duplicates, config.max_distance, config.seed)
        name, settings = bl.NAME, rule.as_dict()
        run = lambda latest, client: bl.update_image_blocklist(  # noqa: E731
            store,
            latest,
            read,
            rule,
            full_recompute=config.full_recompute,
            frozen=config.frozen_blocklist,
            client=client,
        )
    else:
        name, settings = COUNTS_NAME, {"max_docs_per_image": config.max_docs_per_image}
        run = lambda latest, client: update_image_counts(  # noqa: E731
            store,
            latest,
            read,
            limit=config.max_docs_per_image,
            buckets=config.buckets,
            full_recompute=config.full_recompute,
            client=client,
        )
    read = TableReader(store, "image_hash_counts", ("key", "n"))
    update, metadata = run_corpus_update(
        context, store, state=name, contributions="image_hash_counts", config=config, label=config.rule, update=run
    )
    generation = write_pointer(store, config.rule, update.version)
    return dg.MaterializeResult(
        metadata={
            **metadata,
            "rule": config.rule,
            # what publications compare: grows with every change of either rule's state
            "generation": generation,
            **settings,
            "config_hash": config_hash(config),
            "path": dg.MetadataValue.path(store.uri("corpus", name)),
        }
    )
