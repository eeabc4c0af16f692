"""The bundled sample through all six assets and their blocking checks, then read back."""

import json
import zipfile

import dagster as dg
import numpy as np
import polars as pl
import pytest

from mmc4_assets.definitions import defs
from mmc4_assets.defs.partitions import archives, shards
from mmc4_assets.defs.resources import sample_resources
from mmc4_assets.publish.mmc4_format import DOC_FIELDS, IMAGE_FIELDS, schema_errors
from mmc4_assets.sample.server import load_expected
from mmc4_assets.storage import ShardStore

SHARD = "c4-sample.00000-of-00001"
ASSETS = ["raw_c4", "fetched_images", "clip_scores", "assignments", "deduped_docs", "published_shards"]
RAW_REASON = {"blank": "blank_line"}  # the sample's label -> the pipeline's
PAGE_STAGE = dg.AssetSelection.assets("page_records")


def _materialize(storage_root, run_config=None):
    d = defs()
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(shards.name, [SHARD])
    resources = sample_resources(str(storage_root))
    # each sample archive read once into its page records (archive partitions), as a deployment does
    archive_keys = list(resources["source"].archive_keys())
    instance.add_dynamic_partitions(archives.name, archive_keys)
    for key in archive_keys:
        assert dg.materialize(
            [*d.assets, *d.asset_checks],
            partition_key=key,
            instance=instance,
            resources=resources,
            selection=PAGE_STAGE,
        ).success
    # then the join and every shard stage, in one run for the shard
    result = dg.materialize(
        [*d.assets, *d.asset_checks],
        partition_key=SHARD,
        instance=instance,
        resources=resources,
        run_config=run_config or {},
        raise_on_error=False,
        selection=dg.AssetSelection.all() - PAGE_STAGE,
    )
    return result


def _published(root):
    with zipfile.ZipFile(root / "published" / "docs_shard_0_v2.jsonl.zip") as zf:
        assert zf.namelist() == ["docs_shard_0_v2.jsonl"]
        return [json.loads(line) for line in zf.read("docs_shard_0_v2.jsonl").splitlines()]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("storage")
    return root, _materialize(root)


def test_all_assets_and_checks_succeed(default_run):
    root, result = default_run
    assert result.success
    materialized = {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()}
    assert set(ASSETS) <= materialized  # the corpus-wide assets run in the same job
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert set(checks) == {
        "shard_pages_one_capture_per_url",
        "raw_c4_documents_well_formed",
        "fetched_images_match_raw_c4",
        "fetched_images_success_rate_stable",
        "clip_scores_are_cosines",
        "assignments_within_text_list",
        "deduped_docs_have_unique_images",
        "published_shards_match_mmc4_schema",
    }
    assert all(c.passed for c in checks.values())
    # every blocking check ran its great-expectations suite too
    blocking = [c for c in checks.values() if c.blocking]
    gx_checked = [c for c in blocking if "gx_success" in c.metadata]
    assert len(gx_checked) == 6 and all(c.metadata["gx_success"].value for c in gx_checked)
    assert all(c.metadata["gx_expectations"].value >= 3 for c in gx_checked)
    # the published full set carries MMC4's assignment: zero problems of each kind
    published = checks["published_shards_match_mmc4_schema"].metadata
    assert published["assignment_rule"].value == "mmc4"
    assert [k for k in published if k.startswith("violations_assignment_")] and all(
        published[k].value == 0 for k in published if k.startswith("violations_assignment_")
    )
    md = {
        m.asset_key.to_user_string(): m.step_materialization_data.materialization.metadata
        for m in result.get_asset_materialization_events()
    }
    # raw_c4 read the join's page table, not the archives
    assert md["raw_c4"]["page_lookup"].value == "shard_pages" and md["raw_c4"]["page_archives"].value == 0


def test_raw_c4_outcomes_match_the_sample_ground_truth(default_run):
    root, _ = default_run
    expected = load_expected()
    store = ShardStore(root)
    docs = store.read_table("raw_c4", SHARD)
    quarantine = store.read_table("raw_c4_quarantine", SHARD)
    got = {r["line_no"]: "ok" for r in docs.iter_rows(named=True)}
    got |= {r["line_no"]: r["reason"] for r in quarantine.iter_rows(named=True)}
    want = {line["line"]: RAW_REASON.get(line["raw_c4"], line["raw_c4"]) for line in expected["lines"]}
    assert got == want
    for line in expected["lines"]:
        if line["raw_c4"] == "ok":
            row = docs.filter(pl.col("line_no") == line["line"]).row(0, named=True)
            assert row["image_urls"] == [c["url"] for c in line["candidates"]]
            assert row["text_list"]


def test_fetch_outcomes_match_the_sample_ground_truth(default_run):
    root, _ = default_run
    expected = load_expected()
    fetched = ShardStore(root).read_table("fetched_images", SHARD)
    by_key = {(int(r["doc_id"].rsplit(":", 1)[1]), r["image_index"]): r for r in fetched.iter_rows(named=True)}
    for line in expected["lines"]:
        for i, cand in enumerate(line.get("candidates", [])):
            row = by_key[(line["line"], i)]
            assert row["raw_url"] == cand["url"]
            assert row["status"] == cand["fetch"], cand["url"]
            if cand["fetch"] == "ok":
                assert [row["width"], row["height"]] == cand["size"]
                assert (root / "images" / row["image_name"][:2] / row["image_name"]).exists()
    assert fetched.height == expected["totals"]["candidates"]


def test_published_shard_is_mmc4_and_follows_the_similarity_rule(default_run):
    root, _ = default_run
    expected = load_expected()
    docs = _published(root)
    scores = ShardStore(root).read_table("clip_scores", SHARD)
    # recompute, independently of the assignment code, which docs keep an image >= 0.15
    survivors = []  # URLs with multiplicity: two sample documents share one URL
    for row in scores.iter_rows(named=True):
        m = np.asarray(row["similarity_matrix"])
        if (m.max(axis=1) >= 0.15).any():
            survivors.append(row["url"])
    publishable = {line["url"] for line in expected["lines"] if line.get("published")}
    assert {d["url"] for d in docs} <= publishable
    assert sorted(d["url"] for d in docs) == sorted(u for u in survivors if u in publishable)
    from mmc4_assets.quality.rules import published_assignment_rules

    assert published_assignment_rules([json.dumps(d).encode() for d in docs], 0.15).passed
    for doc in docs:
        assert list(doc) == list(DOC_FIELDS) and schema_errors(doc) == []
        for im in doc["image_info"]:
            assert list(im) == list(IMAGE_FIELDS)
            row = doc["similarity_matrix"][doc["image_info"].index(im)]
            # MMC4: the image's best sentence clears 0.15; the assignment may pair it lower
            assert max(row) >= 0.15 and im["face_detections"] is None
            assert im["image_name"].endswith(".jpg")
            assert im["matched_sim"] == pytest.approx(row[im["matched_text_index"]], abs=1e-5)


def test_manifest_and_metadata_tell_the_story(default_run):
    root, result = default_run
    manifest = json.loads((root / "published" / "docs_shard_0_v2.manifest.json").read_text())
    docs = _published(root)
    assert manifest["num_docs"] == len(docs)
    assert manifest["num_images"] == sum(len(d["image_info"]) for d in docs)
    assert manifest["random_weights"] is True and "RANDOM" in manifest["model"]
    md = {
        m.asset_key.to_user_string(): m.step_materialization_data.materialization.metadata
        for m in result.get_asset_materialization_events()
    }
    assert md["clip_scores"]["random_weights"].value is True
    assert md["clip_scores"]["model_name"].value == "mmc4-tiny-random"
    assert md["fetched_images"]["images_dropped_http_404"].value == load_expected()["totals"]["fetch"]["http_404"]
    assert md["raw_c4"]["docs_dropped_malformed_json"].value == 1
    for asset in ASSETS:
        assert "config_hash" in md[asset]
    funnel = {r.data["stage"]: r.data for r in md["published_shards"]["filter_funnel"].value.records}
    assert list(funnel)[:2] == ["source lines", "raw_c4"] and "published_shards" in funnel
    assert funnel["source lines"]["documents"] == load_expected()["totals"]["lines"]
    assert "http_404: 3 images" in funnel["fetched_images"]["dropped"]
    assert funnel["published_shards"]["documents"] == manifest["num_docs"]
    assert (root / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html").exists()


def test_without_similarity_threshold_everything_the_sample_promises_is_published(tmp_path):
    # min_similarity=-1 isolates fetch and dedup from the random model's similarities
    result = _materialize(tmp_path, {"ops": {"assignments": {"config": {"min_similarity": -1.0}}}})
    assert result.success
    expected = load_expected()
    docs = _published(tmp_path)
    want = {line["url"]: line["published_images"] for line in expected["lines"] if line.get("published")}
    # the two documents sharing one URL are both published, and both flagged
    assert len(docs) == expected["totals"]["published_documents"]
    assert sum(len(d["image_info"]) for d in docs) == expected["totals"]["published_images"]
    for doc in docs:
        assert [im["raw_url"] for im in doc["image_info"]] == want[doc["url"]]
    dup_urls = {u for u in want if sum(d["url"] == u for d in docs) > 1}
    assert dup_urls and all(d["could_have_url_duplicate"] == (d["url"] in dup_urls) for d in docs)


def test_blocking_check_stops_downstream_on_broken_output(tmp_path, monkeypatch):
    # corrupt the assignment rule: a blocking check must stop deduped_docs/published_shards
    import dataclasses

    import mmc4_assets.assign.shard as mod  # the step the asset runs

    original = mod.assign_frame

    def broken(batch, min_sim, rule):
        out = original(batch, min_sim, rule)
        # every image points past the end of its text_list
        frame = out.frame.with_columns(
            pl.col("image_info").list.eval(pl.element().struct.with_fields(pl.field("matched_text_index") + 1000))
        )
        return dataclasses.replace(out, frame=frame)

    monkeypatch.setattr(mod, "assign_frame", broken)
    result = _materialize(tmp_path)
    assert not result.success
    materialized = {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()}
    assert "assignments" in materialized
    assert "deduped_docs" not in materialized and "published_shards" not in materialized
    failed = [c for c in result.get_asset_check_evaluations() if not c.passed]
    assert [c.check_name for c in failed] == ["assignments_within_text_list"]
    assert not (tmp_path / "published").exists()


def test_definitions_load():
    dg.Definitions.validate_loadable(defs())


def test_each_check_rule_fails_on_a_corrupted_copy_of_the_sample_output(default_run):
    """Every stage's rules and suite pass on the sample output and name what is wrong on a broken copy."""
    from mmc4_assets.publish.shards import iter_shard_lines
    from mmc4_assets.quality import rules, suites
    from mmc4_assets.quality.gx import GXRunner

    root, _ = default_run
    store, t, gx = ShardStore(root), suites.Thresholds(), GXRunner()
    docs, quarantine = store.read_table("raw_c4", SHARD), store.read_table("raw_c4_quarantine", SHARD)
    fetched, scores = store.read_table("fetched_images", SHARD), store.read_table("clip_scores", SHARD)
    feats, assigned = store.read_table("clip_image_features", SHARD), store.read_table("assignments", SHARD)
    deduped = store.read_table("deduped_docs", SHARD)

    def both(outcome, suite_name, frame, expectations):
        return outcome, gx.validate(suite_name, "t", frame, expectations)

    good = [
        both(
            rules.raw_c4_rules(docs, quarantine, 40),
            "raw",
            suites.raw_c4_frame(docs, 0.1),
            suites.raw_c4_expectations(t),
        ),
        both(
            rules.fetched_images_rules(fetched, docs, 150, 2.0, 800),
            "fetched",
            suites.fetched_images_frame(fetched),
            suites.fetched_images_expectations(t),
        ),
        both(
            rules.clip_scores_rules(scores, feats),
            "clip",
            suites.clip_scores_frame(scores, feats),
            suites.clip_scores_expectations(t),
        ),
        both(
            rules.assignments_rules(assigned, 0.15),
            "assign",
            suites.assignments_frame(assigned),
            suites.assignments_expectations(t),
        ),
        both(
            rules.deduped_docs_rules(deduped, 5),
            "dedup",
            suites.deduped_docs_frame(deduped),
            suites.deduped_docs_expectations(t),
        ),
    ]
    assert all(o.passed and s.success for o, s in good)

    dup_docs = pl.concat([docs, docs.head(1)])
    o, s = both(
        rules.raw_c4_rules(dup_docs, quarantine, 41),
        "raw_bad",
        suites.raw_c4_frame(dup_docs, 0.1),
        suites.raw_c4_expectations(t),
    )
    assert o.failures["duplicate_doc_id"] == 2 and not s.success

    small = fetched.with_columns(
        pl.when(pl.col("status") == "ok").then(100).otherwise(pl.col("orig_width")).alias("orig_width")
    ).head(fetched.height - 1)
    o, s = both(
        rules.fetched_images_rules(small, docs, 150, 2.0, 800),
        "fetched_bad",
        suites.fetched_images_frame(small),
        suites.fetched_images_expectations(t),
    )
    assert o.failures["rows_vs_raw_c4_candidates"] == 1 and o.failures["ok_but_too_small"] > 0 and not s.success

    wide = scores.with_columns(pl.col("similarity_matrix").list.eval(pl.element().list.concat([pl.lit(0.5)])))
    o, s = both(
        rules.clip_scores_rules(wide, feats),
        "clip_bad",
        suites.clip_scores_frame(wide, feats),
        suites.clip_scores_expectations(t),
    )
    assert o.failures["matrix_shape_not_images_x_sentences"] == wide.height and not s.success

    low = assigned.with_columns(
        pl.Series(
            "similarity_matrix",
            [[[0.01] * len(r) for r in m] for m in assigned["similarity_matrix"].to_list()],
            dtype=assigned.schema["similarity_matrix"],
        )
    )
    o, s = both(
        rules.assignments_rules(low, 0.15),
        "assign_bad",
        suites.assignments_frame(low),
        suites.assignments_expectations(t),
    )
    assert o.failures["best_sim_below_min"] == low.height and not s.success
    assert o.failures["matched_sim_not_matrix_entry"] == low.height

    twice = deduped.with_columns(pl.col("image_info").list.concat(pl.col("image_info")))
    o, s = both(
        rules.deduped_docs_rules(twice, 5),
        "dedup_bad",
        suites.deduped_docs_frame(twice),
        suites.deduped_docs_expectations(t),
    )
    assert o.failures["in_document_phash_duplicate"] == twice.height and not s.success

    lines = list(iter_shard_lines(store, "docs_shard_0_v2.jsonl.zip"))
    broken = lines[:-1] + [lines[-1][: len(lines[-1]) // 2]]
    manifest = {"num_docs": len(lines), "sha256": "x"}
    o = rules.published_rules(broken, manifest, "y", len(lines))
    assert o.failures["unparsable_lines"] == 1 and o.failures["checksum_mismatch"] == 1
    assert not gx.validate(
        "pub_bad", "t", suites.published_frame(broken, False), suites.published_expectations(t, len(lines))
    ).success


def test_refresh_schedule_evaluates_against_an_ephemeral_instance():
    from mmc4_assets.defs.automation import _refresh_schedule

    schedule = _refresh_schedule("0 * * * *", 2)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(shards.name, ["s1", "s2", "s3"])
        with dg.build_schedule_context(instance=instance, repository_def=defs().get_repository_def()) as context:
            requests = schedule.evaluate_tick(context).run_requests
    assert [r.partition_key for r in requests] == ["s1", "s2"]
    assert all(r.tags["mmc4/refresh"] == "missing" for r in requests)
    assert len({r.run_key for r in requests}) == 2
