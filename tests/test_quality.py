"""The expectation suites pass on good frames and name the broken rule on bad ones."""

import re
from pathlib import Path

import polars as pl
import pytest

from mmc4_assets.defs.automation import shards_to_refresh
from mmc4_assets.quality import suites as S
from mmc4_assets.quality.gx import GXRunner

T = S.Thresholds()


@pytest.fixture(scope="module")
def gx_runner(tmp_path_factory):
    return GXRunner(tmp_path_factory.mktemp("docs"))


def _fetched(statuses, sizes):
    rows = []
    for i, (status, (w, h)) in enumerate(zip(statuses, sizes)):
        ok = status == "ok"
        rows.append(
            {
                "doc_id": "d",
                "image_index": i,
                "raw_url": f"u{i}",
                "status": status,
                "image_name": f"h{i}.jpg" if ok else None,
                "orig_width": w,
                "orig_height": h,
                "width": min(w, 800),
                "height": h,
            }
        )
    return pl.DataFrame(rows)


def _failed(outcome):
    return {(r.expectation, r.column) for r in outcome.failed}


def test_fetched_images_suite_success_floor_and_sizes(gx_runner):
    good = S.fetched_images_frame(_fetched(["ok", "ok", "http_404"], [(300, 300), (400, 300), (0, 0)]))
    out = gx_runner.validate("fetched_images", "p1", good, S.fetched_images_expectations(T))
    assert out.success and "/validations/fetched_images/p1/" in out.docs_url

    bad = S.fetched_images_frame(
        _fetched(["ok", "http_404", "timeout", "http_404"], [(100, 300), (1, 1), (1, 1), (1, 1)])
    )
    out = gx_runner.validate("fetched_images", "p2", bad, S.fetched_images_expectations(T))
    assert not out.success
    assert {
        ("expect_column_values_to_be_between", "success_rate"),
        ("expect_column_values_to_be_between", "orig_min_side"),
        ("expect_column_values_to_be_between", "orig_aspect"),
    } <= _failed(out)


def test_assignments_suite_catches_shared_sentence_and_low_sim(gx_runner):
    def frame(images, matrix):
        return S.assignments_frame(
            pl.DataFrame([{"doc_id": "d", "text_list": ["a", "b"], "image_info": images, "similarity_matrix": matrix}])
        )

    # MMC4's rule may match a pair below min_similarity (0.1) when the image's best sentence clears it
    ok = frame(
        [
            {"matched_text_index": 0, "matched_sim": 0.3, "surplus": False},
            {"matched_text_index": 1, "matched_sim": 0.1, "surplus": False},
        ],
        [[0.3, 0.05], [0.2, 0.1]],
    )
    assert gx_runner.validate("assignments", "ok", ok, S.assignments_expectations(T)).success
    bad = frame(
        [
            {"matched_text_index": 1, "matched_sim": 0.1, "surplus": False},
            {"matched_text_index": 1, "matched_sim": 0.3, "surplus": False},
        ],
        [[0.12, 0.1], [0.2, 0.3]],
    )
    out = gx_runner.validate("assignments", "bad", bad, S.assignments_expectations(T))
    assert ("expect_column_values_to_be_unique", "sentence_key") in _failed(out)
    assert ("expect_column_values_to_be_between", "best_sim") in _failed(out)


def test_deduped_docs_suite_threshold_boundary(gx_runner):
    def frame(h2):
        return S.deduped_docs_frame(
            pl.DataFrame(
                [
                    {"doc_id": "d", "image_info": [{"phash": "0000000000000000"}, {"phash": h2}]},
                    {"doc_id": "e", "image_info": [{"phash": "ffffffffffffffff"}]},
                ]
            )
        )

    assert gx_runner.validate("deduped", "six", frame("000000000000003f"), S.deduped_docs_expectations(T)).success
    out = gx_runner.validate("deduped", "five", frame("000000000000001f"), S.deduped_docs_expectations(T))
    assert _failed(out) == {("expect_column_values_to_be_between", "min_phash_distance")}


def test_published_suite_counts_and_parses(gx_runner):
    lines = [b'{"url": 1}', b"not json"]
    out = gx_runner.validate(
        "published", "p", S.published_frame(lines, checksum_ok=False), S.published_expectations(T, expected_docs=3)
    )
    assert {e for e, _ in _failed(out)} == {"expect_table_row_count_to_equal", "expect_column_values_to_be_in_set"}
    assert {c for _, c in _failed(out)} == {None, "parses", "schema_ok", "checksum_matches_manifest"}


def test_refresh_picks_missing_then_stale_bounded():
    from mmc4_assets.defs.automation import SHARD_RUN_INPUTS

    # a finished run whose contribution ran before later stages (image_hash_counts right after
    # fetched_images) is fresh; a re-joined page table or a re-made raw_c4 makes the shard stale
    run = {
        "shard_pages": 1,
        "raw_c4": 2,
        "fetched_images": 3,
        "image_hash_counts": 4,
        "clip_scores": 5,
        "assignments": 6,
        "deduped_docs": 7,
        "doc_fingerprints": 8,
    }
    shards = {
        "fresh": run,
        "missing": {k: v for k, v in run.items() if k != "doc_fingerprints"},
        "rejoined": {**run, "shard_pages": 30},
        "remade": {**run, "raw_c4": 40},
        "no_pages": {k: v for k, v in run.items() if k != "shard_pages"},
    }
    assert set(SHARD_RUN_INPUTS) < set(run)
    latest: dict[str, dict[str, int]] = {}
    for key, ids in shards.items():
        for asset, i in ids.items():
            latest.setdefault(asset, {})[key] = i
    assert shards_to_refresh(list(shards), latest, limit=10) == [
        ("missing", "missing", 7),
        ("rejoined", "stale", 30),
        ("remade", "stale", 40),
    ]
    assert len(shards_to_refresh(list(shards), latest, limit=1)) == 1


def test_funnel_rows_follow_the_stages_with_reasons():
    from mmc4_assets.quality.funnel import funnel_rows

    rows = funnel_rows(
        {
            "raw_c4": {
                "num_lines": 40,
                "num_docs": 34,
                "num_candidate_images": 80,
                "docs_dropped_no_page_record": 1,
                "image_urls_dropped_keyword": 6,
                "docs_drop_reasons": "md",
            },
            "fetched_images": {"num_candidates": 80, "num_ok": 72, "images_dropped_http_404": 3},
            "published_shards": {"num_docs": 21, "num_images": 30},
        }
    )
    assert [r["stage"] for r in rows] == ["source lines", "raw_c4", "fetched_images", "published_shards"]
    assert rows[1] == {
        "stage": "raw_c4",
        "documents": 34,
        "images": 80,
        "dropped": "no_page_record: 1 docs, keyword: 6 images",
    }
    assert rows[2]["images"] == 72 and rows[2]["dropped"] == "http_404: 3 images"


def test_success_rate_drift():
    from mmc4_assets.quality.funnel import success_rate_drift

    assert success_rate_drift(0.9, [], 0.15) == (True, None)
    assert success_rate_drift(0.7, [0.9, 0.9], 0.15)[0] is False
    assert success_rate_drift(0.76, [0.9, 0.9], 0.15)[0] is True


def test_data_docs_accumulate_link_each_validation_and_render_offline(tmp_path):
    """One file context under the root: every validation kept, its own page, no CDN, the asset named."""
    runner = GXRunner(tmp_path)
    good = S.fetched_images_frame(_fetched(["ok"], [(300, 300)]))
    keys = ["c4-train.00000-of-01024", "c4-train.00001-of-01024"]
    pages = [runner.validate("fetched_images", k, good, S.fetched_images_expectations(T)).docs_url for k in keys]
    site = tmp_path / "gx" / "uncommitted" / "data_docs" / "local_site"
    assert len(set(pages)) == 2 and all(p.startswith(str(site / "validations" / "fetched_images")) for p in pages)
    # a second runner (another process) sees the same context and adds to it
    GXRunner(tmp_path).validate("fetched_images", keys[0], good, S.fetched_images_expectations(T))
    index = (site / "index.html").read_text()
    assert all(index.count(k) >= 1 for k in keys)
    assert len(list((site / "validations" / "fetched_images").rglob("*.html"))) == 3
    for page in [site / "index.html", *map(Path, pages)]:
        html = page.read_text()
        loaded = re.findall(r'<(?:script|img)[^>]*\ssrc="([^"]*)"|<link[^>]*\shref="([^"]*)"', html)
        loaded = [a or b for a, b in loaded]
        assert loaded and not [u for u in loaded if "://" in u], page
        for ref in loaded:
            assert (page.parent / ref).resolve().exists(), (page, ref)
    page = Path(pages[0]).read_text()
    assert "Data asset: None" not in re.sub(r"<[^>]+>", " ", page).replace("  ", " ")
    assert f"fetched_images [{keys[0]}]" in page
