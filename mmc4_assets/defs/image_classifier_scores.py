import dagster as dg

from mmc4_assets.classify.shard import SCORES_SCHEMA, score_features
from mmc4_assets.defs.classifiers import FeatureClassifiers
from mmc4_assets.defs.clip_scores import clip_scores
from mmc4_assets.defs.common import SIGNALS_GROUP, config_hash
from mmc4_assets.defs.partitions import SHARD_BACKFILL, shards
from mmc4_assets.defs.resources import StorageResource
from mmc4_assets.stats import StepStats


def _filter_status(model, threshold: float) -> str:
    if model is None:
        return "off: no weights configured"
    return f"on: {model.format} {model.path} (sha256 {model.sha256[:12]}), flag p > {threshold}"


@dg.asset(
    partitions_def=shards,
    backfill_policy=SHARD_BACKFILL,
    group_name=SIGNALS_GROUP,
    code_version="1",
    kinds={"pytorch", "parquet"},
    deps=[clip_scores],
    tags={"mmc4/stage": "classify"},
)
def image_classifier_scores(
    context: dg.AssetExecutionContext, storage: StorageResource, classifiers: FeatureClassifiers
) -> dg.MaterializeResult:
    """Per image with CLIP features, p(nsfw) and p(face) with their flags; null where a classifier is off."""
    shard, store = context.partition_key, storage.store()
    # the model the features came from, stored with them by clip_scores
    feature_model = store.read_table_params("clip_image_features", shard).get("model_name")
    nsfw, face = classifiers.nsfw(), classifiers.face()
    if (nsfw or face) and classifiers.feature_model and feature_model != classifiers.feature_model:
        raise dg.Failure(
            f"classifiers were trained on {classifiers.feature_model} features, but clip_scores for "
            f"{shard} used {feature_model!r}: their probabilities would mean nothing"
        )
    settings = classifiers.settings()
    nsfw_stats, face_stats = StepStats(), StepStats()
    described = {"nsfw": nsfw.describe() if nsfw else None, "face": face.describe() if face else None}
    # what publishing needs to know, carried with the scores (read_table_params)
    params = {
        **settings.as_dict(),
        "nsfw_on": nsfw is not None,
        "face_on": face is not None,
        "nsfw_filter": _filter_status(nsfw, settings.nsfw_threshold),
        "face_filter": _filter_status(face, settings.face_threshold),
        "classifiers": described,
        "feature_model": feature_model,
    }
    with store.table_writer("image_classifier_scores", shard, SCORES_SCHEMA, params) as out:
        for batch in store.iter_batches("clip_image_features", shard, batch_size=classifiers.batch_size):
            out.write(
                score_features(
                    batch, nsfw, settings.nsfw_threshold, face, settings.face_threshold, nsfw_stats, face_stats
                )
            )
    return dg.MaterializeResult(
        metadata={
            "num_images": out.rows,
            **params,
            "classifiers": dg.MetadataValue.json(described),
            "feature_model": feature_model or "unknown",
            # counts only for a classifier that ran: an off filter flags nothing, it does not pass all
            **({"num_nsfw": nsfw_stats.dropped["nsfw"]} if nsfw else {}),
            **({"num_face": face_stats.dropped["face"]} if face else {}),
            "config_hash": config_hash(classifiers.model_dump()),
            "path": dg.MetadataValue.path(str(store.table_path("image_classifier_scores", shard))),
        }
    )
