import time
from typing import Literal

import dagster as dg
import polars as pl

from mmc4_assets.defs.common import GROUP, check_result, config_hash, shard_check, stats_metadata
from mmc4_assets.defs.partitions import SHARD_BACKFILL, shards
from mmc4_assets.defs.quality import DataQuality, validate_suite
from mmc4_assets.defs.resources import ShardSource, StorageResource
from mmc4_assets.defs.shard_pages import shard_pages
from mmc4_assets.pages.archives import PageRecord, build_page_index
from mmc4_assets.pages.page_table import SHARD_PAGES_TABLE, pages_from_rows
from mmc4_assets.pages.raw_docs import MAX_DOC_CHARS, document_rows, iter_c4_lines
from mmc4_assets.pages.recovery import common_crawl_pages, wanted_pages
from mmc4_assets.quality import suites
from mmc4_assets.quality.rules import raw_c4_rules
from mmc4_assets.stats import StepStats
from mmc4_assets.text.url_filter import MMC4_BLOCKED_KEYWORDS, MMC4_EXTENSIONS, UrlFilter

RAW_C4_SCHEMA = {
    "doc_id": pl.String,
    "line_no": pl.Int64,
    "url": pl.String,
    "timestamp": pl.String,
    "text_list": pl.List(pl.String),
    "image_urls": pl.List(pl.String),
    "page_source": pl.String,
}
QUARANTINE_SCHEMA = {"line_no": pl.Int64, "url": pl.String, "reason": pl.String, "raw": pl.String}


class RawC4Config(dg.Config):
    extensions: list[str] = list(MMC4_EXTENSIONS)
    blocked_keywords: list[str] = list(MMC4_BLOCKED_KEYWORDS)
    # longer documents are quarantined as too_long (docs/mmc4-rules.md); None: no cap
    max_doc_chars: int | None = MAX_DOC_CHARS
    sentence_splitter: Literal["punkt", "pysbd"] = "punkt"  # punkt: MMC4's; pysbd: the earlier one


@dg.asset(
    partitions_def=shards,
    backfill_policy=SHARD_BACKFILL,
    group_name=GROUP,
    code_version="1",
    kinds={"parquet"},
    tags={"mmc4/stage": "parse"},
    deps=[shard_pages],
)
def raw_c4(
    context: dg.AssetExecutionContext, config: RawC4Config, source: ShardSource, storage: StorageResource
) -> dg.MaterializeResult:
    """C4 documents of one shard split into text_list, with their page's candidate image URLs."""
    shard, store = context.partition_key, storage.store()
    doc_stats, image_stats = StepStats(), StepStats()
    url_filter = UrlFilter(
        tuple(e.lower() for e in config.extensions), tuple(k.lower() for k in config.blocked_keywords)
    )
    path = source.shard_path(shard)
    cc_stats = StepStats()
    with doc_stats.timer("page_index"):
        with source.open(str(path)) as fh:  # first streaming pass: the URLs (and times) we need
            wanted = wanted_pages(iter_c4_lines(fh))
        pages, lookup, archives = _shard_page_table(context, store, shard, source, wanted)
    context.log.info(f"{shard}: {len(pages)} of {len(wanted)} page URLs found ({lookup})")
    if source.common_crawl is not None and source.common_crawl.uses_cdx():
        missing = {k: v for k, v in wanted.items() if k not in pages}
        with doc_stats.timer("common_crawl"):
            pages.update(
                common_crawl_pages(store, shard, missing, source.common_crawl.settings(), cc_stats, context.log.info)
            )
        context.log.info(f"{shard}: {cc_stats.kept} of {len(missing)} remaining pages found in Common Crawl")

    started = time.perf_counter()
    with (
        store.table_writer("raw_c4_quarantine", shard, QUARANTINE_SCHEMA) as quarantine,
        store.table_writer("raw_c4", shard, RAW_C4_SCHEMA, config.model_dump()) as out,
        source.open(str(path)) as fh,
    ):
        for row in document_rows(
            iter_c4_lines(fh),
            pages,
            shard,
            url_filter,
            doc_stats,
            image_stats,
            quarantine.append,
            max_chars=config.max_doc_chars,
            splitter=config.sentence_splitter,
        ):
            out.append(row)
        # the counts the check reconciles with, carried with the table
        out.params.update(
            num_lines=doc_stats.seen,
            image_urls_kept=image_stats.kept,
            image_url_drops=dict(sorted(image_stats.dropped.items())),
        )
    doc_stats.timings["parse"] = time.perf_counter() - started

    return dg.MaterializeResult(
        metadata={
            "num_docs": doc_stats.kept,
            "num_lines": doc_stats.seen,
            "num_candidate_images": image_stats.kept,
            **stats_metadata(doc_stats, "docs", "documents"),
            **stats_metadata(image_stats, "image_urls", "image URLs"),
            "page_records_found": len(pages),
            "page_lookup": lookup,
            "page_archives": archives,
            **(
                stats_metadata(cc_stats, "cc_pages", "Common Crawl lookups")
                if source.common_crawl is not None and source.common_crawl.uses_cdx()
                else {}
            ),
            # the Common Crawl settings shape which pages are found: part of the hash when used
            "config_hash": config_hash(
                config, *([source.common_crawl.model_dump()] if source.common_crawl is not None else [])
            ),
            "path": dg.MetadataValue.path(str(store.table_path("raw_c4", shard))),
        }
    )


def _shard_page_table(
    context: dg.AssetExecutionContext, store, shard: str, source: ShardSource, wanted: dict
) -> tuple[dict[str, PageRecord], str, int]:
    """(pages by URL key, how they were found, archives read here).

    The shard's ``shard_pages`` table (the join's output) when it exists: O(shard). Without
    it, a run with a handful of archives (the sample, a test) reads them itself; more than
    ``max_scanned_archives`` would cost archives x shards, so that fails and asks for the join.
    """
    if store.has_table(SHARD_PAGES_TABLE, shard):
        table = store.read_table(SHARD_PAGES_TABLE, shard)
        return pages_from_rows(table.iter_rows(named=True)), "shard_pages", 0
    paths = source.archive_paths()
    if len(paths) > source.max_scanned_archives:
        raise dg.Failure(
            f"{shard}: no shard_pages table, and {len(paths)} page archives are too many to scan per shard "
            f"(max_scanned_archives={source.max_scanned_archives}): materialize page_records for the archives "
            "and shard_pages for the shards first (one backfill: one join)",
            allow_retries=False,
        )
    if paths:
        context.log.warning(f"{shard}: no shard_pages table; scanning {len(paths)} archives in this run")
    return build_page_index(paths, wanted, source.open), "archive_scan" if paths else "none", len(paths)


@shard_check(asset=raw_c4, blocking=True)
def raw_c4_documents_well_formed(
    context: dg.AssetCheckExecutionContext, storage: StorageResource, quality: DataQuality
) -> dg.AssetCheckResult:
    """Unique doc ids, non-null url/text, sentences and candidates per doc, URL-filter drop share within bounds."""
    store, shard = storage.store(), context.partition_key
    docs = store.read_table("raw_c4", shard)
    quarantine = store.read_table("raw_c4_quarantine", shard)
    ran = store.read_table_params("raw_c4", shard)  # written with the table: its counts
    image_drops = ran.get("image_url_drops")
    kept, dropped = ran.get("image_urls_kept", 0), sum((image_drops or {}).values())
    drop_share = dropped / (kept + dropped) if kept + dropped else 0.0
    thresholds = quality.thresholds()
    suite = validate_suite(
        quality,
        "raw_c4",
        shard,
        storage.root,
        lambda: suites.raw_c4_frame(docs, drop_share),
        lambda: suites.raw_c4_expectations(thresholds),
    )
    outcome = raw_c4_rules(
        docs, quarantine, ran.get("num_lines"), quality.allow_truncated_source, image_drops, kept if ran else None
    )
    return check_result(outcome, suite, url_filter_drop_share=round(drop_share, 4))
