import time

import dagster as dg
import polars as pl

from mmc4_assets.clip.shard import CLIP_SCORES_SCHEMA, features_schema, score_batch
from mmc4_assets.defs.common import GROUP, check_result, config_hash, stats_metadata
from mmc4_assets.defs.fetched_images import fetched_images
from mmc4_assets.defs.partitions import shards
from mmc4_assets.defs.quality import DataQuality, validate_suite
from mmc4_assets.defs.raw_c4 import raw_c4
from mmc4_assets.defs.resources import ClipModel, StorageResource
from mmc4_assets.quality import suites
from mmc4_assets.quality.rules import clip_scores_rules
from mmc4_assets.stats import StepStats


class ClipScoresConfig(dg.Config):
    docs_per_batch: int = 256


def _ok_images_by_doc(store, shard: str) -> dict[str, list[dict]]:
    ok = (pl.scan_parquet(store.table_path("fetched_images", shard).path)
          if store.is_local else store.read_table("fetched_images", shard).lazy())
    ok = (ok.filter(pl.col("status") == "ok")
            .select("doc_id", "image_index", "image_name", "raw_url", "phash")
            .sort("doc_id", "image_index").collect())
    grouped: dict[str, list[dict]] = {}
    for row in ok.iter_rows(named=True):
        grouped.setdefault(row["doc_id"], []).append(row)
    return grouped


@dg.asset(partitions_def=shards, group_name=GROUP, code_version="1", kinds={"pytorch", "parquet"},
          deps=[fetched_images, raw_c4], tags={"mmc4/stage": "clip"},
          op_tags={"mmc4/device": "gpu"})
def clip_scores(context: dg.AssetExecutionContext, config: ClipScoresConfig, clip: ClipModel,
                storage: StorageResource) -> dg.MaterializeResult:
    """Per document, the CLIP cosine similarity_matrix of its fetched images x its sentences; image features alongside."""
    shard, store, stats = context.partition_key, storage.store(), StepStats()
    started = time.perf_counter()
    encoder = clip.encoder()
    stats.timings["model_load"] = time.perf_counter() - started
    images_by_doc = _ok_images_by_doc(store, shard)
    seen: set[str] = set()
    num_sentences = 0
    with store.table_writer("clip_scores", shard, CLIP_SCORES_SCHEMA) as out, \
            store.table_writer("clip_image_features", shard, features_schema(encoder.embed_dim)) as feats, \
            stats.timer("score"):
        for batch in store.iter_batches("raw_c4", shard, ["doc_id", "url", "text_list"], config.docs_per_batch):
            rows, features = score_batch(batch.to_dicts(), images_by_doc, encoder, store.get_blob, stats, seen)
            num_sentences += sum(len(r["text_list"]) for r in rows)
            out.write(rows)
            feats.write(features)
    return dg.MaterializeResult(metadata={
        "num_docs": stats.kept,
        "num_images_scored": len(seen),
        "num_sentences": num_sentences,
        **stats_metadata(stats, "docs", "documents"),
        "model": encoder.description,
        "model_name": clip.model_name,
        "random_weights": encoder.spec.is_random,
        "device": encoder.device,
        "precision": clip.precision,
        "config_hash": config_hash(config, clip.model_dump()),
        "path": dg.MetadataValue.path(store.uri("tables", "clip_scores", f"{shard}.parquet")),
        "features_path": dg.MetadataValue.path(store.uri("tables", "clip_image_features", f"{shard}.parquet")),
    })


@dg.asset_check(asset=clip_scores, blocking=True)
def clip_scores_are_cosines(context: dg.AssetCheckExecutionContext, storage: StorageResource,
                            quality: DataQuality) -> dg.AssetCheckResult:
    """Matrix shape = images x sentences per doc, finite values in [-1, 1], unit-norm features."""
    store, shard = storage.store(), context.partition_key
    scores = store.read_table("clip_scores", shard)
    features = store.read_table("clip_image_features", shard)
    thresholds = quality.thresholds()
    suite = validate_suite(quality, "clip_scores", shard, storage.root,
                           lambda: suites.clip_scores_frame(scores, features),
                           lambda: suites.clip_scores_expectations(thresholds))
    return check_result(clip_scores_rules(scores, features), suite)
