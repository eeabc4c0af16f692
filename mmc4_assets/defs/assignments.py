from typing import Literal

import dagster as dg

from mmc4_assets.assign.shard import ASSIGNMENTS_SCHEMA, assign_frame
from mmc4_assets.defs.clip_scores import clip_scores
from mmc4_assets.defs.common import GROUP, check_result, config_hash, latest_metadata, shard_check, stats_metadata
from mmc4_assets.defs.partitions import SHARD_BACKFILL, shards
from mmc4_assets.defs.quality import DataQuality, validate_suite
from mmc4_assets.defs.resources import StorageResource
from mmc4_assets.quality import suites
from mmc4_assets.quality.rules import assignments_rules
from mmc4_assets.stats import StepStats


class AssignmentsConfig(dg.Config):
    min_similarity: float = 0.15  # MMC4: drop images whose best sentence is below this
    # "mmc4": MMC4's compute_assignments.py (linear assignment over the kept images' whole
    # matrix, argmax only for images beyond the sentences); "thresholded_argmax": this
    # project's earlier variant (pairs below min_similarity forbidden). See docs/mmc4-rules.md.
    assignment: Literal["mmc4", "thresholded_argmax"] = "mmc4"
    docs_per_batch: int = 2000


@dg.asset(partitions_def=shards, backfill_policy=SHARD_BACKFILL, group_name=GROUP, code_version="1", kinds={"scipy", "parquet"},
          deps=[clip_scores], tags={"mmc4/stage": "assign"})
def assignments(context: dg.AssetExecutionContext, config: AssignmentsConfig,
                storage: StorageResource) -> dg.MaterializeResult:
    """Each image placed on a sentence (matched_text_index, matched_sim) by linear assignment."""
    shard, store = context.partition_key, storage.store()
    docs, images = StepStats(), StepStats()
    sim_sum, solved = 0.0, 0  # running totals: nothing of the shard is kept but the current batch
    with store.table_writer("assignments", shard, ASSIGNMENTS_SCHEMA) as out, docs.timer("assign"):
        for batch in store.iter_batches("clip_scores", shard, batch_size=config.docs_per_batch):
            assigned = assign_frame(batch, config.min_similarity, config.assignment)
            docs.keep(assigned.frame.height)
            images.keep(assigned.images_kept)
            if assigned.docs_in > assigned.frame.height:
                docs.drop("no_image_above_min_similarity", assigned.docs_in - assigned.frame.height)
            if assigned.images_dropped:
                images.drop("below_min_similarity", assigned.images_dropped)
            sim_sum, solved = sim_sum + assigned.matched_sim_sum, solved + assigned.docs_solved
            out.write(assigned.frame)
    return dg.MaterializeResult(metadata={
        "num_docs": docs.kept,
        "num_images": images.kept,
        "mean_matched_sim": round(sim_sum / images.kept, 4) if images.kept else 0.0,
        "docs_solved_by_linear_assignment": solved,  # the rest took the exact argmax fast path
        **stats_metadata(docs, "docs", "documents"),
        **stats_metadata(images, "images", "images"),
        "min_similarity": config.min_similarity,
        "assignment": config.assignment,
        "config_hash": config_hash(config),
        "path": dg.MetadataValue.path(store.uri("tables", "assignments", f"{shard}.parquet")),
    })


@shard_check(asset=assignments, blocking=True)
def assignments_within_text_list(context: dg.AssetCheckExecutionContext, storage: StorageResource,
                                 quality: DataQuality) -> dg.AssetCheckResult:
    """matched_text_index inside text_list, every kept image's best sentence >= min_similarity, one image per sentence but surplus."""
    shard = context.partition_key
    min_sim = latest_metadata(context, "assignments").get("min_similarity", 0.15)
    assigned = storage.store().read_table("assignments", shard)
    thresholds = quality.thresholds(min_similarity=min_sim)
    suite = validate_suite(quality, "assignments", shard, storage.root,
                           lambda: suites.assignments_frame(assigned),
                           lambda: suites.assignments_expectations(thresholds))
    return check_result(assignments_rules(assigned, min_sim), suite, min_similarity=min_sim)
