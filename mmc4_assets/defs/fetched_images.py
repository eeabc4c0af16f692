from typing import Literal

import dagster as dg

from mmc4_assets.defs.common import GROUP, check_result, config_hash, shard_check, stats_metadata
from mmc4_assets.defs.partitions import SHARD_BACKFILL, shards
from mmc4_assets.defs.quality import DataQuality, validate_suite
from mmc4_assets.defs.raw_c4 import raw_c4
from mmc4_assets.defs.resources import ImageFetcher, StorageResource
from mmc4_assets.fetch.images import ImageLimits
from mmc4_assets.fetch.shard import FETCHED_SCHEMA, FetchProgress, ShardOptions, fetch_documents
from mmc4_assets.quality import suites
from mmc4_assets.quality.funnel import success_rate_drift
from mmc4_assets.quality.rules import fetched_images_rules
from mmc4_assets.stats import StepStats


class FetchConfig(dg.Config):
    """MMC4's image limits (ImageLimits in mmc4_params.py, defaults there), plus how the shard is fetched."""

    min_side: int = ImageLimits.min_side
    max_aspect: float = ImageLimits.max_aspect
    max_side: int = ImageLimits.max_side
    docs_per_batch: int = 500
    decode_workers: int = 0  # threads that decode, resize, hash and store; 0 = cores + 1
    # Rows in this shard's fetch log that a re-run reuses instead of requesting again:
    # none = all of them; transient (default) = all but timeouts, connection errors,
    # 429 and 5xx; failures = only ok rows; all = ignore the log.
    refetch: Literal["none", "transient", "failures", "all"] = "transient"
    log_flush_rows: int = 2048  # the fetch log gets a new part this often (or every 30 s)
    progress_log_seconds: float = 15.0

    def limits(self) -> ImageLimits:
        return ImageLimits(min_side=self.min_side, max_aspect=self.max_aspect, max_side=self.max_side)


@dg.asset(
    partitions_def=shards,
    backfill_policy=SHARD_BACKFILL,
    group_name=GROUP,
    code_version="1",
    kinds={"parquet"},
    deps=[raw_c4],
    tags={"mmc4/stage": "fetch"},
    pool="mmc4_fetch",
    retry_policy=dg.RetryPolicy(max_retries=1, delay=30),
)
def fetched_images(
    context: dg.AssetExecutionContext, config: FetchConfig, fetcher: ImageFetcher, storage: StorageResource
) -> dg.MaterializeResult:
    """One row per candidate image of a shard: fetch status or drop reason, size, content hash, pHash."""
    shard, store, stats = context.partition_key, storage.store(), StepStats()
    limits = config.limits()
    settings = fetcher.settings()
    options = ShardOptions(
        refetch=config.refetch,
        workers=config.decode_workers,
        log_flush_rows=config.log_flush_rows,
        progress_every=config.progress_log_seconds,
    )
    total = store.read_table("raw_c4", shard, ["image_urls"])["image_urls"].list.len().sum() or 0
    final: list[FetchProgress] = []

    def progress(p: FetchProgress) -> None:
        final[:] = [p]
        context.log.info(f"{shard}: {p.describe()}")

    docs = (
        doc
        for batch in store.iter_batches("raw_c4", shard, ["doc_id", "image_urls"], config.docs_per_batch)
        for doc in batch.iter_rows(named=True)
    )
    with store.table_writer("fetched_images", shard, FETCHED_SCHEMA, limits.as_dict()) as out, stats.timer("fetch"):
        for row in fetch_documents(
            docs,
            store=store,
            shard=shard,
            settings=settings,
            limits=limits,
            stats=stats,
            options=options,
            total=total,
            on_progress=progress,
        ):
            out.append(row)
    seen = stats.seen
    reused = final[0].reused if final else 0
    return dg.MaterializeResult(
        metadata={
            "num_candidates": seen,
            "num_ok": stats.kept,
            "num_reused_from_fetch_log": reused,
            "num_requested": seen - reused,
            "success_rate": round(stats.kept / seen, 4) if seen else 0.0,
            "images_per_second": round(seen / stats.timings["fetch"], 2) if seen else 0.0,
            **stats_metadata(stats, "images", "images"),
            "min_side": config.min_side,
            "max_aspect": config.max_aspect,
            "max_side": config.max_side,
            "allow_private": settings.allow_private,
            "refetch": config.refetch,
            "user_agent": settings.user_agent,
            "config_hash": config_hash(
                config.model_dump(exclude={"refetch", "progress_log_seconds"}),
                settings.__dict__ | {"url_rewrites": sorted(settings.url_rewrites)},
            ),
            "path": dg.MetadataValue.path(str(store.table_path("fetched_images", shard))),
        }
    )


@shard_check(asset=fetched_images, blocking=True)
def fetched_images_match_raw_c4(
    context: dg.AssetCheckExecutionContext, storage: StorageResource, quality: DataQuality
) -> dg.AssetCheckResult:
    """Every candidate URL of raw_c4 has one row; success rate above the floor; kept images obey MMC4's size, aspect and
    resize rules.
    """
    store, shard = storage.store(), context.partition_key
    # the limits the table was made with, stored beside it (MMC4's for a table from before)
    ran_with = {**ImageLimits().as_dict(), **store.read_table_params("fetched_images", shard)}
    params = {k: ran_with[k] for k in ("min_side", "max_aspect", "max_side")}
    fetched = store.read_table("fetched_images", shard)
    outcome = fetched_images_rules(fetched, store.read_table("raw_c4", shard, ["image_urls"]), **params)
    thresholds = quality.thresholds(**params)
    suite = validate_suite(
        quality,
        "fetched_images",
        shard,
        storage.root,
        lambda: suites.fetched_images_frame(fetched),
        lambda: suites.fetched_images_expectations(thresholds),
    )
    return check_result(outcome, suite, min_fetch_success_rate=thresholds.min_fetch_success_rate)


@shard_check(asset=fetched_images, blocking=False)
def fetched_images_success_rate_stable(
    context: dg.AssetCheckExecutionContext, quality: DataQuality
) -> dg.AssetCheckResult:
    """Warns when this shard's fetch success rate is well below the trailing mean of earlier shards (dead hosts,
    blocking, a bad config).
    """
    records = context.instance.fetch_materializations(
        dg.AssetKey("fetched_images"), limit=quality.trailing_partitions + 1
    ).records
    current, earlier = None, []
    for record in records:
        mat = record.asset_materialization
        rate = mat.metadata.get("success_rate") if mat else None
        if rate is None:
            continue
        if mat.partition == context.partition_key and current is None:
            current = rate.value
        elif mat.partition != context.partition_key:
            earlier.append(rate.value)
    if current is None:
        return dg.AssetCheckResult(
            passed=False, severity=dg.AssetCheckSeverity.WARN, description="no materialization of this shard to compare"
        )
    ok, trailing = success_rate_drift(current, earlier, quality.max_success_rate_drop)
    return dg.AssetCheckResult(
        passed=ok,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "success_rate": current,
            "trailing_mean": trailing if trailing is not None else -1.0,
            "trailing_partitions": len(earlier),
            "max_drop": quality.max_success_rate_drop,
        },
        description="no earlier shards yet"
        if trailing is None
        else f"success rate {current:.3f} vs trailing mean {trailing:.3f} of {len(earlier)} shards",
    )
