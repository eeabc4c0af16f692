import os

import pytest

# Never let a developer's environment point tests at real storage or a real instance.
for var in ("MMC4_STORAGE_ROOT", "MMC4_SHARDS_ROOT", "MMC4_PAGE_ARCHIVES", "MMC4_PROFILE"):
    os.environ.pop(var, None)


@pytest.fixture
def dagster_home(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home
