import time

import dagster as dg

from mmc4_assets.clip.shard import write_clip_scores
from mmc4_assets.defs.common import GROUP, check_result, config_hash, shard_check, stats_metadata
from mmc4_assets.defs.fetched_images import fetched_images
from mmc4_assets.defs.partitions import SHARD_BACKFILL, shards
from mmc4_assets.defs.quality import DataQuality, validate_suite
from mmc4_assets.defs.raw_c4 import raw_c4
from mmc4_assets.defs.resources import ClipModel, StorageResource
from mmc4_assets.quality import suites
from mmc4_assets.quality.rules import clip_scores_rules
from mmc4_assets.stats import StepStats


class ClipScoresConfig(dg.Config):
    docs_per_batch: int = 256
    fetched_rows_per_batch: int = 4096  # fetched_images rows read at a time for the merge-join


@dg.asset(
    partitions_def=shards,
    backfill_policy=SHARD_BACKFILL,
    group_name=GROUP,
    code_version="2",
    kinds={"pytorch", "parquet"},
    deps=[fetched_images, raw_c4],
    tags={"mmc4/stage": "clip"},
    op_tags={"mmc4/device": "gpu"},
)
def clip_scores(
    context: dg.AssetExecutionContext, config: ClipScoresConfig, clip: ClipModel, storage: StorageResource
) -> dg.MaterializeResult:
    """Per document, the CLIP cosine similarity_matrix of its fetched images x its sentences;
    image features alongside."""
    shard, store, stats = context.partition_key, storage.store(), StepStats()
    started = time.perf_counter()
    encoder = clip.encoder()
    stats.timings["model_load"] = time.perf_counter() - started
    # the model travels with the scores and features: image_classifier_scores checks it there
    params = {"model_name": clip.model_name, "model": encoder.description, "random_weights": encoder.spec.is_random}
    with clip.scorer(store.get_blob) as scorer, stats.timer("score"):
        totals = write_clip_scores(
            store,
            shard,
            scorer,
            stats,
            docs_per_batch=config.docs_per_batch,
            fetched_rows_per_batch=config.fetched_rows_per_batch,
            params=params,
        )
    stats.timings.update(scorer.timings)
    stats.timings.update(scorer.background_cpu)
    seconds = stats.timings["score"]
    return dg.MaterializeResult(
        metadata={
            "num_docs": stats.kept,
            "num_images_scored": totals.images_scored,
            "num_sentences": totals.sentences,
            "sentences_encoded": totals.sentences_encoded,  # distinct sentences missed by the shard cache
            "images_encoded": totals.images_encoded,
            "images_per_second": round(totals.images_encoded / seconds, 2) if seconds else 0.0,
            **stats_metadata(stats, "docs", "documents"),
            "model": encoder.description,
            "model_name": clip.model_name,
            "random_weights": encoder.spec.is_random,
            "device": encoder.device,
            "precision": encoder.precision,
            "compiled": encoder.compiled,
            "decode_workers": scorer.decode_workers,
            "config_hash": config_hash(config, clip.model_dump()),
            "path": dg.MetadataValue.path(str(store.table_path("clip_scores", shard))),
            "features_path": dg.MetadataValue.path(str(store.table_path("clip_image_features", shard))),
        }
    )


@shard_check(asset=clip_scores, blocking=True)
def clip_scores_are_cosines(
    context: dg.AssetCheckExecutionContext, storage: StorageResource, quality: DataQuality
) -> dg.AssetCheckResult:
    """Matrix shape = images x sentences per doc, finite values in [-1, 1], unit-norm features."""
    store, shard = storage.store(), context.partition_key
    scores = store.read_table("clip_scores", shard)
    features = store.read_table("clip_image_features", shard)
    thresholds = quality.thresholds()
    suite = validate_suite(
        quality,
        "clip_scores",
        shard,
        storage.root,
        lambda: suites.clip_scores_frame(scores, features),
        lambda: suites.clip_scores_expectations(thresholds),
    )
    return check_result(clip_scores_rules(scores, features), suite)
