import time

import dagster as dg
import polars as pl

from mmc4_assets.defs.common import GROUP, check_result, config_hash, latest_metadata, stats_metadata
from mmc4_assets.defs.partitions import shards
from mmc4_assets.defs.resources import ShardSource, StorageResource
from mmc4_assets.pages.archives import build_page_index
from mmc4_assets.pages.raw_docs import document_rows, iter_c4_lines, wanted_urls
from mmc4_assets.quality.rules import raw_c4_rules
from mmc4_assets.stats import StepStats
from mmc4_assets.text.url_filter import MMC4_BLOCKED_KEYWORDS, MMC4_EXTENSIONS, UrlFilter

RAW_C4_SCHEMA = {
    "doc_id": pl.String, "line_no": pl.Int64, "url": pl.String, "timestamp": pl.String,
    "text_list": pl.List(pl.String), "image_urls": pl.List(pl.String), "page_source": pl.String,
}
QUARANTINE_SCHEMA = {"line_no": pl.Int64, "url": pl.String, "reason": pl.String, "raw": pl.String}


class RawC4Config(dg.Config):
    extensions: list[str] = list(MMC4_EXTENSIONS)
    blocked_keywords: list[str] = list(MMC4_BLOCKED_KEYWORDS)


@dg.asset(partitions_def=shards, group_name=GROUP, code_version="1", kinds={"parquet"},
          tags={"mmc4/stage": "parse"})
def raw_c4(context: dg.AssetExecutionContext, config: RawC4Config, source: ShardSource,
           storage: StorageResource) -> dg.MaterializeResult:
    """C4 documents of one shard split into text_list, with their page's candidate image URLs."""
    shard, store = context.partition_key, storage.store()
    doc_stats, image_stats = StepStats(), StepStats()
    url_filter = UrlFilter(tuple(e.lower() for e in config.extensions),
                           tuple(k.lower() for k in config.blocked_keywords))
    path = source.shard_path(shard)
    with doc_stats.timer("page_index"):
        with source.open(str(path)) as fh:
            wanted = wanted_urls(iter_c4_lines(fh))
        archives = source.archive_paths()
        pages = build_page_index(archives, wanted, source.open)
    context.log.info(f"{shard}: {len(pages)} of {len(wanted)} page URLs found in {len(archives)} archives")

    started = time.perf_counter()
    with store.table_writer("raw_c4_quarantine", shard, QUARANTINE_SCHEMA) as quarantine, \
            store.table_writer("raw_c4", shard, RAW_C4_SCHEMA) as out, source.open(str(path)) as fh:
        for row in document_rows(iter_c4_lines(fh), pages, shard, url_filter, doc_stats,
                                 image_stats, quarantine.append):
            out.append(row)
    doc_stats.timings["parse"] = time.perf_counter() - started

    return dg.MaterializeResult(metadata={
        "num_docs": doc_stats.kept,
        "num_lines": doc_stats.seen,
        "num_candidate_images": image_stats.kept,
        **stats_metadata(doc_stats, "docs", "documents"),
        **stats_metadata(image_stats, "image_urls", "image URLs"),
        "page_records_found": len(pages),
        "page_archives": len(archives),
        "config_hash": config_hash(config),
        "path": dg.MetadataValue.path(store.uri("tables", "raw_c4", f"{shard}.parquet")),
    })


@dg.asset_check(asset=raw_c4, blocking=True)
def raw_c4_documents_well_formed(context: dg.AssetCheckExecutionContext,
                                 storage: StorageResource) -> dg.AssetCheckResult:
    """Unique doc ids, non-null url/text, sentences and candidates per doc, every line accounted for."""
    store, shard = storage.store(), context.partition_key
    docs = store.read_table("raw_c4", shard)
    quarantine = store.read_table("raw_c4_quarantine", shard)
    lines = latest_metadata(context, "raw_c4").get("num_lines")
    return check_result(raw_c4_rules(docs, quarantine, lines))
