"""The page join on Dask: the capture rule, independence from partitioning, and its automation."""

import gzip
import io
import json

import dagster as dg
import pandas as pd
import polars as pl
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from mmc4_assets.cli import archives_main
from mmc4_assets.defs.automation import archive_discovery_sensor, shard_discovery_sensor
from mmc4_assets.defs.partitions import archives, shards
from mmc4_assets.defs.resources import ShardSource
from mmc4_assets.engine import EngineSettings, dask_client
from mmc4_assets.pages.join import Location, join_shard_pages, rank_captures
from mmc4_assets.pages.page_table import write_page_records
from mmc4_assets.storage import ShardStore


def _capture(url_key, status, mime, time, archive, offset, shard="s", c4="2019-04-25T00:00:00Z"):
    return {
        "shard": shard,
        "url_key": url_key,
        "c4_url": url_key,
        "c4_time": int(pd.Timestamp(c4).timestamp()),
        "url": url_key,
        "capture_time": pd.Timestamp(time, tz="UTC"),
        "status": status,
        "mime": mime,
        "source": "warc",
        "archive": archive,
        "record_offset": offset,
        "image_urls": [],
        "image_alts": [],
        "image_positions": [],
    }


def test_capture_rule_html_200_first_then_closest_then_archive_and_offset():
    rows = [
        _capture("k1", 404, "text/html", "2019-04-25T00:00:00", "a", 0),  # closest, but 404
        _capture("k1", 200, "text/html", "2019-04-20T00:00:00", "b", 10),  # 5 days: chosen
        _capture("k1", 200, "text/html", "2019-05-10T00:00:00", "a", 20),  # 15 days
        _capture("k2", 200, "text/html", "2019-04-24T00:00:00", "z", 5),  # tie on distance ...
        _capture("k2", 200, "text/html", "2019-04-26T00:00:00", "c", 9),  # ... archive "c" < "z"
        _capture("k3", 301, "text/html", "2019-04-25T00:00:00", "a", 1),  # nothing better: kept
    ]
    for order in (rows, rows[::-1]):
        best = rank_captures(pd.DataFrame(order)).set_index("url_key")
        assert best.loc["k1", "archive"] == "b" and best.loc["k1", "seconds_from_c4"] == -5 * 86400
        assert best.loc["k2", "archive"] == "c"
        assert best.loc["k3", "status"] == 301


def _crawl(root, n_archives=3, n_shards=3, pages=12):
    """Archives whose pages are spread over shards; one URL captured twice (two archives, two dates)."""
    store = ShardStore(root / "store")
    tables = []
    for a in range(n_archives):
        buf = io.BytesIO()
        writer = WARCWriter(buf, gzip=True)
        for i in range(pages):
            url = f"https://s{(a * pages + i) % n_shards}.test/p{a}-{i}"
            if i == 0:
                url = "https://shared.test/page"  # in every archive, captured a day apart
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
            writer.write_record(
                writer.create_warc_record(
                    url,
                    "response",
                    payload=io.BytesIO(f'<img src="/img/{a}-{i}.jpg" alt="{i}">'.encode()),
                    http_headers=http,
                    warc_headers_dict={"WARC-Date": f"2019-04-2{a}T00:00:00Z"},
                )
            )
        write_page_records(store, f"arch-{a}", io.BytesIO(buf.getvalue()), f"arch-{a}")
        tables.append(Location(str(store.table_path("page_records", f"arch-{a}").path)))
    shard_files = {}
    for s in range(n_shards):
        lines = [
            json.dumps({"text": "A. B.", "timestamp": "2019-04-21T06:00:00Z", "url": u})
            for a in range(n_archives)
            for i in range(pages)
            if (u := f"https://s{s}.test/p{a}-{i}") and (a * pages + i) % n_shards == s and i
        ]
        lines.append(json.dumps({"text": "A.", "timestamp": "2019-04-21T06:00:00Z", "url": "https://shared.test/page"}))
        path = root / f"shard-{s}.json.gz"
        path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
        shard_files[f"shard-{s}"] = Location(str(path))
    return shard_files, tables


def test_join_is_the_same_whatever_the_partitioning(tmp_path):
    shard_files, tables = _crawl(tmp_path)
    outputs = []
    with dask_client(EngineSettings(n_workers=1, threads_per_worker=2, processes=False)) as client:
        for n in (1, 4):
            out = tmp_path / f"out-{n}"
            report = join_shard_pages(client, shard_files, tables, Location(str(out)), npartitions=n)
            outputs.append({s: ShardStore(out).read_table("shard_pages", s) for s in shard_files})
            assert sum(r["pages"] for r in report.per_shard.values()) == 3 * 11 + 3
    for shard, table in outputs[0].items():
        assert table.equals(outputs[1][shard])
        # every URL of the shard once; the shared page from the capture closest to 2019-04-21T06:00
        assert table["url_key"].n_unique() == table.height > 1
        shared = table.filter(pl.col("url_key") == "https://shared.test/page").row(0, named=True)
        assert shared["archive"] == "arch-1" and shared["seconds_from_c4"] == -6 * 3600


def test_sensors_register_archives_then_join_new_shards_in_one_run(tmp_path):
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "a.warc.gz").write_bytes(b"")
    for key in ("c4.00000", "c4.00001"):
        (tmp_path / f"{key}.json.gz").write_bytes(gzip.compress(b"{}\n"))
    source = ShardSource(shards_root=str(tmp_path), page_archives=[str(tmp_path / "pages" / "*.warc.gz")])
    instance = dg.DagsterInstance.ephemeral()

    found = archive_discovery_sensor(dg.build_sensor_context(instance=instance), source=source)
    assert [r.partition_key for r in found.run_requests] == ["a.warc.gz"]
    instance.add_dynamic_partitions(archives.name, found.dynamic_partitions_requests[0].partition_keys)

    result = shard_discovery_sensor(dg.build_sensor_context(instance=instance), source=source)
    [join] = result.run_requests  # one join for both new shards, no shard run before its pages exist
    assert join.job_name == "shard_pages_job"
    assert join.tags["dagster/asset_partition_range_start"] == "c4.00000"
    assert join.tags["dagster/asset_partition_range_end"] == "c4.00001"
    instance.add_dynamic_partitions(shards.name, result.dynamic_partitions_requests[0].partition_keys)
    instance.report_runless_asset_event(dg.AssetMaterialization("shard_pages", partition="c4.00000"))
    later = shard_discovery_sensor(dg.build_sensor_context(instance=instance), source=source)
    assert [(r.job_name, r.partition_key) for r in later.run_requests] == [("mmc4_shard_job", "c4.00000")]


def test_archives_cli_adds_lists_and_refuses_bad_keys(dagster_home, capsys):
    assert archives_main(["add", "seg~warc~a.warc.gz", "b.wat.gz"]) == 0
    assert archives_main(["add", "b.wat.gz"]) == 0
    assert "registered 0 new" in capsys.readouterr().out
    archives_main(["list"])
    assert capsys.readouterr().out.split() == ["seg~warc~a.warc.gz", "b.wat.gz"]
    with pytest.raises(ValueError, match="invalid archive key"):
        archives_main(["add", "..~x.warc.gz"])


def test_the_join_refuses_to_run_without_any_page_records(tmp_path):
    from mmc4_assets.defs.resources import sample_resources
    from mmc4_assets.defs.shard_pages import shard_pages

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(shards.name, ["c4-sample.00000-of-00001"])
    result = dg.materialize(
        [shard_pages],
        partition_key="c4-sample.00000-of-00001",
        instance=instance,
        resources=sample_resources(str(tmp_path)),
        raise_on_error=False,
    )
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "no page records to join" in failure and not (tmp_path / "tables" / "shard_pages").exists()
