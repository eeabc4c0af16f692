"""MMC4's assignment over exactly the published images, and the publish check that enforces it.

Filter order: the asset order is fixed (assignments before deduped_docs and the corpus
rules), so a document that loses images afterwards is assigned again over the images it
keeps. The last test builds a 1,000-document shard near the 0.15 threshold and runs it
through the real domain steps (assign_frame -> dedup_document -> apply_corpus_rules ->
subset_versions -> make_document) and the publish check's rules.
"""

import json

import numpy as np
import polars as pl
import pytest

from mmc4_assets.assign.linear import THRESHOLDED_ARGMAX
from mmc4_assets.assign.resolve import reassign
from mmc4_assets.assign.shard import assign_frame
from mmc4_assets.clip.shard import CLIP_SCORES_SCHEMA
from mmc4_assets.dedup.phash import dedup_in_document
from mmc4_assets.dedup.shard import DEDUPED_SCHEMA, dedup_document
from mmc4_assets.publish.corpus_rules import ImageScore, ShardRules, apply_corpus_rules
from mmc4_assets.publish.mmc4_format import make_document
from mmc4_assets.publish.subsets import FF, FULL, CoreRules, subset_versions
from mmc4_assets.quality.rules import assignment_problems, published_assignment_rules
from mmc4_assets.stats import StepStats
from mmc4_reference import reference_assignment

# -- the rules on plain data ----------------------------------------------------------------

SIM = [[0.40, 0.01, 0.05], [0.30, 0.02, 0.20]]  # MMC4: image 0 -> 0, image 1 -> 2 (total 0.60)


def test_a_conforming_document_has_no_problem():
    assert assignment_problems(SIM, [0, 2], [0.40, 0.20], 0.15) == []
    # more images than sentences: one per sentence by the solver, the rest on their best one
    wide = [[0.5, 0.2], [0.4, 0.3], [0.6, 0.1]]
    assert assignment_problems(wide, [0, 1, 0], [0.5, 0.3, 0.6], 0.15) == []


@pytest.mark.parametrize(
    "idx, sims, problem",
    [
        ([0, 2], [0.40, 0.25], "matched_sim_not_matrix_entry"),
        ([0, 1], [0.40, 0.02], "total_not_optimal"),  # 0.42 < 0.60
        ([0, 0], [0.40, 0.30], "surplus_rule_broken"),  # shared although sentences suffice
    ],
)
def test_each_rule_catches_its_violation(idx, sims, problem):
    assert problem in assignment_problems(SIM, idx, sims, 0.15)


def test_surplus_must_sit_on_its_best_sentence_and_every_sentence_be_taken():
    wide = [[0.5, 0.2], [0.4, 0.3], [0.6, 0.1]]
    assert "surplus_rule_broken" in assignment_problems(wide, [1, 1, 0], [0.2, 0.3, 0.6], 0.15)
    assert "surplus_rule_broken" in assignment_problems(wide, [0, 0, 0], [0.5, 0.4, 0.6], 0.15)


def test_an_image_whose_best_sentence_is_below_the_threshold_is_flagged():
    assert assignment_problems([[0.1, 0.12]], [1], [0.12], 0.15) == ["best_sim_below_min"]


def test_the_named_variant_is_checked_by_its_own_promise():
    # thresholded_argmax shares a sentence and misses the optimum by design, but never matches below min_sim
    assert assignment_problems(SIM, [0, 0], [0.40, 0.30], 0.15, THRESHOLDED_ARGMAX) == []
    low = [[0.40, 0.01, 0.05], [0.30, 0.02, 0.10]]
    assert "matched_sim_below_min" in assignment_problems(low, [0, 2], [0.40, 0.10], 0.15, THRESHOLDED_ARGMAX)


def test_published_rules_count_documents_and_skip_malformed_lines():
    good = json.dumps(
        {
            "url": "u",
            "similarity_matrix": SIM,
            "image_info": [
                {"matched_text_index": 0, "matched_sim": 0.4},
                {"matched_text_index": 2, "matched_sim": 0.2},
            ],
        }
    )
    bad = json.dumps(
        {
            "url": "v",
            "similarity_matrix": SIM,
            "image_info": [
                {"matched_text_index": 0, "matched_sim": 0.4},
                {"matched_text_index": 0, "matched_sim": 0.3},
            ],
        }
    )
    out = published_assignment_rules([good.encode(), bad.encode(), b"not json"], 0.15)
    assert out.failures["assignment_surplus_rule_broken"] == 1
    assert out.failures["assignment_total_not_optimal"] == 1
    assert out.failures["assignment_matched_sim_not_matrix_entry"] == 0


# -- re-solving after images are dropped ------------------------------------------------------


def _assigned_row(sim, phashes, names=None):
    names = names or [f"im{i}" for i in range(len(sim))]
    kept, idx, sims, surplus = reference_assignment(sim, 0.15)
    assert all(kept)
    return {
        "doc_id": "s:1",
        "url": "https://s.test/1",
        "text_list": [f"S{j}." for j in range(len(sim[0]))],
        "image_info": [
            {
                "image_index": i,
                "image_name": names[i],
                "raw_url": f"https://i.test/{i}",
                "phash": h,
                "matched_text_index": idx[i],
                "matched_sim": sims[i],
                "surplus": surplus[i],
            }
            for i, h in enumerate(phashes)
        ],
        "similarity_matrix": sim,
        "num_candidates": len(sim),
        "assignment": "mmc4",
        "min_similarity": 0.15,
    }


def test_dedup_reassigns_a_document_that_lost_a_copy():
    # image 0 and image 2 are one picture. Over all three, image 1 takes sentence 0 (0.3 + 0.5 + 0.2);
    # without the copy, MMC4 puts image 1 on sentence 1 and image 0 on sentence 0
    sim = [[0.35, 0.10], [0.30, 0.25], [0.20, 0.50]]
    row = _assigned_row(sim, ["0" * 16, "f" * 16, "0" * 15 + "1"])
    out = dedup_document(row, {}, 5, StepStats())
    assert [im["image_index"] for im in out["image_info"]] == [0, 1]
    _, want_idx, want_sim, _ = reference_assignment([sim[0], sim[1]], 0.15)
    assert [im["matched_text_index"] for im in out["image_info"]] == want_idx == [0, 1]
    assert [im["matched_sim"] for im in out["image_info"]] == pytest.approx(want_sim)
    assert (out["assignment"], out["min_similarity"]) == ("mmc4", 0.15)
    untouched = dedup_document(_assigned_row(sim, ["0" * 16, "f" * 16, "3" * 16]), {}, 5, StepStats())
    assert untouched["image_info"] == _assigned_row(sim, ["0" * 16, "f" * 16, "3" * 16])["image_info"]


def test_corpus_rules_reassign_and_subsets_keep_the_full_sets_placement():
    sim = [[0.35, 0.10, 0.05], [0.30, 0.25, 0.0], [0.20, 0.50, 0.16], [0.18, 0.17, 0.16]]
    row = {
        **_assigned_row(sim, ["1" * 16, "2" * 16, "4" * 16, "8" * 16], ["a", "b", "c", "d"]),
        "could_have_url_duplicate": 0,
    }
    scores = {
        "a": ImageScore(0.0, False, 0.9, True),
        "b": ImageScore(0.0, False, 0.0, False),
        "c": ImageScore(0.9, True, 0.0, False),
        "d": ImageScore(0.0, False, 0.0, False),
    }
    doc = apply_corpus_rules(row, ShardRules("s", scores=scores, nsfw_on=True, face_on=True), StepStats(), StepStats())
    kept = [sim[0], sim[1], sim[3]]  # c is NSFW
    _, want, _, _ = reference_assignment(kept, 0.15)
    assert [im["matched_text_index"] for im in doc["image_info"]] == want
    versions = subset_versions(
        doc, [FF], "image", CoreRules(), {FULL: (StepStats(), StepStats()), FF: (StepStats(), StepStats())}
    )
    ff = versions[FF]  # a has a face: gone, the rest keep their sentence
    assert [im["image_name"] for im in ff["image_info"]] == ["b", "d"]
    assert [im["matched_text_index"] for im in ff["image_info"]] == want[1:]


def test_reassign_follows_the_documents_own_rule():
    sim = [[0.4, 0.01], [0.3, 0.02]]
    info = [{"image_name": "a"}, {"image_name": "b"}]
    assert [im["matched_text_index"] for im in reassign(info, sim)] == [0, 1]
    assert [im["matched_text_index"] for im in reassign(info, sim, THRESHOLDED_ARGMAX, 0.15)] == [0, 0]


# -- a 1,000-document shard near the threshold, end to end through the domain ---------------


def _near_threshold_shard(rng: np.random.Generator, docs: int = 1000) -> pl.DataFrame:
    rows = []
    for d in range(docs):
        n, m = int(rng.integers(1, 9)), int(rng.integers(1, 12))
        sim = rng.normal(0.15, 0.03, (n, m))
        if rng.random() < 0.3:  # ties on the threshold and a sentence everyone wants
            sim = np.round(sim, 2)
            sim[:, rng.integers(0, m)] += 0.05
        base = [int(x) for x in rng.integers(0, 2**63, n)]
        for i in range(1, n):  # in-document copies: within 5 bits of an earlier image
            if rng.random() < 0.2:
                base[i] = base[int(rng.integers(0, i))] ^ (1 << int(rng.integers(0, 64)))
        rows.append(
            {
                "doc_id": f"syn:{d}",
                "url": f"https://syn.test/{d}",
                "text_list": [f"Sentence {j}." for j in range(m)],
                "images": [
                    {
                        "image_index": i,
                        "image_name": f"{d}-{i}.jpg",
                        "raw_url": f"https://i.syn.test/{d}/{i}.jpg",
                        "phash": f"{base[i]:016x}",
                    }
                    for i in range(n)
                ],
                "similarity_matrix": sim.astype(np.float32).tolist(),
            }
        )
    return pl.DataFrame(rows, schema=CLIP_SCORES_SCHEMA)


def _publish(frame: pl.DataFrame, rule: str = "mmc4") -> list[bytes]:
    """The full set's jsonl lines, through the real domain steps in the assets' order."""
    assigned = assign_frame(frame, 0.15, rule).frame
    names = assigned["image_info"].explode().struct.field("image_name").to_list()
    rng = np.random.default_rng(1)
    scores = {name: ImageScore(p, p > 0.9, 0.0, False) for name, p in zip(names, rng.random(len(names)))}
    frequent = frozenset(assigned["image_info"].explode().struct.field("phash").sample(40, seed=2).to_list())
    rules = ShardRules("syn", frequent_phashes=frequent, scores=scores, nsfw_on=True)
    lines, docs, images = [], StepStats(), StepStats()
    for row in assigned.iter_rows(named=True):
        deduped = dedup_document(row, {}, 5, images)
        if deduped is None:
            continue
        deduped = pl.DataFrame([deduped], schema=DEDUPED_SCHEMA).row(0, named=True)  # as stored
        doc = apply_corpus_rules(deduped, rules, docs, images)
        if doc is None:
            continue
        lines.append(
            json.dumps(
                make_document(
                    doc["url"],
                    doc["text_list"],
                    doc["image_info"],
                    doc["similarity_matrix"],
                    doc["could_have_url_duplicate"],
                )
            ).encode()
        )
    assert images.dropped["phash_duplicate"] and images.dropped["frequent_image"] and images.dropped["nsfw"]
    return lines


def test_a_1000_document_shard_near_the_threshold_conforms():
    frame = _near_threshold_shard(np.random.default_rng(2026))
    lines = _publish(frame)
    assert len(lines) > 500
    out = published_assignment_rules(lines, 0.15)
    assert out.passed, out.failures
    # the check has teeth: the earlier rule, checked as MMC4's, fails on this very shard
    old = published_assignment_rules(_publish(frame, THRESHOLDED_ARGMAX), 0.15)
    assert old.failures["assignment_surplus_rule_broken"] > 0 and old.failures["assignment_total_not_optimal"] > 0


def test_dropping_images_without_reassigning_breaks_mmc4s_assignment():
    frame = _near_threshold_shard(np.random.default_rng(7), docs=400)
    assigned = assign_frame(frame, 0.15).frame
    broken = 0
    for row in assigned.iter_rows(named=True):
        keep = [i for i, d in enumerate(dedup_in_document([im["phash"] for im in row["image_info"]], 5)) if d is None]
        if len(keep) == len(row["image_info"]):
            continue
        frozen = [row["image_info"][i] for i in keep]  # placement kept from before the drop
        fixed = dedup_document(row, {}, 5, StepStats())["image_info"]
        sim = [row["similarity_matrix"][i] for i in keep]
        assert (
            assignment_problems(
                sim, [im["matched_text_index"] for im in fixed], [im["matched_sim"] for im in fixed], 0.15
            )
            == []
        )
        broken += bool(
            assignment_problems(
                sim, [im["matched_text_index"] for im in frozen], [im["matched_sim"] for im in frozen], 0.15
            )
        )
    assert broken > 0
