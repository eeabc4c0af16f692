"""MMC4's subsets at their boundaries: mmc4-core's ranges and thresholds, mmc4-ff's face rule."""

import hashlib

import pytest

from mmc4_assets.publish.subsets import (
    CORE,
    CORE_FF,
    FF,
    FULL,
    SUBSETS,
    CoreRules,
    core_document,
    subset_filename,
    subset_folder,
    subset_versions,
    without_faces,
)
from mmc4_assets.stats import StepStats

RULES = CoreRules()


def _phash(i: int) -> str:
    # pseudo-random 64-bit hashes: far apart (> 10 bits) unless a test makes them close
    return hashlib.blake2b(str(i).encode(), digest_size=8).hexdigest()


def _doc(sentences=5, sims=(0.3, 0.3), phashes=None, faces=None):
    phashes = phashes or [_phash(i) for i in range(len(sims))]
    faces = faces or [False] * len(sims)
    return {
        "doc_id": "d",
        "url": "https://s.test/d",
        "text_list": [f"S{i}." for i in range(sentences)],
        "image_info": [
            {
                "image_name": f"{i}.jpg",
                "raw_url": f"https://i.test/{i}.jpg",
                "phash": ph,
                "matched_text_index": 0,
                "matched_sim": s,
                "has_face": f,
            }
            for i, (s, ph, f) in enumerate(zip(sims, phashes, faces))
        ],
        "similarity_matrix": [[s] * sentences for s in sims],
        "could_have_url_duplicate": 0,
    }


def _core(doc):
    docs = StepStats()
    out = core_document(doc, RULES, docs, StepStats())
    return out, dict(docs.dropped)


def test_distinct_test_phashes_are_far_apart():
    from mmc4_assets.dedup.phash import hamming

    hashes = [_phash(i) for i in range(16)]
    assert min(hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :]) > 10


@pytest.mark.parametrize("sentences, kept", [(3, False), (4, True), (40, True), (41, False)])
def test_core_sentence_range_is_4_to_40(sentences, kept):
    out, dropped = _core(_doc(sentences=sentences))
    assert (out is not None) == kept
    assert kept or dropped == {"sentences_out_of_range": 1}


@pytest.mark.parametrize("images, kept", [(1, False), (2, True), (15, True), (16, False)])
def test_core_image_range_is_2_to_15(images, kept):
    out, dropped = _core(_doc(sims=[0.3] * images))
    assert (out is not None) == kept
    assert kept or dropped == {"images_out_of_range": 1}


def test_core_similarity_share_75_percent_kept_below_dropped():
    assert _core(_doc(sims=(0.3, 0.3, 0.3, 0.2)))[0] is not None  # 3/4 = 75 %
    out, dropped = _core(_doc(sims=(0.3, 0.3, 0.2, 0.2, 0.3)))  # 3/5 = 60 %
    assert out is None and dropped == {"low_similarity": 1}


def test_core_similarity_must_be_strictly_above_025():
    assert _core(_doc(sims=(0.25, 0.25)))[0] is None
    assert _core(_doc(sims=(0.2501, 0.2501)))[0] is not None


def test_core_uses_the_stricter_phash_threshold_10():
    base = "a5a5a5a5a5a5a5a5"
    near10 = f"{int(base, 16) ^ ((1 << 10) - 1):016x}"  # 10 bits away: a duplicate for core
    near11 = f"{int(base, 16) ^ ((1 << 11) - 1):016x}"  # 11 bits away: distinct
    far = _phash(1)
    out, _ = _core(_doc(sims=(0.3, 0.3, 0.3), phashes=[base, near10, far]))
    assert [im["image_name"] for im in out["image_info"]] == ["0.jpg", "2.jpg"]
    assert len(out["similarity_matrix"]) == 2
    out, _ = _core(_doc(sims=(0.3, 0.3, 0.3), phashes=[base, near11, far]))
    assert len(out["image_info"]) == 3
    # the stricter dedup happens before the image count: two copies leave one image
    out, dropped = _core(_doc(sims=(0.3, 0.3), phashes=[base, near10]))
    assert out is None and dropped == {"images_out_of_range": 1}


def test_ff_drops_face_images_and_then_docs_left_empty():
    docs, images = StepStats(), StepStats()
    out = without_faces(_doc(sims=(0.3, 0.3, 0.3), faces=[False, True, False]), "image", docs, images)
    assert [im["image_name"] for im in out["image_info"]] == ["0.jpg", "2.jpg"]
    assert len(out["similarity_matrix"]) == 2 and images.dropped["face"] == 1
    assert without_faces(_doc(sims=(0.3,), faces=[True]), "image", docs, images) is None
    assert docs.dropped["no_image_without_face"] == 1


def test_ff_document_scope_drops_any_document_with_a_face():
    docs = StepStats()
    assert without_faces(_doc(faces=[False, True]), "document", docs, StepStats()) is None
    assert without_faces(_doc(faces=[False, False]), "document", docs, StepStats()) is not None
    with pytest.raises(ValueError):
        without_faces(_doc(), "pixel", docs, StepStats())


def test_subset_file_names_and_folders():
    shard = "c4-train.00042-of-01024"
    assert subset_folder(FULL) == ("published",)
    assert subset_filename(FULL, shard, "v2", "v3") == "docs_shard_42_v2.jsonl.zip"
    assert subset_folder(FF) == ("published", "mmc4-ff")
    assert subset_filename(FF, shard, "v2", "v3") == "docs_shard_42_v2.jsonl.zip"
    assert subset_filename(CORE, shard, "v2", "v3") == "docs_shard_42_v3.jsonl.zip"
    assert subset_folder(CORE_FF) == ("published", "mmc4-core-ff")
    assert subset_filename(CORE_FF, shard, "v2", "v3") == "docs_shard_42_v3.jsonl.zip"


def test_core_ff_is_core_of_the_ff_document():
    stats = {s: (StepStats(), StepStats()) for s in (FULL, *SUBSETS)}
    # three well-matched images, one a face: core keeps 3, ff keeps 2, core-ff keeps those 2
    out = subset_versions(
        _doc(sims=(0.3, 0.3, 0.3), faces=[True, False, False]), [FULL, *SUBSETS], "image", RULES, stats
    )
    assert {s: len(d["image_info"]) for s, d in out.items()} == {FULL: 3, FF: 2, CORE: 3, CORE_FF: 2}
    # two images, one a face: ff keeps 1, too few for core-ff
    out = subset_versions(_doc(sims=(0.3, 0.3), faces=[True, False]), [FULL, *SUBSETS], "image", RULES, stats)
    assert set(out) == {FULL, FF, CORE}
    assert stats[CORE_FF][0].dropped == {"images_out_of_range": 1}
