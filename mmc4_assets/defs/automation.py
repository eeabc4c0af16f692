import os

import dagster as dg

from mmc4_assets.defs.common import GROUP, SIGNALS_GROUP
from mmc4_assets.defs.partitions import archives, shards
from mmc4_assets.defs.resources import ShardSource

# what a shard's run writes: its stages up to deduped_docs and its contributions to the corpus
# state. Corpus updates batch many shards (corpus_update_job, started by corpus_update_sensor),
# and publishing follows the update that includes the shard (corpus_publish_sensor).
CONTRIBUTIONS = ("image_hash_counts", "doc_fingerprints")

mmc4_shard_job = dg.define_asset_job(
    "mmc4_shard_job",
    # one shard's stages and side assets (not the page join: one run joins many shards, see
    # shard_pages_job), without publishing, plus its contributions to the corpus state
    selection=(dg.AssetSelection.groups(GROUP, SIGNALS_GROUP) - dg.AssetSelection.assets("published_shards"))
    | dg.AssetSelection.assets(*CONTRIBUTIONS),
    partitions_def=shards,
    description="One shard's stages up to deduped_docs, their checks, and its contributions to the corpus "
    "state; the corpus update and publishing follow in their own runs.",
    # a run that dies with its process (OOM, preempted node) is retried by the daemon
    tags={"dagster/max_retries": "2", "dagster/retry_strategy": "FROM_FAILURE"},
)


page_records_job = dg.define_asset_job(
    "page_records_job",
    selection=dg.AssetSelection.assets("page_records"),
    partitions_def=archives,
    description="Read one page archive (WARC/WAT) once into its page_records table.",
    tags={"dagster/max_retries": "1", "dagster/retry_strategy": "FROM_FAILURE"},
)

shard_pages_job = dg.define_asset_job(
    "shard_pages_job",
    selection=dg.AssetSelection.assets("shard_pages"),
    partitions_def=shards,
    description="Join the URLs of the run's shards with every archive's page records (one Dask join for "
    "a range of shards).",
)


class ShardDiscoveryConfig(dg.Config):
    max_new_per_tick: int = 500  # bounds one tick's work on a 25k-shard listing


def new_shard_keys(listed: list[str], known: set[str], limit: int) -> list[str]:
    return [k for k in listed if k not in known][:limit]


IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def join_range_request(keys: list[str]) -> dg.RunRequest:
    """One shard_pages run over a contiguous range of new shard keys (one Dask join for all)."""
    return dg.RunRequest(
        job_name="shard_pages_job",
        run_key=f"join:{keys[0]}:{keys[-1]}:{len(keys)}",
        tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
    )


# STOPPED by default: turning it on starts runs for every file under the source root
@dg.sensor(
    jobs=[mmc4_shard_job, shard_pages_job],
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Every 5 min: registers new {key}.json.gz files under the source root as shard "
    "partitions (at most 500 per tick); with page archives or a columnar index, one "
    "shard_pages run joins the new shards, then mmc4_shard_job runs each joined shard. "
    "Off by default.",
)
def shard_discovery_sensor(context: dg.SensorEvaluationContext, source: ShardSource) -> dg.SensorResult:
    """Registers new *.json.gz files under the source root as shard partitions; with page archives
    or a columnar index, one shard_pages run joins the new shards first, and each shard's MMC4 run
    is requested once its page table exists."""
    instance = context.instance
    known_list = instance.get_dynamic_partitions(shards.name)
    known = set(known_list)
    limit = ShardDiscoveryConfig().max_new_per_tick
    new = new_shard_keys(source.list_shards(), known, limit)
    needs_join = bool(instance.get_dynamic_partitions(archives.name)) or bool(
        source.common_crawl is not None and source.common_crawl.columnar_index
    )
    if not needs_join:
        if not new:
            return dg.SensorResult(skip_reason=f"no new shards ({len(known)} known)")
        return dg.SensorResult(
            run_requests=[dg.RunRequest(job_name="mmc4_shard_job", partition_key=k, run_key=f"shard:{k}") for k in new],
            dynamic_partitions_requests=[shards.build_add_request(new)],
        )
    # shards whose page table is in and whose MMC4 run was never requested (run keys dedupe repeats)
    joined = instance.get_materialized_partitions(dg.AssetKey("shard_pages"))
    started = instance.get_materialized_partitions(dg.AssetKey("raw_c4"))
    ready = [k for k in known_list if k in joined and k not in started][:limit]
    # the join reads the archives' page records as they are: wait while archives are being read
    reading = instance.get_runs_count(dg.RunsFilter(job_name="page_records_job", statuses=IN_FLIGHT))
    if new and reading:
        return dg.SensorResult(skip_reason=f"{len(new)} new shards wait for {reading} archive runs to finish")
    requests = [join_range_request(new)] if new else []
    requests += [dg.RunRequest(job_name="mmc4_shard_job", partition_key=k, run_key=f"shard:{k}") for k in ready]
    if not requests:
        return dg.SensorResult(skip_reason=f"no new or newly joined shards ({len(known)} known)")
    return dg.SensorResult(
        run_requests=requests, dynamic_partitions_requests=[shards.build_add_request(new)] if new else []
    )


class ArchiveDiscoveryConfig(dg.Config):
    max_new_per_tick: int = 1000


# STOPPED by default: turning it on reads every archive the page_archives patterns match
@dg.sensor(
    job=page_records_job,
    minimum_interval_seconds=600,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Every 10 min: registers new WARC/WAT files matched by page_archives as archive "
    "partitions and reads each once (page_records_job, at most 1,000 per tick). Off by default.",
)
def archive_discovery_sensor(context: dg.SensorEvaluationContext, source: ShardSource) -> dg.SensorResult:
    """Registers new WARC/WAT files matched by the source's page_archives patterns as archive
    partitions, and reads each once (page_records)."""
    known = set(context.instance.get_dynamic_partitions(archives.name))
    new = [k for k in source.archive_keys() if k not in known][: ArchiveDiscoveryConfig().max_new_per_tick]
    if not new:
        return dg.SensorResult(skip_reason=f"no new archives ({len(known)} known)")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=k, run_key=f"archive:{k}") for k in new],
        dynamic_partitions_requests=[archives.build_add_request(new)],
    )


# what a shard's run writes, each with the outputs it is built from: a shard needs a run when
# one of them is missing, or when an input was materialized after an output built from it
SHARD_RUN_INPUTS = {
    "raw_c4": ("shard_pages",),
    "fetched_images": ("raw_c4",),
    "clip_scores": ("fetched_images",),
    "assignments": ("clip_scores",),
    "deduped_docs": ("assignments",),
    "image_hash_counts": ("fetched_images",),
    "doc_fingerprints": ("deduped_docs", "raw_c4"),
}
REFRESH_ASSETS = tuple(dict.fromkeys([*SHARD_RUN_INPUTS, *(i for ins in SHARD_RUN_INPUTS.values() for i in ins)]))


def shards_to_refresh(keys: list[str], latest: dict[str, dict[str, int]], limit: int) -> list[tuple[str, str, int]]:
    """(shard, reason, state id) for shards whose run never finished, or whose inputs changed since.

    ``latest`` maps asset -> shard -> storage id of its latest materialization. Comparing each
    output with its own inputs (not the run's last output with every stage) keeps a finished
    run fresh whatever order its steps ran in. The state id (the newest storage id) goes into
    the run key, so one state of a shard is requested once: a shard blocked by a failing check
    is not retried every tick, only after something upstream changes.
    """
    out = []
    for key in keys:
        ids = {asset: latest.get(asset, {}).get(key) for asset in REFRESH_ASSETS}
        state = max((i for i in ids.values() if i is not None), default=0)
        if any(ids[asset] is None for asset in SHARD_RUN_INPUTS):
            out.append((key, "missing", state))
        elif any((ids[i] or 0) > ids[asset] for asset, ins in SHARD_RUN_INPUTS.items() for i in ins):
            out.append((key, "stale", state))
        if len(out) >= limit:
            break
    return out


def _refresh_schedule(cron: str, max_runs: int) -> dg.ScheduleDefinition:
    # STOPPED by default, like the discovery sensor: it starts runs by itself once on
    @dg.schedule(
        job=mmc4_shard_job,
        cron_schedule=cron,
        name="shard_refresh_schedule",
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"At '{cron}' (MMC4_REFRESH_CRON): runs up to {max_runs} shards "
        "(MMC4_REFRESH_MAX_RUNS) never published or whose upstream changed since. Off by default.",
    )
    def shard_refresh_schedule(context: dg.ScheduleEvaluationContext):
        """Runs shards that were never published or whose upstream changed since, a bounded number per tick."""
        instance = context.instance
        keys = instance.get_dynamic_partitions(shards.name)
        latest = {
            s: dict(
                instance.get_latest_storage_id_by_partition(dg.AssetKey(s), dg.DagsterEventType.ASSET_MATERIALIZATION)
            )
            for s in REFRESH_ASSETS
        }
        todo = shards_to_refresh(keys, latest, max_runs)
        if not todo:
            return dg.SkipReason(f"all {len(keys)} shards processed and fresh")
        return [
            dg.RunRequest(partition_key=k, run_key=f"refresh:{k}:{state}", tags={"mmc4/refresh": reason})
            for k, reason, state in todo
        ]

    return shard_refresh_schedule


@dg.definitions
def schedules() -> dg.Definitions:
    # read here, not at import: tests and `dg check` load the module without the env
    cron = os.environ.get("MMC4_REFRESH_CRON", "0 * * * *")
    max_runs = int(os.environ.get("MMC4_REFRESH_MAX_RUNS", "20"))
    # a module with a @dg.definitions function contributes only what that function returns
    return dg.Definitions(
        jobs=[mmc4_shard_job, page_records_job, shard_pages_job],
        sensors=[shard_discovery_sensor, archive_discovery_sensor],
        schedules=[_refresh_schedule(cron, max_runs)],
    )
