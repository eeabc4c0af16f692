from typing import Literal

import dagster as dg

from mmc4_assets.assign.shard import ASSIGNMENTS_SCHEMA, AssignTotals, assign_batches
from mmc4_assets.defs.clip_scores import clip_scores
from mmc4_assets.defs.common import GROUP, config_hash, settings_of, shard_check, stats_metadata
from mmc4_assets.defs.partitions import SHARD_BACKFILL, shards
from mmc4_assets.defs.quality import DataQuality, run_param_check
from mmc4_assets.defs.resources import StorageResource
from mmc4_assets.mmc4_params import AssignSettings
from mmc4_assets.quality import suites
from mmc4_assets.quality.rules import assignments_rules
from mmc4_assets.stats import StepStats


class AssignmentsConfig(dg.Config):
    """AssignSettings (mmc4_params.py: MMC4's defaults and what each means), plus batching."""

    min_similarity: float = AssignSettings.min_similarity
    assignment: Literal["mmc4", "thresholded_argmax"] = AssignSettings.assignment
    docs_per_batch: int = 2000

    def settings(self) -> AssignSettings:
        return settings_of(self, AssignSettings)


@dg.asset(
    partitions_def=shards,
    backfill_policy=SHARD_BACKFILL,
    group_name=GROUP,
    code_version="1",
    kinds={"scipy", "parquet"},
    deps=[clip_scores],
    tags={"mmc4/stage": "assign"},
)
def assignments(
    context: dg.AssetExecutionContext, config: AssignmentsConfig, storage: StorageResource
) -> dg.MaterializeResult:
    """Each image placed on a sentence (matched_text_index, matched_sim) by linear assignment."""
    shard, store, settings = context.partition_key, storage.store(), config.settings()
    docs, images, totals = StepStats(), StepStats(), AssignTotals()
    batches = store.iter_batches("clip_scores", shard, batch_size=config.docs_per_batch)
    with store.table_writer("assignments", shard, ASSIGNMENTS_SCHEMA, settings.as_dict()) as out, docs.timer("assign"):
        for frame in assign_batches(batches, settings, docs, images, totals):
            out.write(frame)
    return dg.MaterializeResult(
        metadata={
            "num_docs": docs.kept,
            "num_images": images.kept,
            "mean_matched_sim": totals.mean_matched_sim(images.kept),
            "docs_solved_by_linear_assignment": totals.docs_solved,  # the rest took the exact argmax fast path
            **stats_metadata(docs, "docs", "documents"),
            **stats_metadata(images, "images", "images"),
            **settings.as_dict(),
            "config_hash": config_hash(config),
            "path": dg.MetadataValue.path(str(store.table_path("assignments", shard))),
        }
    )


@shard_check(asset=assignments, blocking=True)
def assignments_within_text_list(
    context: dg.AssetCheckExecutionContext, storage: StorageResource, quality: DataQuality
) -> dg.AssetCheckResult:
    """matched_text_index inside text_list, every kept image's best sentence >= min_similarity, one image per sentence
    but surplus.
    """
    return run_param_check(
        quality,
        storage,
        "assignments",
        context.partition_key,
        "min_similarity",
        AssignSettings.min_similarity,
        assignments_rules,
        suites.assignments_frame,
        suites.assignments_expectations,
    )
