"""The cluster configuration the page join runs on, checked offline (no cluster is reachable here):
distributed's own config schema, the DaskCluster pod specs through the Kubernetes client models,
and the Dagster definitions with a scheduler address set."""

import os
from pathlib import Path

import dagster as dg
import distributed
import jsonschema
import pytest
import yaml
from dask.utils import parse_bytes
from kubernetes.client import ApiClient

DEPLOY = Path(__file__).resolve().parents[1] / "dagster_home" / "deploy"


def _schema():
    return yaml.safe_load((Path(distributed.__file__).parent / "distributed-schema.yaml").read_text())


def test_distributed_config_matches_dask_schema():
    config = yaml.safe_load((DEPLOY / "dask" / "distributed.yaml").read_text())
    jsonschema.validate({"distributed": config["distributed"]}, _schema())
    with pytest.raises(jsonschema.ValidationError):  # the schema does catch a wrong value
        jsonschema.validate({"distributed": {"worker": {"memory": {"spill": "lots"}}}}, _schema())
    assert config["dataframe"]["shuffle"]["method"] == "p2p"


class _Response:
    def __init__(self, data):
        import json

        self.data = json.dumps(data)


def test_dask_cluster_pod_specs_are_valid_kubernetes_and_consistent():
    cluster = yaml.safe_load((DEPLOY / "dask" / "dask-cluster.yaml").read_text())
    assert cluster["apiVersion"] == "kubernetes.dask.org/v1" and cluster["kind"] == "DaskCluster"
    api = ApiClient()
    for role in ("worker", "scheduler"):
        # the client's models refuse a pod spec with missing required fields or wrong types
        spec = api.deserialize(_Response(cluster["spec"][role]["spec"]), "V1PodSpec")
        assert spec.containers and spec.service_account_name == "mmc4-dagster"
        mounts = {m.name for c in spec.containers for m in c.volume_mounts or []}
        assert mounts <= {v.name for v in spec.volumes}
    worker = cluster["spec"]["worker"]["spec"]["containers"][0]
    args = worker["args"]
    memory = parse_bytes(args[args.index("--memory-limit") + 1])
    # dask must spill and pause before the kubelet OOM-kills the pod
    assert memory <= parse_bytes(worker["resources"]["limits"]["memory"].replace("Gi", "GiB"))
    assert worker["image"] == cluster["spec"]["scheduler"]["spec"]["containers"][0]["image"]
    ports = {p["name"] for p in cluster["spec"]["scheduler"]["service"]["ports"]}
    assert "tcp-comm" in ports


def test_production_definitions_use_the_configured_scheduler(monkeypatch):
    env = {
        "MMC4_PROFILE": "production",
        "MMC4_STORAGE_ROOT": "s3://mmc4-prod/v1",
        "MMC4_SHARDS_ROOT": "s3://mmc4-source/c4/en",
        "MMC4_PAGE_ARCHIVES": "s3://commoncrawl/crawl-data/CC-MAIN-2019-18/segments/*/wat/*.wat.gz",
        "MMC4_CC_COLUMNAR_INDEX": "s3://commoncrawl/cc-index/table/cc-main/warc/crawl=CC-MAIN-2019-18/"
        "subset=warc/*.parquet",
        "MMC4_DASK_SCHEDULER": "tcp://mmc4-dask-scheduler.mmc4:8786",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from mmc4_assets.definitions import defs

    d = defs()
    dg.Definitions.validate_loadable(d)
    settings = d.resources["dask"].settings()
    assert settings.scheduler_address == env["MMC4_DASK_SCHEDULER"] and settings.shuffle_method == "p2p"
    cc = d.resources["source"].common_crawl
    assert cc.columnar_index and not cc.uses_cdx()  # at scale: the bulk join, no per-URL CDX calls
    assert {j.name for j in d.jobs} >= {"page_records_job", "shard_pages_job", "mmc4_shard_job"}
    assert os.environ["MMC4_PROFILE"] == "production"
