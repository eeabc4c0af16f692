import dataclasses
import datetime as dt

import dagster as dg

from mmc4_assets import __version__
from mmc4_assets.defs.common import GROUP, check_result, config_hash, settings_config, settings_of, shard_check
from mmc4_assets.defs.corpus_common import latest_version
from mmc4_assets.defs.corpus_doc_index import corpus_doc_index
from mmc4_assets.defs.corpus_image_counts import corpus_image_counts
from mmc4_assets.defs.deduped_docs import deduped_docs
from mmc4_assets.defs.image_classifier_scores import image_classifier_scores
from mmc4_assets.defs.partitions import SHARD_BACKFILL, shards
from mmc4_assets.defs.quality import DataQuality, validate_suite
from mmc4_assets.defs.resources import StorageResource
from mmc4_assets.mmc4_params import CORE, FULL, STAGES, CoreRules, PublishSettings
from mmc4_assets.publish.shard import PublishError, check_published, publish_shard, shard_rules, slug
from mmc4_assets.publish.subsets import subset_folder
from mmc4_assets.quality import suites
from mmc4_assets.quality.funnel import funnel_rows
from mmc4_assets.stats import StepStats

CoreConfig = settings_config(
    "CoreConfig", CoreRules, "MMC4-core's rules (CoreRules in mmc4_params.py: defaults are MMC4's)."
)


class PublishConfig(dg.Config):
    """PublishSettings (mmc4_params.py: defaults and what each means)."""

    version: str = PublishSettings.version
    core_version: str = PublishSettings.core_version
    ndigits: int = PublishSettings.ndigits
    subsets: list[str] = list(PublishSettings.subsets)
    core: CoreConfig = CoreConfig()
    face_filter_scope: str = PublishSettings.face_filter_scope
    drop_near_duplicates: bool = PublishSettings.drop_near_duplicates
    drop_url_duplicates: bool = PublishSettings.drop_url_duplicates
    require_current_corpus: bool = PublishSettings.require_current_corpus

    def settings(self) -> PublishSettings:
        return dataclasses.replace(
            settings_of(self, PublishSettings), subsets=tuple(self.subsets), core=self.core.settings()
        )


def _upstream_metadata(context: dg.AssetExecutionContext) -> dict:
    """Model and config hashes of the upstream materializations this shard was built from (provenance)."""
    out = {}
    for asset in STAGES[:-1]:
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[context.partition_key]), limit=1
        ).records
        md = records[0].asset_materialization.metadata if records else {}
        out[asset] = {k: md[k].value for k in ("config_hash", "model", "random_weights") if k in md}
    return out


def _funnel(
    context: dg.AssetExecutionContext, docs: StepStats, images: StepStats, num_docs: int, num_images: int
) -> dg.MetadataValue:
    """Documents and images surviving each stage of this shard, with every drop reason (UI table)."""
    stage_md: dict[str, dict] = {}
    for asset in STAGES[:-1]:
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[context.partition_key]), limit=1
        ).records
        mat = records[0].asset_materialization if records else None
        if mat is not None:
            stage_md[asset] = {k: v.value for k, v in mat.metadata.items() if isinstance(v.value, (int, float))}
    stage_md["published_shards"] = {
        "num_docs": num_docs,
        "num_images": num_images,
        **{f"docs_dropped_{k}": n for k, n in docs.dropped.items()},
        **{f"images_dropped_{k}": n for k, n in images.dropped.items()},
    }
    return dg.MetadataValue.table(
        records=[dg.TableRecord(row) for row in funnel_rows(stage_md)],
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn("stage", "string"),
                dg.TableColumn("documents", "int"),
                dg.TableColumn("images", "int"),
                dg.TableColumn("dropped", "string"),
            ]
        ),
    )


@dg.asset(
    partitions_def=shards,
    backfill_policy=SHARD_BACKFILL,
    group_name=GROUP,
    code_version="2",
    kinds={"json"},
    deps=[deduped_docs, corpus_image_counts, corpus_doc_index, image_classifier_scores],
    tags={"mmc4/stage": "publish"},
)
def published_shards(
    context: dg.AssetExecutionContext, config: PublishConfig, storage: StorageResource
) -> dg.MaterializeResult:
    """The shard in MMC4's jsonl.zip format with a manifest, and its mmc4-ff / mmc4-core / mmc4-core-ff subsets."""
    shard, store, settings = context.partition_key, storage.store(), config.settings()
    upstream = _upstream_metadata(context)
    try:
        rules, decided = shard_rules(
            store, shard, settings, lambda asset: latest_version(context.instance, asset, shard)
        )
        common = {
            "source_shard": shard,
            "format": "mmc4",
            "mmc4_assets_version": __version__,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "model": upstream.get("clip_scores", {}).get("model"),
            "random_weights": upstream.get("clip_scores", {}).get("random_weights"),
            "upstream": upstream,
            "config_hash": config_hash(config),
            **decided,
        }
        result = publish_shard(store, shard, settings, rules, common)
    except PublishError as e:
        raise dg.Failure(str(e), allow_retries=False) from e

    published, names, subsets, stats = result.published, result.names, result.subsets, result.stats
    full_docs, full_images = stats[FULL]
    full = published[FULL]
    table = ["| subset | file | docs | images |", "|---|---|---:|---:|"]
    table += [
        f"| {s} | {'/'.join(subset_folder(s)[1:] + (names[s],))} | {published[s].num_docs} | "
        f"{published[s].num_images} |"
        for s in subsets
    ]
    table += [f"| {s} | skipped: {why} | | |" for s, why in result.skipped.items()]
    return dg.MaterializeResult(
        metadata={
            **{f"num_docs{slug(s)}": published[s].num_docs for s in subsets},
            **{f"num_images{slug(s)}": published[s].num_images for s in subsets},
            "filter_funnel": _funnel(context, full_docs, full_images, full.num_docs, full.num_images),
            "bytes": full.bytes,
            "sha256": full.sha256,
            "shard_file": names[FULL],
            "manifest": full.manifest_name,
            "subsets": dg.MetadataValue.md("\n".join(table)),
            "subset_files": dg.MetadataValue.json({s: result.path(s) for s in subsets}),
            "subsets_skipped": dg.MetadataValue.json(result.skipped),
            "docs_dropped": full_docs.total_dropped,
            **{f"docs_dropped_{k}": v for k, v in sorted(full_docs.dropped.items())},
            **{f"images_dropped_{k}": v for k, v in sorted(full_images.dropped.items())},
            "docs_drop_reasons": dg.MetadataValue.md(full_docs.as_markdown("documents")),
            "images_drop_reasons": dg.MetadataValue.md(full_images.as_markdown("images")),
            **(
                {"core_drop_reasons": dg.MetadataValue.md(stats[CORE][0].as_markdown("documents"))}
                if CORE in stats
                else {}
            ),
            "corpus_image_counts_version": decided["corpus"]["image_rule_generation"],
            "image_rule": decided["corpus"]["image_rule"],
            # always present (0 included), so the UI plots it across shards
            "images_dropped_by_image_rule": full_images.dropped.get("frequent_image", 0),
            "corpus_doc_index_version": decided["corpus"]["doc_index_version"],
            "nsfw_filter": decided["classifiers"]["nsfw"],
            "face_filter": decided["classifiers"]["face"],
            "model": upstream.get("clip_scores", {}).get("model") or "unknown",
            "config_hash": config_hash(config),
            "path": dg.MetadataValue.path(store.uri("published", names[FULL])),
        }
    )


@shard_check(asset=published_shards, blocking=True)
def published_shards_match_mmc4_schema(
    context: dg.AssetCheckExecutionContext, storage: StorageResource, quality: DataQuality
) -> dg.AssetCheckResult:
    """Every line of the shard and its subsets parses and matches the MMC4 schema; counts reconcile with deduped_docs;
    checksums = manifests; the full set's assignment is MMC4's (matched_sim = matrix entry, optimal total, surplus
    rule, best sentence >= min_sim).
    """
    shard = context.partition_key
    checked = check_published(storage.store(), shard)  # reads the manifests, never the event log
    suite = None
    if checked.full_lines is not None:
        suite = validate_suite(
            quality,
            "published_shards",
            shard,
            storage.root,
            lambda: suites.published_frame(checked.full_lines, checked.checksum_ok),
            lambda: suites.published_expectations(quality.thresholds(), checked.expected_docs),
        )
    return check_result(checked.outcome, suite, shard_file=checked.shard_file)
