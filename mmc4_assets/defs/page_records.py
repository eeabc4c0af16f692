import gzip

import dagster as dg
import polars as pl

from mmc4_assets.defs.common import config_hash, shard_check, stats_metadata
from mmc4_assets.defs.partitions import ARCHIVE_BACKFILL, archives
from mmc4_assets.defs.resources import ShardSource, StorageResource
from mmc4_assets.pages.archives import ARCHIVE_ERROR, ArchiveReadError
from mmc4_assets.pages.page_table import PAGE_RECORDS_TABLE, write_page_records
from mmc4_assets.stats import StepStats

PAGES_GROUP = "pages"


@dg.asset(
    partitions_def=archives,
    backfill_policy=ARCHIVE_BACKFILL,
    group_name=PAGES_GROUP,
    code_version="1",
    kinds={"parquet"},
    tags={"mmc4/stage": "pages"},
)
def page_records(
    context: dg.AssetExecutionContext, source: ShardSource, storage: StorageResource
) -> dg.MaterializeResult:
    """One row per HTML response or WAT metadata record of one archive: URL, capture time, status, image candidates."""
    key, store = context.partition_key, storage.store()
    path = source.archive_path(key)
    stats = StepStats()
    try:
        stream = source.open(path)
    except OSError as exc:  # missing, denied, unreachable: this archive's run fails, named
        raise ArchiveReadError(path, f"cannot open: {type(exc).__name__}: {exc}") from exc
    with stats.timer("read"), stream:
        stats, progress, rows = write_page_records(store, key, stream, path, stats)
    recovered = ""
    if progress.error == f"{ARCHIVE_ERROR}_non_chunked_gzip":
        # one gzip stream around all records (not one member per record): warcio's own advice is
        # to read it decompressed; offsets are then positions in the decompressed stream
        again = StepStats()
        with source.open(path) as raw, gzip.open(raw) as whole:
            again, retry, again_rows = write_page_records(store, key, whole, path, again)
        if retry.error is None:
            stats, progress, rows, recovered = again, retry, again_rows, "non_chunked_gzip_read_whole"
            context.log.warning(f"{path}: not a per-record gzip; read as one gzip stream ({rows} pages)")
    if progress.error:
        context.log.warning(
            f"{path}: read stopped at byte {progress.error_offset} after {progress.records} "
            f"records ({progress.error}); the {rows} pages before it are kept"
        )
    return dg.MaterializeResult(
        metadata={
            "archive": path,
            "num_records": progress.records,
            "num_pages": rows,
            **stats_metadata(stats, "records", "archive records"),
            "archive_error": progress.error or "",
            "archive_error_offset": progress.error_offset if progress.error_offset is not None else -1,
            "archive_error_detail": progress.error_detail or "",
            "archive_recovered": recovered,
            "config_hash": config_hash({"parser": "warcio", "code_version": "1"}),
            "path": dg.MetadataValue.path(str(store.table_path(PAGE_RECORDS_TABLE, key))),
        }
    )


def page_records_outcome(table: pl.DataFrame, md: dict) -> tuple[bool, str, dict]:
    """(passed, description, metadata): every record is a page row or a counted reason, and the
    archive was read to its end."""
    counted = md.get("records_kept", 0) + md.get("records_dropped", 0)
    failures = {
        "rows_vs_pages_counted": abs(table.height - md.get("records_kept", 0)),
        "records_not_accounted": abs(md.get("num_records", 0) + (1 if md.get("archive_error") else 0) - counted),
        "null_url_key": table["url_key"].null_count(),
        "image_lists_misaligned": table.filter(
            (pl.col("image_urls").list.len() != pl.col("image_alts").list.len())
            | (pl.col("image_urls").list.len() != pl.col("image_positions").list.len())
        ).height,
        "archive_read_stopped": 1 if md.get("archive_error") else 0,
    }
    bad = {k: v for k, v in failures.items() if v}
    if not bad:
        return (
            True,
            f"{table.height} page records; every one of {md.get('num_records', 0)} records accounted for",
            failures,
        )
    words = []
    if bad.pop("archive_read_stopped", 0):
        words.append(
            f"{md.get('archive')}: read stopped at byte {md.get('archive_error_offset')} after "
            f"{md.get('num_records')} records ({md.get('archive_error')}); {table.height} pages "
            "before it are kept and joined"
        )
    words += [f"{k} {v}" for k, v in bad.items()]
    return False, "; ".join(words), failures


@shard_check(asset=page_records, blocking=True, partitions_def=archives)
def page_records_complete(context: dg.AssetCheckExecutionContext, storage: StorageResource) -> dg.AssetCheckResult:
    """Every record of the archive is a page row or a counted reason, and the archive was read to its end."""
    store = storage.store()
    table = store.read_table(
        PAGE_RECORDS_TABLE, context.partition_key, columns=["url_key", "image_urls", "image_alts", "image_positions"]
    )
    md = store.read_table_params(PAGE_RECORDS_TABLE, context.partition_key)  # how the read went
    passed, description, failures = page_records_outcome(table, md)
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={**failures, "archive": md.get("archive", "")},
    )
