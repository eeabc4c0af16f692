import os

import dagster as dg

from mmc4_assets.defs.partitions import shards
from mmc4_assets.defs.resources import ShardSource

STAGES = ("raw_c4", "fetched_images", "clip_scores", "assignments", "deduped_docs", "published_shards")

mmc4_shard_job = dg.define_asset_job(
    "mmc4_shard_job",
    # by lineage, not group: the stages, their side assets and the corpus state publishing reads
    selection=dg.AssetSelection.assets("published_shards").upstream(),
    partitions_def=shards,
    description="All MMC4 stages and their checks for one shard.",
    # a run that dies with its process (OOM, preempted node) is retried by the daemon
    tags={"dagster/max_retries": "2", "dagster/retry_strategy": "FROM_FAILURE"},
)


class ShardDiscoveryConfig(dg.Config):
    max_new_per_tick: int = 500  # bounds one tick's work on a 25k-shard listing


def new_shard_keys(listed: list[str], known: set[str], limit: int) -> list[str]:
    return [k for k in listed if k not in known][:limit]


# STOPPED by default: turning it on starts runs for every file under the source root
@dg.sensor(job=mmc4_shard_job, minimum_interval_seconds=300,
           default_status=dg.DefaultSensorStatus.STOPPED,
           description="Every 5 min: registers new {key}.json.gz files under the source root as shard "
                       "partitions and runs mmc4_shard_job for each (at most 500 per tick). Off by default.")
def shard_discovery_sensor(context: dg.SensorEvaluationContext, source: ShardSource) -> dg.SensorResult:
    """Registers new *.json.gz files under the source root as shard partitions and runs them."""
    known = set(context.instance.get_dynamic_partitions(shards.name))
    new = new_shard_keys(source.list_shards(), known, ShardDiscoveryConfig().max_new_per_tick)
    if not new:
        return dg.SensorResult(skip_reason=f"no new shards ({len(known)} known)")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=k, run_key=f"shard:{k}") for k in new],
        dynamic_partitions_requests=[shards.build_add_request(new)],
    )


def shards_to_refresh(keys: list[str], latest: dict[str, dict[str, int]], limit: int) -> list[tuple[str, str, int]]:
    """(shard, reason, state id) for shards never published, or published before an upstream changed.

    ``latest`` maps stage -> shard -> storage id of its latest materialization. The state id
    goes into the run key, so one state of a shard is requested once: a shard blocked by a
    failing check is not retried every tick, only after something upstream changes.
    """
    published = latest.get("published_shards", {})
    out = []
    for key in keys:
        upstream = max((latest.get(s, {}).get(key, 0) for s in STAGES[:-1]), default=0)
        if key not in published:
            out.append((key, "missing", upstream))
        elif upstream > published[key]:
            out.append((key, "stale", upstream))
        if len(out) >= limit:
            break
    return out


def _refresh_schedule(cron: str, max_runs: int) -> dg.ScheduleDefinition:
    # STOPPED by default, like the discovery sensor: it starts runs by itself once on
    @dg.schedule(job=mmc4_shard_job, cron_schedule=cron, name="shard_refresh_schedule",
                 default_status=dg.DefaultScheduleStatus.STOPPED,
                 description=f"At '{cron}' (MMC4_REFRESH_CRON): runs up to {max_runs} shards "
                             "(MMC4_REFRESH_MAX_RUNS) never published or whose upstream changed since. Off by default.")
    def shard_refresh_schedule(context: dg.ScheduleEvaluationContext):
        """Runs shards that were never published or whose upstream changed since, a bounded number per tick."""
        instance = context.instance
        keys = instance.get_dynamic_partitions(shards.name)
        latest = {s: dict(instance.get_latest_storage_id_by_partition(
            dg.AssetKey(s), dg.DagsterEventType.ASSET_MATERIALIZATION)) for s in STAGES}
        todo = shards_to_refresh(keys, latest, max_runs)
        if not todo:
            return dg.SkipReason(f"all {len(keys)} shards published and fresh")
        return [dg.RunRequest(partition_key=k, run_key=f"refresh:{k}:{state}", tags={"mmc4/refresh": reason})
                for k, reason, state in todo]

    return shard_refresh_schedule


@dg.definitions
def schedules() -> dg.Definitions:
    # read here, not at import: tests and `dg check` load the module without the env
    cron = os.environ.get("MMC4_REFRESH_CRON", "0 * * * *")
    max_runs = int(os.environ.get("MMC4_REFRESH_MAX_RUNS", "20"))
    # a module with a @dg.definitions function contributes only what that function returns
    return dg.Definitions(jobs=[mmc4_shard_job], sensors=[shard_discovery_sensor],
                          schedules=[_refresh_schedule(cron, max_runs)])
