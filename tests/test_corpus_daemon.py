"""Eight shard runs at once through a real dagster-daemon, the run queue as shipped.

Eight small shards cut from the bundled sample (overlapping windows of its lines, so shards
share URLs, texts and images) are discovered by ``shard_discovery_sensor`` and queued at
once; the daemon runs them under dagster_home/dagster.yaml's limits, ``corpus_update_sensor``
batches corpus updates, ``corpus_publish_sensor`` publishes. The published bytes must equal
those of a strictly serial run (shard, update, publish, one shard after another), and every
shard must be absorbed exactly once.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from mmc4_assets.dedup.blocklist import NAME as BLOCKLIST
from mmc4_assets.dedup.corpus_state import KEY_ROWS, CorpusState, bucket_table
from mmc4_assets.sample.server import sample_shard_path
from mmc4_assets.storage import ShardStore

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
N = 8
KEYS = [f"c4-sample.{i:05d}-of-{N:05d}" for i in range(N)]


def _write_shards(folder: Path) -> None:
    lines = gzip.decompress(sample_shard_path().read_bytes()).splitlines()
    folder.mkdir()
    for i, key in enumerate(KEYS):
        # 8 lines each, every line on two shards: URL duplicates, near-duplicate texts and
        # shared images across shards, whose decisions depend on the other shards
        window = [lines[(5 * i + k) % len(lines)] for k in range(8)]
        (folder / f"{key}.json.gz").write_bytes(gzip.compress(b"\n".join(window) + b"\n"))


def _env(home: Path, storage: Path, shards_root: Path) -> dict[str, str]:
    return {
        "DAGSTER_HOME": str(home),
        "MMC4_STORAGE_ROOT": str(storage),
        "MMC4_SHARDS_ROOT": str(shards_root),
        "MMC4_PROFILE": "sample",
        "MMC4_EXECUTOR": "in_process",
        "MMC4_CORPUS_MIN_BATCH": "4",
        "MMC4_CORPUS_MAX_WAIT_S": "5",
        "MMC4_CORPUS_SENSOR_INTERVAL_S": "1",
    }


def _published(root: Path) -> dict[str, bytes]:
    """Every published zip (manifests carry a timestamp; their checksums cover the zips)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "published").rglob("*.zip"))}


def _serial(tmp_path: Path, shards_root: Path) -> dict[str, bytes]:
    """One shard at a time: its assets, a corpus update, its publication; then what the sensor
    republishes. The same assets and resources as the daemon's runs, in this process; the
    checks are left out here (the daemon's runs run them) to keep the reference quick."""
    from mmc4_assets.definitions import defs
    from mmc4_assets.defs.automation import mmc4_shard_job
    from mmc4_assets.defs.corpus_automation import _publish_sensor
    from mmc4_assets.defs.resources import StorageResource, sample_resources

    root = tmp_path / "serial"
    resources = sample_resources(str(root), shards_root=str(shards_root))
    assets = [a for a in defs().assets if isinstance(a, dg.AssetsDefinition)]
    steps = [
        (mmc4_shard_job.selection, True),
        (dg.AssetSelection.groups("corpus") - dg.AssetSelection.assets("image_hash_counts", "doc_fingerprints"), False),
        (dg.AssetSelection.assets("published_shards"), True),
    ]
    sensor = _publish_sensor(1)
    with dg.DagsterInstance.ephemeral() as instance:  # in memory: no SQLite commit per event

        def run(selection, key):
            assert dg.materialize(
                assets, instance=instance, resources=resources, partition_key=key, selection=selection.without_checks()
            ).success

        for key in KEYS:
            instance.add_dynamic_partitions("shards", [key])
            for selection, partitioned in steps:
                run(selection, key if partitioned else None)
        cursor = None
        while True:  # the republishing a later shard causes (what the daemon's sensor does)
            result = sensor(
                dg.build_sensor_context(
                    instance=instance, cursor=cursor, resources={"storage": StorageResource(root=str(root))}
                )
            )
            cursor = result.cursor
            if not result.run_requests:
                break
            for request in result.run_requests:
                run(steps[2][0], request.partition_key)
    return _published(root)


def _daemon_state(instance: dg.DagsterInstance, store: ShardStore) -> tuple[bool, str]:
    from mmc4_assets.defs.corpus_automation import IN_FLIGHT, listed_since, shards_to_publish, waiting_shards

    in_flight = instance.get_runs_count(dg.RunsFilter(statuses=IN_FLIGHT))
    published = instance.get_materialized_partitions(dg.AssetKey("published_shards"))
    registered = instance.get_dynamic_partitions("shards")
    if len(registered) < N or in_flight:
        return False, f"{len(registered)} shards registered, {in_flight} runs in flight"
    # what the publish sensor would still request, reading every update from the start
    waiting, stale = (
        waiting_shards(instance, store),
        shards_to_publish(instance, store, listed_since(instance, store, {})),
    )
    done = set(published) == set(KEYS) and not waiting and not stale
    return done, f"published {len(published)}, waiting {len(waiting)}, stale {len(stale)}"


def _end_group(leader: subprocess.Popen) -> None:
    """End the daemon and everything it started (code server, run processes): its whole group."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(leader.pid, sig)
        except ProcessLookupError:
            return
        try:
            leader.wait(wait)
        except subprocess.TimeoutExpired:
            pass
    # run processes may outlive a leader that exited on SIGTERM: the SIGKILL above reached them


@pytest.fixture
def fast_dir(tmp_path):
    """A folder in memory (/dev/shm) where there is one: the daemon's SQLite instance commits
    every event, and a disk shared with other jobs makes each commit slow."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="mmc4-daemon-", dir=shm))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.daemon
@pytest.mark.timeout(900)
def test_eight_concurrent_shard_runs_equal_a_serial_run(tmp_path, fast_dir):
    tmp_path = fast_dir
    shards_root = tmp_path / "shards"
    _write_shards(shards_root)
    started = time.monotonic()
    serial = _serial(tmp_path, shards_root)
    print(f"serial run: {time.monotonic() - started:.0f}s", flush=True)
    assert len(serial) >= N  # the full set of every shard, and its core subset where non-empty

    home, storage = tmp_path / "home", tmp_path / "storage"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")  # the run queue as shipped
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - python_module:\n      module_name: mmc4_assets.definitions\n"
        f"      location_name: mmc4_assets\n      working_directory: {REPO}\n"
    )
    env = {**os.environ, **_env(home, storage, shards_root), "PYTHONPATH": str(REPO)}
    subprocess.run(
        [BIN / "dagster", "sensor", "start", "shard_discovery_sensor", "-w", workspace],
        env=env,
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    # its own process group: the daemon's code server and run processes go with it
    daemon = subprocess.Popen(
        [BIN / "dagster-daemon", "run", "-w", workspace],
        env=env,
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    store = ShardStore(storage)
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            deadline, done, story, settled = time.monotonic() + 720, False, "", 0
            while time.monotonic() < deadline and settled < 2:
                time.sleep(2)
                done, story = _daemon_state(instance, store)
                print(f"{time.strftime('%X')} {story}", flush=True)
                settled = settled + 1 if done else 0
            assert done, f"the daemon did not settle: {story}"
            runs = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
            assert not runs, [r.job_name for r in runs]
            shard_runs = instance.get_runs(dg.RunsFilter(job_name="mmc4_shard_job"))
            updates = instance.fetch_materializations(dg.AssetKey("corpus_image_counts"), limit=100).records
            absorbed = [s for r in updates for s in r.asset_materialization.metadata["absorbed"].value]
    finally:
        _end_group(daemon)

    sizes = [len(r.asset_materialization.metadata["absorbed"].value) for r in updates]
    print(f"{len(shard_runs)} shard runs; corpus updates absorbed {sorted(sizes, reverse=True)} shards")
    assert len(shard_runs) == N
    # every shard absorbed exactly once, in fewer updates than shards (batches)
    assert (
        sorted(absorbed) == KEYS and len([r for r in updates if r.asset_materialization.metadata["absorbed"].value]) < N
    )
    state = CorpusState.load(store, BLOCKLIST)
    sampled = state.read("sample", {"priority": pl.UInt64, "key": pl.UInt64, "shard": pl.String})
    contributed = sum(int(store.read_table("image_hash_counts", k)["n"].sum()) for k in KEYS)
    assert sorted(state.registry) == KEYS and sampled.height == contributed  # 60,000 > the corpus: all of it
    docs = sum(store.num_rows("doc_fingerprints", k) for k in KEYS)
    url = CorpusState.load(store, "doc_index")
    assert sum(int(url.read(bucket_table("url", b), KEY_ROWS)["n"].sum()) for b in range(16)) == docs
    assert _published(storage) == serial


def test_update_sensor_waits_for_a_batch_or_the_interval(tmp_path):
    """Fewer than min_batch shards wait: no update until the oldest has waited max_wait."""
    from mmc4_assets.defs.corpus_automation import _update_sensor
    from mmc4_assets.defs.resources import StorageResource

    storage = StorageResource(root=str(tmp_path))
    sensor = _update_sensor(min_batch=3, max_wait_s=3600, interval_s=1)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("shards", KEYS[:4])

        def finish(*keys):  # what a shard run leaves: both contributions materialized
            for key in keys:
                for asset in ("image_hash_counts", "doc_fingerprints"):
                    instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=key))

        def tick(cursor=None):
            return sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources={"storage": storage}))

        assert "no shard waits" in tick().skip_reason.skip_message
        finish(*KEYS[:2])
        two = tick()
        assert not two.run_requests and "2 shard(s) waiting" in two.skip_reason.skip_message
        assert tick(two.cursor).cursor == two.cursor  # the wait is measured from the first sighting
        finish(KEYS[2])
        due = tick(two.cursor)
        assert len(due.run_requests) == 1 and due.run_requests[0].tags["mmc4/batch_shards"] == "3"
        old = json.dumps({"waiting_since": time.time() - 7200})
        finish(KEYS[3])
        assert len(tick(old).run_requests) == 1  # one shard, but it waited past max_wait
        instance.add_run(
            dg.DagsterRun(job_name="corpus_update_job", run_id="a" * 36, status=dg.DagsterRunStatus.STARTED)
        )
        assert "in flight" in tick().skip_reason.skip_message  # never two updates at once
