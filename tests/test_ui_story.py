"""What a Dagster UI user relies on: the executor per profile, check results per shard, descriptions."""

import dagster as dg
import pytest

from mmc4_assets.definitions import defs
from mmc4_assets.defs.partitions import shards
from mmc4_assets.defs.resources import sample_resources

SHARD = "c4-sample.00000-of-00001"


@pytest.mark.parametrize(("env", "executor"), [
    ({}, "in_process"),  # a run launched from the UI on the sample: one process, no per-step imports
    ({"MMC4_PROFILE": "production", "MMC4_STORAGE_ROOT": "/x", "MMC4_SHARDS_ROOT": "/y"},
     "multi_or_in_process_executor"),
    ({"MMC4_EXECUTOR": "multiprocess"}, "multi_or_in_process_executor"),
])
def test_executor_follows_the_profile(monkeypatch, env, executor):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert defs().resolve_job_def("mmc4_shard_job").executor_def.name == executor


def test_every_shard_check_is_partitioned_like_its_asset():
    graph = defs().resolve_asset_graph()
    for key in graph.asset_check_keys:
        asset = graph.get(key.asset_key)
        if asset.partitions_def is not None:
            assert graph.get_check_spec(key).partitions_def == asset.partitions_def, key


def test_check_result_is_recorded_against_its_shard(tmp_path):
    d = defs()
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(shards.name, [SHARD])
    selection = [a for a in d.assets if dg.AssetKey("raw_c4") in a.keys]
    checks = [c for c in d.asset_checks if any(k.asset_key == dg.AssetKey("raw_c4") for k in c.check_keys)]
    result = dg.materialize([*selection, *checks], partition_key=SHARD, instance=instance,
                            resources=sample_resources(str(tmp_path)), raise_on_error=False)
    evaluations = result.get_asset_check_evaluations()
    assert evaluations
    for evaluation in evaluations:
        assert evaluation.partition == SHARD
        assert evaluation.metadata["partition"].value == SHARD
        history = instance.event_log_storage.get_asset_check_execution_history(evaluation.asset_check_key, limit=5)
        assert [r.partition for r in history] == [SHARD]


def test_every_job_sensor_and_schedule_is_described():
    d = defs()
    jobs = [j for j in d.resolve_all_job_defs() if not j.name.startswith("__")]
    assert jobs
    for job in jobs:
        assert job.description, job.name
    for sensor in d.sensors or []:
        assert sensor.description, sensor.name
    for schedule in d.schedules or []:
        assert schedule.description, schedule.name
