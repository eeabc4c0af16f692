"""Bad C4 input: every line is a document or a quarantined row with a reason; broken sources block.

Each test here failed on the code before issue 15 (a crash at the parquet writer, a
RecursionError, ``truncated_source`` for a file that is not gzip, a truncated shard that
passed its check, a check failing with only an expectation name).
"""

from __future__ import annotations

import gzip
import io
import json

import dagster as dg
import polars as pl
import pytest

from mmc4_assets.defs.partitions import shards
from mmc4_assets.defs.quality import DataQuality
from mmc4_assets.defs.raw_c4 import (
    QUARANTINE_SCHEMA,
    RAW_C4_SCHEMA,
    RawC4Config,
    raw_c4,
    raw_c4_documents_well_formed,
)
from mmc4_assets.defs.resources import sample_resources
from mmc4_assets.pages.archives import PageRecord
from mmc4_assets.pages.raw_docs import document_rows, iter_c4_lines
from mmc4_assets.quality.rules import raw_c4_rules
from mmc4_assets.sample.server import sample_shard_path
from mmc4_assets.stats import StepStats
from mmc4_assets.storage import ShardStore
from mmc4_assets.text.url_filter import UrlFilter

PAGE = "https://site.test/post"
PAGES = {PAGE: PageRecord(PAGE, ("https://cdn.test/a.jpg",), "warc")}
SHARD = "c4-sample.00000-of-00001"


def _doc(text: str = "One. Two.", url: str = PAGE) -> str:
    return json.dumps({"text": text, "timestamp": "t", "url": url})


def _run_shard(tmp_path, data: bytes, max_line_bytes: int | None = None):
    """The real parser and the real parquet writers of raw_c4, on one shard's bytes."""
    store = ShardStore(tmp_path / "store")
    docs, imgs = StepStats(), StepStats()
    kw = {"max_line_bytes": max_line_bytes} if max_line_bytes else {}
    with (
        store.table_writer("raw_c4_quarantine", "s", QUARANTINE_SCHEMA) as q,
        store.table_writer("raw_c4", "s", RAW_C4_SCHEMA) as out,
    ):
        for row in document_rows(iter_c4_lines(io.BytesIO(data), **kw), PAGES, "s", UrlFilter(), docs, imgs, q.append):
            out.append(row)
    return store.read_table("raw_c4", "s"), store.read_table("raw_c4_quarantine", "s"), docs


def test_lone_surrogate_is_quarantined_and_the_shard_still_writes(tmp_path):
    # valid JSON, invalid Unicode: no UTF-8 writer can store "\ud800"
    lines = [
        _doc(),
        '{"text": "\\ud800 Broken. Text.", "timestamp": "t", "url": "https://site.test/post"}',
        '{"text": "x", "timestamp": "t", "url": "https://site.test/\\udfff"}',
        _doc("Three. Four."),
    ]
    docs, quarantine, stats = _run_shard(tmp_path, gzip.compress("\n".join(lines).encode()))
    assert docs["line_no"].to_list() == [0, 3]
    assert quarantine.select("line_no", "reason").rows() == [(1, "invalid_unicode"), (2, "invalid_unicode")]
    assert quarantine["raw"][0].startswith('{"text": "\\ud800')  # the evidence, as escaped in the source
    assert quarantine["url"].to_list() == [None, None]
    assert stats.seen == len(lines)


def test_deeply_nested_json_is_quarantined_not_a_recursion_error(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    obj = '{"text": ' + '{"a": ' * 100_000 + "1" + "}" * 100_000 + "}"
    docs, quarantine, _ = _run_shard(tmp_path, gzip.compress(f"{deep}\n{obj}\n{_doc()}".encode()))
    assert quarantine.select("line_no", "reason").rows() == [(0, "too_deep"), (1, "too_deep")]
    assert docs["line_no"].to_list() == [2]


def test_oversized_line_is_skipped_in_bounded_reads_and_the_next_line_is_kept(tmp_path):
    big = _doc("Word. " * 5000)
    docs, quarantine, _ = _run_shard(tmp_path, gzip.compress(f"{big}\n{_doc()}".encode()), max_line_bytes=4096)
    assert quarantine.select("line_no", "reason").rows() == [(0, "oversized_line")]
    assert docs["line_no"].to_list() == [1]


def test_a_file_that_is_not_gzip_has_its_own_reason(tmp_path):
    docs, quarantine, _ = _run_shard(tmp_path, (_doc() + "\n").encode())  # plain jsonl
    assert quarantine["reason"].to_list() == ["not_gzip"] and docs.height == 0
    assert "not a gzip file" in quarantine["raw"][0]


def test_truncated_source_names_the_file_and_the_byte_offset(tmp_path):
    data = gzip.compress("".join(_doc(f"Doc {i}. More.") + "\n" for i in range(300)).encode())
    path = tmp_path / "shard.json.gz"
    path.write_bytes(data[: len(data) * 6 // 10])
    with open(path, "rb") as fh:
        parsed = list(iter_c4_lines(fh))
    assert parsed[-1].error == "truncated_source" and all(p.error is None for p in parsed[:-1])
    detail = parsed[-1].raw.decode()
    assert str(path) in detail and f"compressed byte {len(data) * 6 // 10}" in detail
    assert f"after {len(parsed) - 1} lines" in detail


def test_corrupt_deflate_data_is_corrupt_source_and_earlier_lines_stay():
    data = bytearray(gzip.compress("".join(_doc(f"Doc {i}.") + "\n" for i in range(2000)).encode(), 1))
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    parsed = list(iter_c4_lines(io.BytesIO(bytes(data))))
    assert parsed[-1].error in ("corrupt_source", "truncated_source")
    assert "compressed byte" in parsed[-1].raw.decode()


def _frames(reasons: list[str], raw: list[str | None] | None = None):
    docs = pl.DataFrame(schema=RAW_C4_SCHEMA)
    quarantine = pl.DataFrame(
        {
            "line_no": list(range(len(reasons))),
            "url": [None] * len(reasons),
            "reason": reasons,
            "raw": raw or [None] * len(reasons),
        },
        schema=QUARANTINE_SCHEMA,
    )
    return docs, quarantine


def test_zero_documents_fail_with_words_and_counts():
    docs, quarantine = _frames(["no_page_record"] * 34 + ["missing_field"] * 6)
    out = raw_c4_rules(docs, quarantine, 40)
    assert not out.passed
    assert out.describe() == (
        "0 documents: 40 of 40 lines quarantined (no_page_record 34, missing_field 6). Failing: no document to pass on"
    )


def test_truncated_source_blocks_unless_allowed_and_the_metadata_says_so():
    detail = "shard.json.gz: gzip stream ends early at compressed byte 6000, after 0 lines"
    docs, quarantine = _frames(["truncated_source"], [detail])
    blocked = raw_c4_rules(docs, quarantine, 1)
    assert blocked.failures["source_broken"] == 1
    assert "compressed byte 6000" in blocked.describe()
    allowed = raw_c4_rules(docs, quarantine, 1, allow_truncated_source=True)
    assert allowed.failures["source_broken"] == 0
    assert allowed.metadata()["truncated_source_allowed"] is True
    assert "compressed byte 6000" in allowed.metadata()["source_error"]


def _materialize(tmp_path, data: bytes, quality: DataQuality | None = None, config: RawC4Config | None = None):
    src = tmp_path / "c4"
    src.mkdir(parents=True, exist_ok=True)
    (src / f"{SHARD}.json.gz").write_bytes(data)
    resources = sample_resources(str(tmp_path / "store"), shards_root=str(src))
    if quality is not None:
        resources["quality"] = quality
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(shards.name, [SHARD])
    result = dg.materialize(
        [raw_c4, raw_c4_documents_well_formed],
        partition_key=SHARD,
        instance=instance,
        resources=resources,
        raise_on_error=False,
        run_config={"ops": {"raw_c4": {"config": config.model_dump()}}} if config else None,
    )
    (check,) = result.get_asset_check_evaluations()
    return check


@pytest.fixture(scope="module")
def sample_bytes() -> bytes:
    return sample_shard_path().read_bytes()


def test_truncated_sample_shard_fails_its_blocking_check_with_the_offset(tmp_path, sample_bytes):
    cut = sample_bytes[: len(sample_bytes) * 6 // 10]
    check = _materialize(tmp_path, cut, DataQuality(gx_enabled=False))
    assert not check.passed
    assert f"compressed byte {len(cut)}" in check.description and "cut short" in check.description
    assert check.metadata["truncated_source_allowed"].value is False

    allowed = _materialize(tmp_path, cut, DataQuality(gx_enabled=False, allow_truncated_source=True))
    assert allowed.passed, allowed.description
    assert allowed.metadata["truncated_source_allowed"].value is True
    assert f"compressed byte {len(cut)}" in allowed.metadata["source_error"].value


def test_empty_and_all_blocked_shards_fail_in_words(tmp_path, sample_bytes):
    empty = _materialize(tmp_path / "empty", gzip.compress(b""))
    assert not empty.passed
    assert empty.description.startswith("0 documents: 0 of 0 lines quarantined")
    assert "no document to pass on" in empty.description
    assert "table has 0 rows, expected at least 1" in empty.description

    blocked = _materialize(
        tmp_path / "blocked", sample_bytes, DataQuality(gx_enabled=False), RawC4Config(blocked_keywords=["http"])
    )
    assert not blocked.passed
    assert blocked.description.startswith("0 documents: ")
    assert (
        "no_candidate_images" in blocked.description
        and "image URLs pass the URL filter (keyword" in blocked.description
    )


def test_sample_shard_copy_in_a_temp_dir_still_passes(tmp_path, sample_bytes):
    """The new rules do not fail a good shard."""
    check = _materialize(tmp_path, sample_bytes, DataQuality(gx_enabled=False))
    assert check.passed, check.description
    assert check.description.endswith("all rules and expectations hold")


def test_other_stages_and_expectations_fail_in_words():
    from mmc4_assets.quality.messages import expectation_message
    from mmc4_assets.quality.rules import fetched_images_rules

    fetched = pl.DataFrame(
        {
            "doc_id": ["s:0"] * 12,
            "image_index": list(range(12)),
            "raw_url": [f"u{i}" for i in range(12)],
            "status": ["http_404"] * 10 + ["timeout"] * 2,
            "image_name": [None] * 12,
            "phash": [None] * 12,
            "orig_width": [None] * 12,
            "orig_height": [None] * 12,
            "width": [None] * 12,
            "height": [None] * 12,
        },
        schema_overrides={c: pl.Int32 for c in ("orig_width", "orig_height", "width", "height")}
        | {"image_name": pl.String, "phash": pl.String},
    )
    raw = pl.DataFrame({"image_urls": [[f"u{i}" for i in range(12)]]})
    assert fetched_images_rules(fetched, raw, 150, 2.0, 800).describe() == (
        "0 of 12 candidate images fetched ok (http_404 10, timeout 2). Failing: no candidate image was fetched ok"
    )
    assert (
        expectation_message("expect_column_values_to_be_between", "n_candidates", {"min_value": 1}, 3, None)
        == "3 row(s) with n_candidates not at least 1"
    )
    assert (
        expectation_message("expect_table_row_count_to_equal", None, {"value": 5}, None, 4)
        == "table has 4 rows, expected 5"
    )
