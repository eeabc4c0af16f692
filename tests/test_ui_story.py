"""What a Dagster UI user relies on: the executor per profile, check results per shard, descriptions."""

import re

import dagster as dg
import pytest

from mmc4_assets.definitions import defs
from mmc4_assets.defs.partitions import shards
from mmc4_assets.defs.resources import sample_resources

SHARD = "c4-sample.00000-of-00001"
PENDING: set[str] = set()  # names allowed without a description: none


@pytest.mark.parametrize(
    ("env", "executor"),
    [
        ({}, "in_process"),  # a run launched from the UI on the sample: one process, no per-step imports
        (
            {"MMC4_PROFILE": "production", "MMC4_STORAGE_ROOT": "/x", "MMC4_SHARDS_ROOT": "/y"},
            "multi_or_in_process_executor",
        ),
        ({"MMC4_EXECUTOR": "multiprocess"}, "multi_or_in_process_executor"),
    ],
)
def test_executor_follows_the_profile(monkeypatch, env, executor):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert defs().resolve_job_def("mmc4_shard_job").executor_def.name == executor


def test_every_shard_check_is_partitioned_like_its_asset():
    graph = defs().resolve_asset_graph()
    for key in graph.asset_check_keys:
        asset = graph.get(key.asset_key)
        # shard_pages: one join run covers a range of shards; its check covers them all
        if asset.partitions_def is not None and key.asset_key != dg.AssetKey("shard_pages"):
            assert graph.get_check_spec(key).partitions_def == asset.partitions_def, key


def test_check_result_is_recorded_against_its_shard(tmp_path):
    d = defs()
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(shards.name, [SHARD])
    selection = [a for a in d.assets if dg.AssetKey("raw_c4") in a.keys]
    checks = [c for c in d.asset_checks if any(k.asset_key == dg.AssetKey("raw_c4") for k in c.check_keys)]
    result = dg.materialize(
        [*selection, *checks],
        partition_key=SHARD,
        instance=instance,
        resources=sample_resources(str(tmp_path)),
        raise_on_error=False,
    )
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
        if sensor.name in PENDING:
            continue
        assert sensor.description, sensor.name
    for schedule in d.schedules or []:
        assert schedule.description, schedule.name


def test_mmc4_shards_takes_a_source_root_and_refuses_missing_files(tmp_path, dagster_home, capsys):
    import shutil

    from mmc4_assets.cli import shards_main
    from mmc4_assets.sample.server import sample_shard_path

    root = tmp_path / "shards"
    root.mkdir()
    for n in ("00000", "00001"):  # a copy of the sample under a second name: two shards
        shutil.copy(sample_shard_path(), root / f"c4-sample.{n}-of-00002.json.gz")
    assert shards_main(["--source-root", str(root), "add", "c4-sample.00009-of-00002"]) == 2
    assert "c4-sample.00009-of-00002" in capsys.readouterr().err
    assert shards_main(["--source-root", str(root), "add", "c4-sample.00001-of-00002"]) == 0
    assert shards_main(["--source-root", str(root), "discover"]) == 0
    assert shards_main(["--source-root", str(root), "add", "--force", "later"]) == 0
    capsys.readouterr()
    shards_main(["list"])
    assert capsys.readouterr().out.split() == ["c4-sample.00001-of-00002", "c4-sample.00000-of-00002", "later"]


def test_sample_profile_reads_shards_from_a_source_root(monkeypatch, tmp_path):
    monkeypatch.setenv("MMC4_SHARDS_ROOT", str(tmp_path))
    source = defs().resources["source"]
    assert source.shards_root == str(tmp_path)
    assert source.page_archives  # still the sample's archives


def test_random_weights_are_logged_once_per_process_not_on_the_root_logger(caplog, monkeypatch):
    import logging

    from mmc4_assets.clip import encoder as mod

    monkeypatch.setattr(mod, "_random_models_logged", set())
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            mod.ClipEncoder(mod.ClipSpec(model_name="mmc4-tiny-random", pretrained=None))
    notices = [r for r in caplog.records if "randomly" in r.getMessage() or "RANDOM weights" in r.getMessage()]
    assert [(r.name, r.levelname) for r in notices] == [("mmc4_assets.clip.encoder", "WARNING")]


def test_api_docs_page_loads_swagger_from_the_app_itself(tmp_path):
    from fastapi.testclient import TestClient

    from mmc4_assets.api.app import Settings, create_app

    (tmp_path / "tokens.json").write_text("{}")
    app = create_app(
        Settings(
            storage_root=str(tmp_path), tokens_file=str(tmp_path / "tokens.json"), cache_dir=str(tmp_path / "cache")
        )
    )
    client = TestClient(app)
    html = client.get("/docs").text
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html)
    assert assets and all(a.startswith("/") for a in assets), assets
    assert all(client.get(a).status_code == 200 for a in assets)


def test_groups_tell_the_checks_story():
    """mmc4 holds the six per-shard stages, each guarded by a blocking check; per-shard side assets sit
    in their own group (corpus-wide assets: the corpus group)."""
    graph = defs().resolve_asset_graph()
    stages = {"raw_c4", "fetched_images", "clip_scores", "assignments", "deduped_docs", "published_shards"}
    in_group = {
        k.to_user_string()
        for k in graph.get_all_asset_keys()
        if graph.get(k).group_name == "mmc4" and graph.get(k).partitions_def is not None
    }
    assert in_group == stages
    for stage in stages:
        checks = [graph.get_check_spec(c) for c in graph.get_check_keys_for_assets([dg.AssetKey(stage)])]
        assert any(c.blocking for c in checks), stage
    # a shard's run: its stages up to deduped_docs, its side assets and its corpus contributions;
    # the page join (one run for many shards), the corpus update and publishing run on their own
    job = defs().resolve_job_def("mmc4_shard_job")
    groups = {k.to_user_string(): graph.get(k).group_name for k in graph.get_all_asset_keys()}
    assert {k.to_user_string() for k in job.asset_layer.selected_asset_keys} == (
        stages - {"published_shards"}
        | {k for k, g in groups.items() if g == "shard_signals"}
        | {"image_hash_counts", "doc_fingerprints"}
    )
    assert {k for k, g in groups.items() if g == "pages"} == {"page_records", "shard_pages"}
    assert {k for k, g in groups.items() if g == "corpus"} == {
        "image_hash_counts",
        "doc_fingerprints",
        "corpus_image_counts",
        "corpus_doc_index",
    }
