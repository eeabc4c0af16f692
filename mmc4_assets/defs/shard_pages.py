import dagster as dg
import polars as pl

from mmc4_assets.defs.common import config_hash
from mmc4_assets.defs.page_records import PAGES_GROUP, page_records
from mmc4_assets.defs.partitions import JOIN_BACKFILL, archives, shards
from mmc4_assets.defs.resources import DaskEngine, ShardSource, StorageResource
from mmc4_assets.pages.join import Location, join_shard_pages
from mmc4_assets.pages.page_table import PAGE_RECORDS_TABLE, SHARD_PAGES_TABLE


def joined_archives(instance: dg.DagsterInstance) -> list[str]:
    """Registered archives whose page records exist (a failed or unread archive is left out)."""
    registered = instance.get_dynamic_partitions(archives.name)
    done = instance.get_materialized_partitions(dg.AssetKey("page_records"))
    return [k for k in registered if k in done]


@dg.asset(
    partitions_def=shards,
    backfill_policy=JOIN_BACKFILL,
    group_name=PAGES_GROUP,
    code_version="1",
    kinds={"dask", "parquet"},
    tags={"mmc4/stage": "pages"},
    deps=[dg.AssetDep(page_records, partition_mapping=dg.AllPartitionMapping())],
)
def shard_pages(
    context: dg.AssetExecutionContext, source: ShardSource, storage: StorageResource, dask: DaskEngine
) -> dg.MaterializeResult:
    """For each URL of a C4 shard, the one capture its page comes from (archives, then Common
    Crawl's columnar index)."""
    from mmc4_assets.engine import dask_client

    keys = list(context.partition_keys)  # a backfill of N shards is one run: one join
    store = storage.store()
    archive_keys = joined_archives(context.instance)
    tables = [Location(str(store.table_path(PAGE_RECORDS_TABLE, k)), store.storage_options) for k in archive_keys]
    shard_files = {k: Location(str(source.shard_path(k)), source.options_for(source.shards_root)) for k in keys}
    cc = None
    if source.common_crawl is not None and source.common_crawl.columnar_index:
        from mmc4_assets.pages.cc_columnar import ColumnarIndex

        cc = ColumnarIndex.from_config(source.common_crawl)
    if not tables and cc is None:
        # joining nothing would write empty page tables and raw_c4 would find no page at all
        raise dg.Failure(
            "no page records to join: register the archives (mmc4-archives discover or "
            "archive_discovery_sensor) and materialize page_records first, or configure "
            "common_crawl.columnar_index",
            allow_retries=False,
        )
    context.log.info(
        f"joining {len(keys)} shards with {len(tables)} archives' page records"
        + (f" and {len(cc.files)} columnar index files" if cc else "")
    )
    with dask_client(dask.settings()) as client:
        report = join_shard_pages(
            client,
            shard_files,
            tables,
            Location(store.uri(), store.storage_options),
            cc=cc,
            shuffle_method=dask.shuffle_method,
        )
    registered = len(context.instance.get_dynamic_partitions(archives.name))
    totals = {k: sum(r[k] for r in report.per_shard.values()) for k in next(iter(report.per_shard.values()))}
    rows = [{"shard": s, **r} for s, r in sorted(report.per_shard.items())][:200]
    return dg.MaterializeResult(
        metadata={
            "num_shards_joined": len(keys),
            "num_pages": totals["pages"],
            **{k: v for k, v in totals.items() if k != "pages"},
            "archives_joined": len(archive_keys),
            # registered archives without page records (never run, or failed): their pages are missing
            "archives_missing": registered - len(archive_keys),
            "columnar_index_files": len(cc.files) if cc else 0,
            "per_shard": dg.MetadataValue.md(_table(rows)),
            "config_hash": config_hash(source.common_crawl.model_dump() if source.common_crawl else {}),
            "path": dg.MetadataValue.path(store.uri("tables", SHARD_PAGES_TABLE)),
        }
    )


def _table(rows: list[dict]) -> str:
    if not rows:
        return "(no shards)"
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows]
    return "\n".join(lines)


def shard_pages_failures(table: pl.DataFrame, shard: str) -> dict[str, int]:
    return {
        "duplicate_url_key": table.height - table["url_key"].n_unique() if table.height else 0,
        "wrong_shard": table.filter(pl.col("shard") != shard).height,
        "null_url": table["url"].null_count(),
        "image_lists_misaligned": table.filter(
            pl.col("image_urls").list.len() != pl.col("image_positions").list.len()
        ).height,
    }


# not partitioned: one join run covers a range of shards, and this check covers all of them
# (the failing shards are named in its description)
@dg.asset_check(asset=shard_pages, blocking=True)
def shard_pages_one_capture_per_url(
    context: dg.AssetCheckExecutionContext, storage: StorageResource
) -> dg.AssetCheckResult:
    """Every shard of the run has its page table, with one capture per URL and aligned image lists."""
    store = storage.store()
    failures: dict[str, int] = {"missing_table": 0}
    bad_shards = []
    for shard in context.partition_keys:
        if not store.has_table(SHARD_PAGES_TABLE, shard):
            failures["missing_table"] += 1
            bad_shards.append(shard)
            continue
        table = store.read_table(
            SHARD_PAGES_TABLE, shard, columns=["url_key", "shard", "url", "image_urls", "image_positions"]
        )
        for k, v in shard_pages_failures(table, shard).items():
            failures[k] = failures.get(k, 0) + v
            if v:
                bad_shards.append(shard)
    passed = not any(failures.values())
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=failures,
        description="one capture per URL in every shard"
        if passed
        else "failing: "
        + ", ".join(f"{k} {v}" for k, v in failures.items() if v)
        + f" (shards: {', '.join(sorted(set(bad_shards))[:10])})",
    )
