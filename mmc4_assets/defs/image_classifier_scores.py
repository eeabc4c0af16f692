import dagster as dg

from mmc4_assets.classify.shard import SCORES_SCHEMA, score_features
from mmc4_assets.defs.classifiers import FeatureClassifiers
from mmc4_assets.defs.clip_scores import clip_scores
from mmc4_assets.defs.common import SIGNALS_GROUP, config_hash, latest_metadata
from mmc4_assets.defs.partitions import SHARD_BACKFILL, shards
from mmc4_assets.defs.resources import StorageResource
from mmc4_assets.stats import StepStats


def _filter_status(model, threshold: float) -> str:
    if model is None:
        return "off: no weights configured"
    return f"on: {model.format} {model.path} (sha256 {model.sha256[:12]}), flag p > {threshold}"


@dg.asset(partitions_def=shards, backfill_policy=SHARD_BACKFILL, group_name=SIGNALS_GROUP, code_version="1", kinds={"pytorch", "parquet"},
          deps=[clip_scores], tags={"mmc4/stage": "classify"})
def image_classifier_scores(context: dg.AssetExecutionContext, storage: StorageResource,
                            classifiers: FeatureClassifiers) -> dg.MaterializeResult:
    """Per image with CLIP features, p(nsfw) and p(face) with their flags; null where a classifier is off."""
    shard, store = context.partition_key, storage.store()
    clip_md = latest_metadata(context, "clip_scores")
    nsfw, face = classifiers.nsfw(), classifiers.face()
    if (nsfw or face) and classifiers.feature_model and clip_md.get("model_name") != classifiers.feature_model:
        raise dg.Failure(
            f"classifiers were trained on {classifiers.feature_model} features, but clip_scores for "
            f"{shard} used {clip_md.get('model_name')!r}: their probabilities would mean nothing")
    nsfw_stats, face_stats = StepStats(), StepStats()
    with store.table_writer("image_classifier_scores", shard, SCORES_SCHEMA) as out:
        for batch in store.iter_batches("clip_image_features", shard, batch_size=classifiers.batch_size):
            out.write(score_features(batch, nsfw, classifiers.nsfw_threshold, face,
                                     classifiers.face_threshold, nsfw_stats, face_stats))
    described = {"nsfw": nsfw.describe() if nsfw else None, "face": face.describe() if face else None}
    return dg.MaterializeResult(metadata={
        "num_images": out.rows,
        "nsfw_filter": _filter_status(nsfw, classifiers.nsfw_threshold),
        "face_filter": _filter_status(face, classifiers.face_threshold),
        "nsfw_on": nsfw is not None, "face_on": face is not None,
        "nsfw_threshold": classifiers.nsfw_threshold, "face_threshold": classifiers.face_threshold,
        "classifiers": dg.MetadataValue.json(described),
        "feature_model": clip_md.get("model_name") or "unknown",
        # counts only for a classifier that ran: an off filter flags nothing, it does not pass all
        **({"num_nsfw": nsfw_stats.dropped["nsfw"]} if nsfw else {}),
        **({"num_face": face_stats.dropped["face"]} if face else {}),
        "config_hash": config_hash(classifiers.model_dump()),
        "path": dg.MetadataValue.path(store.uri("tables", "image_classifier_scores", f"{shard}.parquet")),
    })
