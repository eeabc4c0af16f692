"""One way to get a store: the resources, the CLI and the API agree on the root and the S3 options."""

from __future__ import annotations

import pytest

from mmc4_assets.storage import open_store, resolve_root, storage_settings

S3_ENV = {"MMC4_S3_ENDPOINT_URL": "http://127.0.0.1:9", "MMC4_S3_REGION": "eu-west-1", "MMC4_S3_MAX_ATTEMPTS": "7"}
S3_OPTIONS = {
    "endpoint_url": "http://127.0.0.1:9",
    "client_kwargs": {"region_name": "eu-west-1"},
    "config_kwargs": {"retries": {"max_attempts": 7, "mode": "standard"}},
}


def test_root_comes_from_the_argument_then_the_environment_then_dot_storage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_root(environ={}) == str(tmp_path / "storage")
    assert resolve_root(environ={"MMC4_STORAGE_ROOT": "out"}) == str(tmp_path / "out")
    assert resolve_root("mine", environ={"MMC4_STORAGE_ROOT": "out"}) == str(tmp_path / "mine")
    assert resolve_root("s3://b/p", environ={"MMC4_STORAGE_ROOT": "out"}) == "s3://b/p"


def test_s3_settings_reach_s3_roots_only():
    remote = storage_settings("s3://bucket/prefix", environ={"MMC4_STORAGE_ROOT": "x", **S3_ENV})
    assert remote.root == "s3://bucket/prefix" and remote.storage_options == S3_OPTIONS
    assert storage_settings("/data/mmc4", environ=S3_ENV).storage_options == {}
    # explicit S3 fields (as an S3Resource holds them) replace the environment's
    explicit = storage_settings("s3://b/p", s3={"region_name": "us-east-1"}, environ=S3_ENV)
    assert explicit.storage_options == {"client_kwargs": {"region_name": "us-east-1"}}
    store = open_store(environ={"MMC4_STORAGE_ROOT": "s3://b/p", **S3_ENV})
    assert store.uri() == "s3://b/p" and store.storage_options == S3_OPTIONS


def test_the_storage_resource_builds_the_same_store(monkeypatch):
    from mmc4_assets.defs.resources import StorageResource, s3_fields, s3_resource_from_env

    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)
    s3 = s3_resource_from_env().process_config_and_initialize()  # EnvVars read, as in a run
    resource = StorageResource(root="s3://bucket/prefix", **s3_fields(s3))
    assert resource.store().storage_options == open_store("s3://bucket/prefix").storage_options == S3_OPTIONS


def test_the_api_serves_the_store_the_pipeline_writes(tmp_path, monkeypatch):
    import uvicorn

    import mmc4_assets.api.app as app_module
    from mmc4_assets.api.cli import serve_main

    seen = {}

    def create_app(settings):
        seen["settings"] = settings

    monkeypatch.setattr(app_module, "create_app", create_app)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    for k, v in {"MMC4_STORAGE_ROOT": "s3://bucket/prefix", **S3_ENV}.items():
        monkeypatch.setenv(k, v)
    assert serve_main(["--tokens-file", str(tmp_path / "tokens.json")]) == 0
    assert seen["settings"].storage_root == "s3://bucket/prefix"
    assert seen["settings"].storage_options == S3_OPTIONS
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MMC4_STORAGE_ROOT")
    assert serve_main(["--tokens-file", "t.json"]) == 0
    assert seen["settings"].storage_root == str(tmp_path / "storage")  # ./storage, absolute
    assert seen["settings"].storage_options == {}


@pytest.fixture(autouse=True)
def _no_ambient_s3(monkeypatch):
    for var in [
        *S3_ENV,
        "MMC4_S3_PROFILE",
        "MMC4_S3_ACCESS_KEY_ID",
        "MMC4_S3_SECRET_ACCESS_KEY",
        "MMC4_S3_SESSION_TOKEN",
    ]:
        monkeypatch.delenv(var, raising=False)
