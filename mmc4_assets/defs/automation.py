import dagster as dg

from mmc4_assets.defs.common import GROUP
from mmc4_assets.defs.partitions import shards
from mmc4_assets.defs.resources import ShardSource

mmc4_shard_job = dg.define_asset_job(
    "mmc4_shard_job",
    selection=dg.AssetSelection.groups(GROUP),
    partitions_def=shards,
    description="All six MMC4 stages and their checks for one shard.",
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
