import os

import dagster as dg

from mmc4_assets.defs.common import GROUP
from mmc4_assets.defs.partitions import shards
from mmc4_assets.defs.resources import ShardSource

STAGES = ("raw_c4", "fetched_images", "clip_scores", "assignments", "deduped_docs", "published_shards")

# what a shard's run writes: its stages up to deduped_docs and its contributions to the corpus
# state. Corpus updates batch many shards (corpus_update_job, started by corpus_update_sensor),
# and publishing follows the update that includes the shard (corpus_publish_sensor).
CONTRIBUTIONS = ("image_hash_counts", "doc_fingerprints")

mmc4_shard_job = dg.define_asset_job(
    "mmc4_shard_job",
    selection=(dg.AssetSelection.groups(GROUP) - dg.AssetSelection.assets("published_shards"))
    | dg.AssetSelection.assets(*CONTRIBUTIONS),
    partitions_def=shards,
    description="One shard's stages up to deduped_docs, their checks, and its contributions to the corpus "
                "state; the corpus update and publishing follow in their own runs.",
    # a run that dies with its process (OOM, preempted node) is retried by the daemon
    tags={"dagster/max_retries": "2", "dagster/retry_strategy": "FROM_FAILURE"},
)


class ShardDiscoveryConfig(dg.Config):
    max_new_per_tick: int = 500  # bounds one tick's work on a 25k-shard listing


def new_shard_keys(listed: list[str], known: set[str], limit: int) -> list[str]:
    return [k for k in listed if k not in known][:limit]


@dg.sensor(job=mmc4_shard_job, minimum_interval_seconds=300,
           default_status=dg.DefaultSensorStatus.STOPPED)
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


def shards_to_refresh(keys: list[str], latest: dict[str, dict[str, int]], limit: int,
                      done: str = "published_shards") -> list[tuple[str, str, int]]:
    """(shard, reason, state id) for shards never done, or done before an upstream changed.

    ``done`` names the output that marks a shard's run as complete (the schedule uses the
    oldest of its corpus contributions: publishing is the corpus sensors' business).
    ``latest`` maps stage -> shard -> storage id of its latest materialization. The state id
    goes into the run key, so one state of a shard is requested once: a shard blocked by a
    failing check is not retried every tick, only after something upstream changes.
    """
    published = latest.get(done, {})
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
    @dg.schedule(job=mmc4_shard_job, cron_schedule=cron, name="shard_refresh_schedule",
                 default_status=dg.DefaultScheduleStatus.STOPPED)
    def shard_refresh_schedule(context: dg.ScheduleEvaluationContext):
        """Runs shards that were never published or whose upstream changed since, a bounded number per tick."""
        instance = context.instance
        keys = instance.get_dynamic_partitions(shards.name)
        latest = {s: dict(instance.get_latest_storage_id_by_partition(
            dg.AssetKey(s), dg.DagsterEventType.ASSET_MATERIALIZATION)) for s in (*STAGES[:-1], *CONTRIBUTIONS)}
        contributed = [latest[c] for c in CONTRIBUTIONS]
        latest["shard_run_done"] = {k: min(c[k] for c in contributed) for k in contributed[0]
                                    if all(k in c for c in contributed)}
        todo = shards_to_refresh(keys, latest, max_runs, done="shard_run_done")
        if not todo:
            return dg.SkipReason(f"all {len(keys)} shards processed and fresh")
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
