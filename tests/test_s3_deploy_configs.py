"""The production instance configs, launchers and executors, checked without AWS or a cluster.

Instance yamls are validated by Dagster's own instance schema and each configurable class's
schema (Postgres storage, S3 compute logs, EcsRunLauncher); the ECS launcher and the
compute log manager are then built for real against moto on 127.0.0.1. The Helm values
are parsed and their run config checked with dagster-k8s's own types. Executors are
checked as definitions, and the device placement through the stock step handlers' parsing.
"""

import importlib
import json
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest
import yaml

from mmc4_assets.deploy.dagster_internals import (
    ConfigurableClassData,
    StepHandler,
    StepHandlerContext,
    dagster_instance_config,
    pg_config,
    process_config,
)
from mmc4_assets.deploy.executors import (
    DEVICE_TAG,
    DevicePlacementStepHandler,
    device_step_tags,
    executor_for,
    load_executor_config,
)
from test_s3_support import loopback_s3

HOME = Path(__file__).resolve().parents[1] / "dagster_home"
DEPLOY = HOME / "deploy"
PG_ENV = {
    "DAGSTER_PG_HOST": "127.0.0.1",
    "DAGSTER_PG_PORT": "5432",
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "secret",
    "DAGSTER_PG_DB": "dagster",
    "MMC4_COMPUTE_LOG_BUCKET": "mmc4-logs",
    "MMC4_COMPUTE_LOG_PREFIX": "compute-logs",
    "MMC4_ECS_TASK_DEFINITION": "mmc4-run",
}
INSTANCE_FILES = [HOME / "dagster.yaml", HOME / "dagster.postgres.yaml", DEPLOY / "ecs" / "dagster.yaml"]


def _class_sections(config: dict) -> dict[str, dict]:
    return {k: v for k, v in config.items() if isinstance(v, dict) and "module" in v and "class" in v}


def _class_config(section: dict) -> dict:
    target = getattr(importlib.import_module(section["module"]), section["class"])
    result = process_config(target.config_type(), section.get("config", {}))
    assert result.success, f"{section['class']}: {[e.message for e in result.errors]}"
    return result.value


@pytest.mark.parametrize("path", INSTANCE_FILES, ids=lambda p: str(p.relative_to(HOME)))
def test_instance_yaml_matches_dagsters_schemas(path, monkeypatch, tmp_path):
    for k, v in PG_ENV.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "dagster.yaml").write_text(path.read_text())
    config, _ = dagster_instance_config(str(tmp_path))  # raises DagsterInvalidConfigError on a bad file
    for section in _class_sections(config).values():
        _class_config(section)
    if path.name == "dagster.yaml" and path.parent == HOME:
        assert "storage" not in config  # the embedded default stays SQLite under DAGSTER_HOME
    else:
        from dagster_postgres.utils import pg_url_from_config

        pg = process_config(pg_config(), config["storage"]["postgres"])
        assert pg.success, [e.message for e in pg.errors]
        assert pg_url_from_config(pg.value) == "postgresql+psycopg2://dagster:secret@127.0.0.1:5432/dagster"
        assert config["compute_logs"]["class"] == "S3ComputeLogManager"


def test_production_instance_is_postgres_with_s3_compute_logs_and_the_ecs_launcher():
    prod = yaml.safe_load((DEPLOY / "ecs" / "dagster.yaml").read_text())
    assert prod["storage"]["postgres"]["postgres_db"]["password"] == {"env": "DAGSTER_PG_PASSWORD"}
    assert prod["run_launcher"]["class"] == "EcsRunLauncher"
    # secrets travel as ECS secrets, never as plain environment of the run
    assert "DAGSTER_PG_PASSWORD" not in prod["run_launcher"]["config"]["env_vars"]
    # capacity providers, not launchType: a GPU step can then pick its own provider
    kwargs = prod["run_launcher"]["config"]["run_task_kwargs"]
    assert "launchType" not in kwargs and kwargs["capacityProviderStrategy"]


def test_ecs_launcher_and_s3_compute_logs_build_against_loopback_aws(monkeypatch, tmp_path):
    with loopback_s3() as s3:
        for k, v in PG_ENV.items():
            monkeypatch.setenv(k, v)
        # moto's ECS and S3 behind the same loopback endpoint
        import boto3

        ecs = boto3.client("ecs", endpoint_url=s3.endpoint, region_name="us-east-1")
        ecs.register_task_definition(
            family="mmc4-run", containerDefinitions=[{"name": "run", "image": "mmc4-assets:test", "memory": 512}]
        )
        s3.create_bucket("mmc4-logs")
        (tmp_path / "dagster.yaml").write_text((DEPLOY / "ecs" / "dagster.yaml").read_text())
        config, _ = dagster_instance_config(str(tmp_path))
        sections = _class_sections(config)

        def build(name):
            s = sections[name]
            return ConfigurableClassData(s["module"], s["class"], yaml.safe_dump(s["config"])).rehydrate(as_type=object)

        launcher = build("run_launcher")
        assert launcher.task_definition.endswith("task-definition/mmc4-run:1")
        assert launcher.run_resources == {"cpu": "4096", "memory": "16384", "ephemeral_storage": 50}
        assert "MMC4_STORAGE_ROOT" in launcher.env_vars
        logs = build("compute_logs")
        assert logs._s3_bucket == "mmc4-logs" and logs._s3_prefix == "compute-logs"
        logs.dispose()


def test_helm_values_parse_and_their_run_config_is_dagster_k8s_config():
    from dagster_k8s.job import UserDefinedDagsterK8sConfig

    values = yaml.safe_load((DEPLOY / "k8s" / "values.yaml").read_text())
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False
    assert values["computeLogManager"]["type"] == "S3ComputeLogManager"
    assert values["computeLogManager"]["config"]["s3ComputeLogManager"]["bucket"]
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "mmc4_assets.definitions"]
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["MMC4_PROFILE"] == "production" and env["MMC4_EXECUTOR"] in ("multiprocess", "k8s")
    run_k8s = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    UserDefinedDagsterK8sConfig.from_dict(
        {
            "container_config": run_k8s.get("containerConfig", {}),
            "pod_spec_config": run_k8s.get("podSpecConfig", {}),
            "job_spec_config": run_k8s.get("jobSpecConfig", {}),
        }
    )
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"


@pytest.mark.parametrize("kind", ["k8s", "ecs"])
def test_executor_configs_validate_and_place_gpu_steps(kind):
    config = load_executor_config(DEPLOY / kind / "executor.yaml")
    executor = executor_for(kind, config)
    assert executor.name == f"{kind}_by_device"
    base = executor_for(kind)  # the unconfigured definition: its schema checks the file
    result = process_config(base.config_schema.as_field().config_type, config)
    assert result.success, [e.message for e in result.errors]

    gpu = device_step_tags({DEVICE_TAG: "gpu", "dagster/op": "clip_scores"}, config["device_tags"])
    cpu = device_step_tags({"dagster/op": "fetched_images"}, config["device_tags"])
    assert cpu == {"dagster/op": "fetched_images"}
    if kind == "k8s":
        from dagster_k8s.job import get_user_defined_k8s_config

        k8s = get_user_defined_k8s_config(gpu)
        assert k8s.container_config["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert k8s.pod_spec_config["tolerations"][0]["key"] == "nvidia.com/gpu"
    else:
        from dagster_aws.ecs.executor import EcsStepHandler

        fake = SimpleNamespace(_task_overrides={}, _cpu="2048", _memory="8192", _ephemeral_storage=None)
        overrides = EcsStepHandler._get_task_overrides(fake, gpu)
        assert overrides["cpu"] == "8192" and overrides["memory"] == "30720"
        container = EcsStepHandler._get_container_overrides(fake, gpu)
        assert container["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
        assert "environment" not in container  # it would replace the step's own variables
        assert json.loads(gpu["ecs/run_task_kwargs"])["capacityProviderStrategy"][0]["capacityProvider"]


def test_an_op_s_own_launcher_tags_win_over_the_device_mapping():
    tags = {DEVICE_TAG: "gpu", "ecs/cpu": "1024"}
    assert device_step_tags(tags, {"gpu": {"ecs/cpu": "8192", "ecs/memory": "30720"}}) == {
        DEVICE_TAG: "gpu",
        "ecs/cpu": "1024",
        "ecs/memory": "30720",
    }


def test_placement_wraps_the_launchers_step_handler():
    seen = {}

    class Recorder(StepHandler):
        name = "recorder"

        def launch_step(self, ctx):
            seen.update(ctx.step_tags)
            return iter(())

        def check_step_health(self, ctx):
            return None

        def terminate_step(self, ctx):
            return iter(())

    steps = [SimpleNamespace(key="clip_scores", tags={DEVICE_TAG: "gpu"}), SimpleNamespace(key="raw_c4", tags={})]
    ctx = StepHandlerContext(instance=None, plan_context=None, steps=steps, execute_step_args=None)
    handler = DevicePlacementStepHandler(Recorder(), {"gpu": {"dagster-k8s/config": {"pod_spec_config": {}}}})
    list(handler.launch_step(ctx))
    assert seen == {"clip_scores": {"dagster-k8s/config": '{"pod_spec_config": {}}', DEVICE_TAG: "gpu"}, "raw_c4": {}}
    assert "gpu" in handler.name


def test_code_location_loads_with_the_production_profile_and_each_executor(monkeypatch):
    from mmc4_assets.definitions import defs

    env = {
        "MMC4_PROFILE": "production",
        "MMC4_STORAGE_ROOT": "s3://mmc4-prod/v1",
        "MMC4_SHARDS_ROOT": "s3://mmc4-source/c4/en",
        "MMC4_S3_REGION": "us-east-1",
        "MMC4_CC_INDEX_URL": "https://index.commoncrawl.org",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for kind in ("multiprocess", "k8s", "ecs"):
        monkeypatch.setenv("MMC4_EXECUTOR", kind)
        config = "" if kind == "multiprocess" else str(DEPLOY / kind / "executor.yaml")
        monkeypatch.setenv("MMC4_EXECUTOR_CONFIG", config)
        d = defs()
        dg.Definitions.validate_loadable(d)
        job = d.resolve_job_def("mmc4_shard_job")
        want = "multi_or_in_process_executor" if kind == "multiprocess" else f"{kind}_by_device"
        assert job.executor_def.name == want
        source = d.resources["source"]
        assert source.common_crawl is not None and source.common_crawl.collections == ["CC-MAIN-2019-18"]
    with pytest.raises(ValueError, match="MMC4_EXECUTOR must be one of"):
        executor_for("celery")
