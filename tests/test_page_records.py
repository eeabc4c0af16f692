"""Archives read once, robustly: warcio's iteration errors are counted reasons, a broken
archive fails only its own partition (named), and every generated record is accounted for."""

import gzip
import io
import json
import random
from collections import Counter

import dagster as dg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from mmc4_assets.defs.page_records import page_records, page_records_complete
from mmc4_assets.defs.partitions import archives, shards
from mmc4_assets.defs.raw_c4 import raw_c4
from mmc4_assets.defs.resources import ShardSource, sample_resources
from mmc4_assets.defs.shard_pages import shard_pages
from mmc4_assets.pages.archive_keys import archive_key, archive_relpath
from mmc4_assets.pages.archives import (
    ArchiveProgress,
    ArchiveReadError,
    iter_page_records,
)
from mmc4_assets.sample.server import sample_page_archives
from mmc4_assets.stats import StepStats
from mmc4_assets.storage import ShardStore

SHARD = "c4-sample.00000-of-00001"


def _records(n: int, gz: bool) -> bytes:
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=gz)
    for i in range(n):
        http = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
        writer.write_record(
            writer.create_warc_record(
                f"https://broken.test/{i}",
                "response",
                http_headers=http,
                payload=io.BytesIO(f'<img src="/{i}.jpg" alt="a">'.encode()),
            )
        )
    return buf.getvalue()


def non_chunked_gzip(n: int = 3) -> bytes:
    """Like warcio's example-bad-non-chunked.warc.gz: several records in ONE gzip member."""
    return gzip.compress(_records(n, gz=False))


def wrong_chunks(n: int = 3) -> bytes:
    """Like warcio's example-wrong-chunks.warc.gz: each record's head and body in separate gzip members."""
    out = b""
    for rec in _records(n, gz=False).split(b"WARC/1.0\r\n")[1:]:
        rec = b"WARC/1.0\r\n" + rec
        cut = rec.index(b"\r\n\r\n") + 4
        out += gzip.compress(rec[:cut]) + gzip.compress(rec[cut:])
    return out


@pytest.mark.parametrize(
    "data, reason, pages",
    [
        (non_chunked_gzip(), "archive_read_error_non_chunked_gzip", 1),
        (wrong_chunks(), "archive_read_error_unknown_format", 0),
        (
            _records(3, gz=True) + gzip.compress(b"<html>not a record</html>\r\n\r\n"),
            "archive_read_error_unknown_format",
            3,
        ),
    ],
)
def test_warcio_iteration_errors_are_counted_reasons(data, reason, pages):
    stats, progress = StepStats(), ArchiveProgress()
    got = list(iter_page_records(io.BytesIO(data), "x.warc.gz", stats, progress))
    assert len(got) == pages and stats.kept == pages
    assert progress.error == reason and stats.dropped[reason] == 1
    assert progress.error_offset is not None and progress.records == pages


def _archive_partitions(tmp_path, extra: dict[str, bytes]):
    """The sample's archives plus broken ones, all under one pattern."""
    pages_dir = tmp_path / "pages"
    pages_dir.mkdir()
    for path in sample_page_archives():
        (pages_dir / path.name).write_bytes(path.read_bytes())
    for name, data in extra.items():
        (pages_dir / name).write_bytes(data)
    return [str(pages_dir / "*.gz")]


def test_a_broken_archive_fails_only_its_partition_and_never_blocks_the_others(tmp_path):
    patterns = _archive_partitions(
        tmp_path, {"bad-non-chunked.warc.gz": non_chunked_gzip(), "bad-wrong-chunks.warc.gz": wrong_chunks()}
    )
    resources = sample_resources(str(tmp_path / "store"), page_archives=patterns)
    keys = list(resources["source"].archive_keys())
    assert keys == [
        "bad-non-chunked.warc.gz",
        "bad-wrong-chunks.warc.gz",
        "sample-pages.warc.gz",
        "sample-pages.wat.gz",
    ]
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(archives.name, keys)
    instance.add_dynamic_partitions(shards.name, [SHARD])
    outcomes = {}
    for key in keys:
        result = dg.materialize(
            [page_records, page_records_complete],
            partition_key=key,
            instance=instance,
            resources=resources,
            raise_on_error=False,
        )
        outcomes[key] = result
    # one gzip stream around all records: read whole (warcio's advice), every page recovered
    recovered = outcomes["bad-non-chunked.warc.gz"]
    md = recovered.get_asset_materialization_events()[0].step_materialization_data.materialization.metadata
    assert recovered.success and md["num_pages"].value == 3
    assert md["archive_recovered"].value == "non_chunked_gzip_read_whole"
    # a record split over two gzip members cannot be read: that partition fails, named, alone
    check = outcomes["bad-wrong-chunks.warc.gz"].get_asset_check_evaluations()[0]
    assert not outcomes["bad-wrong-chunks.warc.gz"].success
    assert not check.passed and str(tmp_path / "pages" / "bad-wrong-chunks.warc.gz") in check.description
    assert "read stopped at byte 0 after 0 records (archive_read_error_unknown_format)" in check.description
    assert all(outcomes[k].success for k in keys[2:])
    # the join and raw_c4 still find every page the sample's own archives hold
    joined = dg.materialize([shard_pages, raw_c4], partition_key=SHARD, instance=instance, resources=resources)
    assert joined.success
    assert ShardStore(tmp_path / "store").read_table("raw_c4", SHARD).height == 34


def test_a_missing_archive_names_its_file(tmp_path):
    resources = sample_resources(str(tmp_path), page_archives=[str(tmp_path / "gone.warc.gz")])
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(archives.name, ["gone.warc.gz"])
    with pytest.raises(FileNotFoundError, match="gone.warc.gz"):
        dg.materialize([page_records], partition_key="gone.warc.gz", instance=instance, resources=resources)
    with pytest.raises(ArchiveReadError, match=str(tmp_path / "dir.warc.gz")):
        (tmp_path / "dir.warc.gz").mkdir()
        instance.add_dynamic_partitions(archives.name, ["dir.warc.gz"])
        dg.materialize(
            [page_records],
            partition_key="dir.warc.gz",
            instance=instance,
            resources=sample_resources(str(tmp_path), page_archives=[str(tmp_path / "*.warc.gz")]),
        )


@given(
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30).filter(
        lambda s: "/" not in s and "\\" not in s and s not in (".", "..")
    ),
    st.lists(st.sampled_from(["a", "b~", "%7E", "c d"]), max_size=3),
)
@settings(max_examples=200, deadline=None)
def test_archive_keys_are_safe_and_reversible(name, dirs):
    rel = "/".join([*dirs, name])
    key = archive_key(rel)
    assert "/" not in key and all(c.isalnum() or c in "._~%-" for c in key)
    assert archive_relpath(key) == rel


# --- fuzz: generated WARC/WAT records through the real record parser --------------------------

_html = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda imgs, base: (
            f"<html><head>{base}</head><body>"
            + "".join(f'<img src="{s}" alt="{a}">' for s, a in imgs)
            + "</body></html>"
        ).encode(),
        st.lists(st.tuples(st.text(max_size=20), st.text(max_size=10)), max_size=6),
        st.sampled_from(["", '<base href="https://cdn.test/x/">', '<base href="::bad">']),
    ),
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
_wat = st.one_of(
    st.binary(max_size=200),
    _json.map(lambda j: json.dumps(j).encode()),
    st.builds(
        lambda url, links, status, kind: json.dumps(
            {
                "Envelope": {
                    "WARC-Header-Metadata": {"WARC-Type": kind, "WARC-Target-URI": url},
                    "Payload-Metadata": {
                        "HTTP-Response-Metadata": {
                            "Response-Message": {"Status": status},
                            "HTML-Metadata": {"Links": links},
                        }
                    },
                }
            }
        ).encode(),
        st.text(max_size=30),
        st.lists(
            st.fixed_dictionaries({"path": st.sampled_from(["IMG@/src", "A@/href"]), "url": st.text(max_size=20)}),
            max_size=5,
        ),
        st.one_of(st.integers(), st.text(max_size=4)),
        st.sampled_from(["response", "request", "metadata"]),
    ),
)
_record = st.one_of(
    st.tuples(
        st.just("response"),
        st.sampled_from(["text/html", "text/plain", "image/jpeg", "", "TEXT/HTML; x"]),
        st.sampled_from(["200 OK", "404 Not Found", "301 Moved"]),
        _html,
    ),
    st.tuples(st.just("metadata"), st.sampled_from(["application/json", "text/plain"]), st.just(""), _wat),
    st.tuples(
        st.sampled_from(["request", "warcinfo", "resource", "conversion"]),
        st.just(""),
        st.just(""),
        st.binary(max_size=100),
    ),
)


def _write(records, gz: bool) -> bytes:
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=gz)
    for i, (kind, ctype, status, payload) in enumerate(records):
        url = f"https://fuzz.test/{i}"
        if kind == "response":
            http = StatusAndHeaders(status, [("Content-Type", ctype)] if ctype else [], protocol="HTTP/1.1")
            rec = writer.create_warc_record(url, "response", payload=io.BytesIO(payload), http_headers=http)
        elif kind == "metadata":
            rec = writer.create_warc_record(url, "metadata", payload=io.BytesIO(payload), warc_content_type=ctype)
        elif kind == "request":
            http = StatusAndHeaders("GET /x HTTP/1.1", [("Host", "fuzz.test")], is_http_request=True)
            rec = writer.create_warc_record(url, "request", payload=io.BytesIO(payload), http_headers=http)
        elif kind == "warcinfo":
            rec = writer.create_warcinfo_record("fuzz.warc.gz", {"software": payload.hex()[:20]})
        else:
            rec = writer.create_warc_record(
                url, kind, payload=io.BytesIO(payload), warc_content_type="application/octet-stream"
            )
        writer.write_record(rec)
    return buf.getvalue()


def test_fuzz_generated_records_are_all_accounted_for():
    totals = Counter()

    @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(_record, min_size=6, max_size=16), st.booleans(), st.integers(0, 3), st.randoms())
    def one(records, gz, damage, rnd):
        data = _write(records, gz)
        if damage == 1:  # truncate
            data = data[: rnd.randrange(1, len(data))]
        elif damage == 2:  # flip bytes
            buf = bytearray(data)
            for _ in range(3):
                buf[rnd.randrange(len(buf))] ^= 0xFF
            data = bytes(buf)
        stats, progress = StepStats(), ArchiveProgress()
        pages = list(iter_page_records(io.BytesIO(data), "fuzz.warc.gz", stats, progress))  # never raises
        assert len(pages) == stats.kept
        # every record warcio yielded is a page or one counted reason; an iteration error is one more
        assert stats.kept + stats.total_dropped == progress.records + (1 if progress.error else 0)
        if damage in (0, 3):  # undamaged: every written record was read
            assert progress.records == len(records) and progress.error is None
        totals["records"] += len(records)
        totals["read"] += progress.records
        totals["pages"] += stats.kept
        totals.update(stats.dropped)

    one()
    assert totals["records"] >= 1000 and totals["pages"] > 0
    assert totals["read"] >= 500 and totals["not_html"] > 0 and totals["wat_malformed_json"] > 0


def test_shard_source_maps_keys_to_files_without_listing(tmp_path):
    (tmp_path / "seg-1" / "warc").mkdir(parents=True)
    (tmp_path / "seg-1" / "warc" / "a~b.warc.gz").write_bytes(_records(1, gz=True))
    source = ShardSource(shards_root=str(tmp_path), page_archives=[str(tmp_path / "*" / "warc" / "*.warc.gz")])
    keys = source.archive_keys()
    assert list(keys) == ["seg-1~warc~a%7Eb.warc.gz"]
    assert source.archive_path("seg-1~warc~a%7Eb.warc.gz") == str(tmp_path / "seg-1" / "warc" / "a~b.warc.gz")
    with pytest.raises(FileNotFoundError, match="no file"):
        source.archive_path("seg-2~warc~x.warc.gz")
    with pytest.raises(ValueError):
        source.archive_path("..~x.warc.gz")
    random.seed(0)
