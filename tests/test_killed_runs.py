"""Killed runs: the instance configs turn run monitoring on, and temp files of killed writes are swept."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid

import dagster as dg
import polars as pl
import pytest

from mmc4_assets.deploy.dagster_internals import dagster_instance_config, run_monitoring
from mmc4_assets.storage import ShardStore
from mmc4_assets.storage.store import sweep_temp_files

# the instance YAMLs and the variables the Postgres one reads, as the deploy-config tests set them
from test_s3_deploy_configs import HOME, PG_ENV

DAY = 24 * 3600


@pytest.mark.parametrize("name", ["dagster.yaml", "dagster.postgres.yaml"])
def test_both_instance_configs_monitor_runs_and_retry_them(name, tmp_path, monkeypatch):
    for k, v in PG_ENV.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "dagster.yaml").write_text((HOME / name).read_text())
    config, _ = dagster_instance_config(str(tmp_path))  # Dagster's own schema
    monitoring = config["run_monitoring"]
    assert monitoring["enabled"] is True
    assert monitoring["start_timeout_seconds"] > 0 and monitoring["max_runtime_seconds"] > 0
    # the default run launcher cannot resume a run: Dagster refuses resume attempts with it
    assert "run_launcher" not in config and monitoring["max_resume_run_attempts"] == 0
    retries = config["run_retries"]
    assert retries["enabled"] is True and retries["max_retries"] >= 1


def test_a_run_whose_launch_died_is_marked_failed_by_the_monitoring_daemon(tmp_path, monkeypatch):
    """One pass of Dagster's run-monitoring daemon over the local instance config."""
    from dagster import DagsterRun, DagsterRunStatus

    (tmp_path / "dagster.yaml").write_text((HOME / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        assert instance.run_monitoring_enabled and instance.run_retries_enabled
        run = instance.add_run(
            DagsterRun(job_name="shard_job", run_id=str(uuid.uuid4()), status=DagsterRunStatus.NOT_STARTED)
        )
        later = time.time() + instance.run_monitoring_start_timeout_seconds + 1
        monkeypatch.setattr(run_monitoring, "get_current_timestamp", lambda: later)
        (record,) = instance.get_run_records(dg.RunsFilter(run_ids=[run.run_id]))
        run_monitoring.monitor_starting_run(instance, record, logging.getLogger("test"))
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE


def test_old_temp_files_of_killed_writes_are_swept_young_ones_kept(tmp_path):
    store = ShardStore(tmp_path)
    folder = tmp_path / "tables" / "raw_c4"
    folder.mkdir(parents=True)
    old, young = folder / ".tmp-dead-s.parquet", folder / ".tmp-live-s.parquet"
    keep = folder / "other.parquet"
    for f in (old, young, keep):
        f.write_bytes(b"x")
    os.utime(old, (time.time() - 2 * DAY,) * 2)
    os.utime(keep, (time.time() - 2 * DAY,) * 2)
    store.write_table("raw_c4", "s", pl.DataFrame({"a": [1]}))  # the first write into the folder sweeps
    assert not old.exists() and young.exists() and keep.exists()
    assert sorted(p.name for p in folder.iterdir()) == [".tmp-live-s.parquet", "other.parquet", "s.parquet"]
    assert sweep_temp_files(folder, 60, now=time.time() + 120) == [".tmp-live-s.parquet"]


def test_a_sigkilled_writer_leaves_a_temp_file_that_a_later_run_sweeps(tmp_path):
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time, polars as pl\n"
                "from mmc4_assets.storage import ShardStore\n"
                f"store = ShardStore({str(tmp_path)!r})\n"
                "with store.table_writer('fetched_images', 's', {'a': pl.Int64}) as out:\n"
                "    out.write(pl.DataFrame({'a': list(range(1000))}))\n"
                "    print('writing', flush=True)\n"
                "    time.sleep(60)\n"
            ),
        ],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert child.stdout.readline().strip() == b"writing"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    folder = tmp_path / "tables" / "fetched_images"
    (leftover,) = [p for p in folder.iterdir()]
    assert leftover.name.startswith(".tmp-") and leftover.name.endswith("-s.parquet")
    ShardStore(tmp_path).write_table("fetched_images", "s", pl.DataFrame({"a": [1]}))
    assert leftover.exists()  # young: it could be a concurrent run's
    os.utime(leftover, (time.time() - 2 * DAY,) * 2)
    ShardStore(tmp_path).write_table("fetched_images", "s", pl.DataFrame({"a": [2]}))
    assert [p.name for p in folder.iterdir()] == ["s.parquet"]
