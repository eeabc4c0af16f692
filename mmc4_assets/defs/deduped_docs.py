import dagster as dg

from mmc4_assets.dedup.phash import url_duplicate_flags
from mmc4_assets.dedup.shard import DEDUPED_SCHEMA, DedupTotals, dedup_documents
from mmc4_assets.defs.assignments import assignments
from mmc4_assets.defs.common import GROUP, config_hash, settings_of, shard_check, stats_metadata
from mmc4_assets.defs.partitions import SHARD_BACKFILL, shards
from mmc4_assets.defs.quality import DataQuality, run_param_check
from mmc4_assets.defs.raw_c4 import raw_c4
from mmc4_assets.defs.resources import StorageResource
from mmc4_assets.mmc4_params import DedupSettings
from mmc4_assets.quality import suites
from mmc4_assets.quality.rules import deduped_docs_rules
from mmc4_assets.stats import StepStats


class DedupConfig(dg.Config):
    """DedupSettings (mmc4_params.py), plus batching."""

    phash_threshold: int = DedupSettings.phash_threshold
    docs_per_batch: int = 2000

    def settings(self) -> DedupSettings:
        return settings_of(self, DedupSettings)


@dg.asset(
    partitions_def=shards,
    backfill_policy=SHARD_BACKFILL,
    group_name=GROUP,
    code_version="1",
    kinds={"parquet"},
    deps=[assignments, raw_c4],
    tags={"mmc4/stage": "dedup"},
)
def deduped_docs(
    context: dg.AssetExecutionContext, config: DedupConfig, storage: StorageResource
) -> dg.MaterializeResult:
    """Documents with in-document perceptual duplicates removed and could_have_url_duplicate set."""
    shard, store, settings = context.partition_key, storage.store(), config.settings()
    docs, images, totals = StepStats(), StepStats(), DedupTotals()
    # URL duplicates are judged over every document of the shard, not only the survivors.
    # The corpus-wide rules (URL flags across shards, images in > 10 documents, near-duplicate
    # texts, NSFW) need every shard: corpus_image_counts / corpus_doc_index gather them and
    # published_shards applies them.
    url_flags = url_duplicate_flags(store.read_table("raw_c4", shard, ["url"])["url"].to_list())
    batches = store.iter_batches("assignments", shard, batch_size=config.docs_per_batch)
    with store.table_writer("deduped_docs", shard, DEDUPED_SCHEMA, settings.as_dict()) as out, docs.timer("dedup"):
        for row in dedup_documents(batches, url_flags, settings, docs, images, totals):
            out.append(row)
    return dg.MaterializeResult(
        metadata={
            "num_docs": docs.kept,
            "num_images": images.kept,
            "images_per_doc": round(images.kept / docs.kept, 3) if docs.kept else 0.0,
            "urls_with_duplicates": sum(url_flags.values()),
            "docs_reassigned": totals.docs_reassigned,
            **stats_metadata(docs, "docs", "documents"),
            **stats_metadata(images, "images", "images"),
            **settings.as_dict(),
            "config_hash": config_hash(config),
            "path": dg.MetadataValue.path(str(store.table_path("deduped_docs", shard))),
        }
    )


@shard_check(asset=deduped_docs, blocking=True)
def deduped_docs_have_unique_images(
    context: dg.AssetCheckExecutionContext, storage: StorageResource, quality: DataQuality
) -> dg.AssetCheckResult:
    """No two images of a document within the pHash threshold; no document without images."""
    return run_param_check(
        quality,
        storage,
        "deduped_docs",
        context.partition_key,
        "phash_threshold",
        DedupSettings.phash_threshold,
        deduped_docs_rules,
        suites.deduped_docs_frame,
        suites.deduped_docs_expectations,
    )
