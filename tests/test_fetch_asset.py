"""The fetched_images asset on the bundled sample: counts in metadata, progress in the run
log, and a re-materialization that reuses the fetch log instead of the network.

The sample's images are served by the sample server on 127.0.0.1 (started by the
ImageFetcher resource); the loopback-only safety net of test_fetch_http applies here too.
"""

import dagster as dg
import pytest

from mmc4_assets.defs.fetched_images import fetched_images, fetched_images_match_raw_c4
from mmc4_assets.defs.partitions import shards
from mmc4_assets.defs.raw_c4 import raw_c4
from mmc4_assets.defs.resources import sample_resources
from mmc4_assets.sample.server import load_expected
from test_fetch_http import loopback_only_network  # noqa: F401  (autouse fixture)

SHARD = "c4-sample.00000-of-00001"
pytestmark = pytest.mark.timeout(60)


def _materialize(instance, root, selection, run_config=None):
    resources = sample_resources(str(root))
    return dg.materialize(
        selection,
        partition_key=SHARD,
        instance=instance,
        resources={k: resources[k] for k in ("storage", "source", "fetcher", "quality")},
        run_config=run_config or {},
    )


def _metadata(result):
    [mat] = [m for m in result.get_asset_materialization_events() if m.asset_key.to_user_string() == "fetched_images"]
    return {k: v.value for k, v in mat.step_materialization_data.materialization.metadata.items()}


def test_rematerialization_reuses_the_fetch_log(tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(shards.name, [SHARD])
    expected = load_expected()["totals"]
    config = {"ops": {"fetched_images": {"config": {"progress_log_seconds": 0.0}}}}
    first = _materialize(instance, tmp_path, [raw_c4, fetched_images, fetched_images_match_raw_c4], config)
    md = _metadata(first)
    assert (md["num_candidates"], md["num_ok"]) == (expected["candidates"], expected["fetch"]["ok"])
    assert md["num_requested"] == expected["candidates"] and md["num_reused_from_fetch_log"] == 0
    for reason, n in expected["fetch"].items():
        if reason != "ok":
            assert md[f"images_dropped_{reason}"] == n
    logs = [e.message for e in instance.all_logs(first.run_id) if e.level == 20 and e.message]
    assert any(f"{expected['candidates']}/{expected['candidates']} (100%) images" in m for m in logs)

    again = _materialize(
        instance,
        tmp_path,
        [fetched_images, fetched_images_match_raw_c4],
        {"ops": {"fetched_images": {"config": {"refetch": "none"}}}},
    )
    md2 = _metadata(again)
    assert md2["num_reused_from_fetch_log"] == expected["candidates"] and md2["num_requested"] == 0
    assert md2["num_ok"] == md["num_ok"] and md2["refetch"] == "none"
    assert all(c.passed for c in again.get_asset_check_evaluations())
