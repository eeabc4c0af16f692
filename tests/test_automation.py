import gzip

import dagster as dg

from mmc4_assets.cli import shards_main
from mmc4_assets.defs.automation import new_shard_keys, shard_discovery_sensor
from mmc4_assets.defs.partitions import shards
from mmc4_assets.defs.resources import ShardSource


def _touch_shard(root, key):
    (root / f"{key}.json.gz").write_bytes(
        gzip.compress(b'{"text": "A.", "timestamp": "t", "url": "https://a.test/"}\n')
    )


def test_sensor_registers_new_shards_and_requests_runs(tmp_path):
    for key in ("c4-train.00001-of-01024", "c4-train.00000-of-01024"):
        _touch_shard(tmp_path, key)
    (tmp_path / "notes.txt").write_text("not a shard")
    instance = dg.DagsterInstance.ephemeral()
    source = ShardSource(shards_root=str(tmp_path))

    result = shard_discovery_sensor(dg.build_sensor_context(instance=instance), source=source)
    assert [r.partition_key for r in result.run_requests] == ["c4-train.00000-of-01024", "c4-train.00001-of-01024"]
    assert result.dynamic_partitions_requests[0].partition_keys == [r.partition_key for r in result.run_requests]

    instance.add_dynamic_partitions(shards.name, result.dynamic_partitions_requests[0].partition_keys)
    _touch_shard(tmp_path, "c4-train.00002-of-01024")
    again = shard_discovery_sensor(dg.build_sensor_context(instance=instance), source=source)
    assert [r.partition_key for r in again.run_requests] == ["c4-train.00002-of-01024"]


def test_sensor_skips_when_nothing_is_new(tmp_path):
    result = shard_discovery_sensor(
        dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral()),
        source=ShardSource(shards_root=str(tmp_path / "missing")),
    )
    assert not result.run_requests and "no new shards" in str(result.skip_reason)


def test_new_shard_keys_is_bounded_per_tick():
    listed = [f"s{i:05d}" for i in range(25_000)]
    known = set(listed[:24_000])
    assert new_shard_keys(listed, known, 500) == listed[24_000:24_500]


def test_shards_cli_adds_and_lists(dagster_home, capsys):
    assert shards_main(["add", "--force", "a-shard", "b-shard"]) == 0
    assert shards_main(["add", "--force", "a-shard"]) == 0
    assert "registered 0 new" in capsys.readouterr().out
    shards_main(["list"])
    assert capsys.readouterr().out.split() == ["a-shard", "b-shard"]


def test_shard_source_rejects_keys_that_are_paths(tmp_path):
    import pytest

    source = ShardSource(shards_root=str(tmp_path))
    for bad in ("../x", "a/b", ".."):
        with pytest.raises(ValueError):
            source.shard_path(bad)
