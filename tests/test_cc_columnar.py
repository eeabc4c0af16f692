"""Common Crawl's columnar index in loopback S3: one bulk join, byte ranges read per WARC file once.

The sample's WARC and WAT are uploaded where Common Crawl keeps its files, and a columnar
index (parquet with CC's columns) is generated from their records, plus decoys: a closer
capture with status 404 and a farther 200 capture of the same URL. shard_pages joined with
that index, and no archive at all, must give raw_c4 the same documents as the archives do.
"""

import io
from collections import Counter

import dagster as dg
import polars as pl
import pytest

from mmc4_assets.defs.partitions import shards
from mmc4_assets.defs.raw_c4 import raw_c4
from mmc4_assets.defs.resources import CommonCrawlConfig, sample_resources
from mmc4_assets.defs.shard_pages import shard_pages
from mmc4_assets.engine import EngineSettings, dask_client
from mmc4_assets.pages import cc_columnar
from mmc4_assets.pages.archives import iter_page_records, parse_time
from mmc4_assets.pages.cc_columnar import ColumnarIndex
from mmc4_assets.pages.join import Location, join_shard_pages
from mmc4_assets.sample.server import sample_page_archives, sample_shard_path
from mmc4_assets.storage import ShardStore
from test_cc_index import COLLECTION, CRAWL_BUCKET, FILES, SHARD, build_cdx
from test_s3_support import s3_server  # noqa: F401  (fixture)

INDEX_KEY = f"cc-index/table/cc-main/warc/crawl={COLLECTION}/subset=warc/part-00000.parquet"


def columnar_rows():
    """CC's columns for the sample's records. CC indexes WARC responses; of the WAT's three
    envelopes per page (request, response, metadata) only the response one is indexed here."""
    local = {path.name: path.read_bytes() for path in sample_page_archives()}
    by_cc_name = {cc: local[name] for name, cc in FILES.items()}
    rows = []
    for r in build_cdx(sample_page_archives()):
        start, length = int(r["offset"]), int(r["length"])
        record = io.BytesIO(by_cc_name[r["filename"]][start : start + length])
        if "/wat/" in r["filename"] and next(iter_page_records(record), None) is None:
            continue
        rows.append(
            {
                "url": r["url"],
                "url_surtkey": r["urlkey"],
                "fetch_time": parse_time(r["timestamp"]),
                "fetch_status": int(r["status"] or 0),
                "content_mime_detected": r["mime"] or "text/html",
                "warc_filename": r["filename"],
                "warc_record_offset": int(r["offset"]),
                "warc_record_length": int(r["length"]),
            }
        )
    return rows


@pytest.fixture(scope="module")
def crawl_index(s3_server):
    s3_server.create_bucket(CRAWL_BUCKET)
    client = s3_server.client()
    for path in sample_page_archives():
        client.upload_file(str(path), CRAWL_BUCKET, FILES[path.name])
    rows = columnar_rows()
    page = next(
        r
        for r in rows
        if r["warc_filename"].endswith(".warc.gz") and r["fetch_status"] == 200 and "html" in r["content_mime_detected"]
    )
    other = next(r for r in rows if r["url"] != page["url"] and r["fetch_status"] == 200)
    import datetime as dt

    # decoys for page["url"]: a 404 captured closer in time, a 200 three years away holding another page
    rows.append(
        {
            **page,
            "fetch_status": 404,
            "warc_record_offset": other["warc_record_offset"],
            "warc_record_length": other["warc_record_length"],
        }
    )
    rows.append({**other, "url": page["url"], "fetch_time": page["fetch_time"] - dt.timedelta(days=1100)})
    buf = io.BytesIO()
    pl.DataFrame(rows).with_columns(pl.col("fetch_status").cast(pl.Int16)).write_parquet(buf)
    client.put_object(Bucket=CRAWL_BUCKET, Key=INDEX_KEY, Body=buf.getvalue())
    return page


def _config(s3_server, **kw):
    return CommonCrawlConfig(
        columnar_index=[f"s3://{CRAWL_BUCKET}/cc-index/table/cc-main/warc/*/*/*.parquet"],
        archive_root=f"s3://{CRAWL_BUCKET}/",
        endpoint_url=s3_server.endpoint,
        **kw,
    )


def test_columnar_join_reads_each_warc_file_once(crawl_index, s3_server, tmp_path, monkeypatch):
    opened = Counter()
    real = cc_columnar.open_archive

    def counting(root, name):
        opened[name] += 1
        return real(root, name)

    monkeypatch.setattr(cc_columnar, "open_archive", counting)
    index = ColumnarIndex.from_config(_config(s3_server))
    assert index.files == (f"s3://{CRAWL_BUCKET}/{INDEX_KEY}",)
    # threads of this process, so the counting opener is the one the tasks call
    with dask_client(EngineSettings(n_workers=1, threads_per_worker=2, processes=False)) as client:
        report = join_shard_pages(
            client, {SHARD: Location(str(sample_shard_path()))}, [], Location(str(tmp_path)), cc=index
        )
    assert set(opened) == set(FILES.values()) and set(opened.values()) == {1}
    table = ShardStore(tmp_path).read_table("shard_pages", SHARD)
    assert report.per_shard[SHARD]["docs_matched_cc"] == table.height > 0
    assert table["source"].is_in(["cc_warc", "cc_wat"]).all()
    chosen = table.filter(pl.col("url") == crawl_index["url"]).row(0, named=True)
    # the 404 and the far capture lose to the 200 closest to the C4 timestamp
    assert chosen["record_offset"] == crawl_index["warc_record_offset"] and chosen["status"] == 200


def test_raw_c4_from_the_columnar_index_matches_raw_c4_from_archives(crawl_index, s3_server, tmp_path):
    local_root, cc_root = tmp_path / "local", tmp_path / "cc"
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(shards.name, [SHARD])
    local = dg.materialize(
        [raw_c4], partition_key=SHARD, instance=instance, resources=sample_resources(str(local_root))
    )
    resources = sample_resources(str(cc_root), page_archives=[], common_crawl=_config(s3_server))
    via_index = dg.materialize([shard_pages, raw_c4], partition_key=SHARD, instance=instance, resources=resources)
    assert local.success and via_index.success
    md = {
        m.asset_key.to_user_string(): m.step_materialization_data.materialization.metadata
        for m in via_index.get_asset_materialization_events()
    }
    assert md["raw_c4"]["page_lookup"].value == "shard_pages"
    assert "cc_pages_kept" not in md["raw_c4"]  # no CDX call: the columnar index answered
    assert md["shard_pages"]["columnar_index_files"].value == 1
    want = ShardStore(local_root).read_table("raw_c4", SHARD).drop("page_source")
    got = ShardStore(cc_root).read_table("raw_c4", SHARD).drop("page_source")
    assert got.equals(want)
