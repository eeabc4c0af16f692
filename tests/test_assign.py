import numpy as np
import polars as pl
import pytest

from mmc4_assets.assign import assign_images
from mmc4_assets.assign.batch import assign_flat
from mmc4_assets.assign.linear import RULES, THRESHOLDED_ARGMAX
from mmc4_assets.assign.shard import ASSIGNMENTS_SCHEMA, assign_document, assign_frame
from mmc4_assets.clip.shard import CLIP_SCORES_SCHEMA
from mmc4_assets.stats import StepStats


def test_square_matrix_takes_the_optimal_not_the_greedy_assignment():
    # greedy would give image 0 sentence 0 (0.9) and image 1 sentence 1 (0.2): total 1.1;
    # the optimum is 0.8 + 0.7 = 1.5
    sim = np.array([[0.9, 0.8], [0.7, 0.2]])
    a = assign_images(sim)
    assert a.matched_text_index.tolist() == [1, 0]
    assert a.matched_sim.tolist() == pytest.approx([0.8, 0.7])
    assert a.kept.all() and not a.surplus.any()


def test_images_below_min_similarity_are_dropped():
    sim = np.array([[0.10, 0.14], [0.30, 0.20], [0.149, 0.0]])
    a = assign_images(sim, min_sim=0.15)
    assert a.kept.tolist() == [False, True, False]
    assert a.matched_text_index.tolist() == [-1, 0, -1]
    assert np.isnan(a.matched_sim[0]) and np.isnan(a.matched_sim[2])


def test_threshold_is_inclusive():
    a = assign_images(np.array([[0.15, 0.1]]), min_sim=0.15)
    assert a.kept.tolist() == [True]


def test_more_images_than_sentences_surplus_go_to_argmax():
    sim = np.array([[0.5, 0.2], [0.4, 0.3], [0.6, 0.1], [0.2, 0.25]])
    a = assign_images(sim)
    assert a.kept.all()
    # two sentences -> two images placed one-to-one, the other two by argmax
    assert (~a.surplus).sum() == 2
    one_to_one = a.matched_text_index[~a.surplus]
    assert sorted(one_to_one.tolist()) == [0, 1]
    for i in np.flatnonzero(a.surplus):
        assert a.matched_text_index[i] == sim[i].argmax()
    # total over the one-to-one part is the best possible pairing
    assert sim[~a.surplus, one_to_one].sum() == pytest.approx(0.6 + 0.3)


def test_one_sentence_many_images_all_share_it():
    sim = np.array([[0.3], [0.2], [0.16]])
    a = assign_images(sim)
    assert a.matched_text_index.tolist() == [0, 0, 0]
    assert a.surplus.sum() == 2


def test_one_image_goes_to_its_best_sentence():
    a = assign_images(np.array([[0.1, 0.3, 0.2]]))
    assert a.matched_text_index.tolist() == [1]
    assert a.matched_sim.tolist() == pytest.approx([0.3])


def test_ties_are_resolved_deterministically_and_one_to_one():
    sim = np.full((3, 3), 0.2)
    first = assign_images(sim)
    second = assign_images(sim.copy())
    assert first.matched_text_index.tolist() == second.matched_text_index.tolist()
    assert sorted(first.matched_text_index.tolist()) == [0, 1, 2]


def test_thresholded_variant_makes_an_image_whose_only_good_sentence_is_taken_surplus():
    # both images only clear the threshold on sentence 0; sentence 1 is below it for both.
    # (MMC4's rule pairs image 1 with sentence 1 instead: test_assign_reference.py)
    sim = np.array([[0.4, 0.01], [0.3, 0.02]])
    a = assign_images(sim, min_sim=0.15, rule=THRESHOLDED_ARGMAX)
    assert a.kept.all()
    assert (a.matched_sim >= 0.15).all()
    assert a.matched_text_index.tolist() == [0, 0]
    assert a.surplus.tolist() == [False, True]


def test_empty_and_invalid_input():
    assert assign_images(np.zeros((0, 3))).kept.size == 0
    assert not assign_images(np.zeros((2, 0))).kept.any()
    with pytest.raises(ValueError):
        assign_images(np.array([0.1, 0.2]))
    with pytest.raises(ValueError):
        assign_images(np.array([[np.nan, 0.2]]))


# -- the batch solver must give exactly assign_images' answers ---------------------------


def _random_matrix(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    kind = rng.integers(0, 6)
    if kind == 0:  # continuous, like real CLIP cosines
        a = rng.normal(0.2, 0.06, (n, m))
    elif kind == 1:  # few distinct values: ties everywhere, values on the threshold
        a = rng.choice([0.1, 0.15, 0.2, 0.3], (n, m))
    elif kind == 2:  # rounded: occasional ties
        a = np.round(rng.random((n, m)) * 0.4, 2)
    elif kind == 3:  # constant matrix
        a = np.full((n, m), rng.choice([0.1, 0.15, 0.2]))
    elif kind == 4:  # every image wants the same sentence
        a = rng.random((n, m)) * 0.2
        if m:
            a[:, rng.integers(0, m)] += 0.3
    else:  # negatives and values in float32's last bits around the threshold
        a = np.float32(0.15) + rng.integers(-3, 4, (n, m)) * np.finfo(np.float32).eps * 0.1
    return a.astype(np.float32)


def _assert_same(ref, got, sl):
    assert ref.kept.tolist() == got.kept[sl].tolist()
    assert ref.matched_text_index.tolist() == got.matched_text_index[sl].tolist()
    assert ref.surplus.tolist() == got.surplus[sl].tolist()
    np.testing.assert_array_equal(ref.matched_sim, got.matched_sim[sl])  # bitwise, nan == nan


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("seed", range(6))
def test_batch_solver_matches_assign_images_exactly(seed, rule):
    rng = np.random.default_rng(seed)
    for _ in range(300):
        docs = int(rng.integers(1, 16))
        n = rng.integers(0, 9, docs)
        m = rng.integers(0, 10, docs)
        mats = [_random_matrix(rng, int(a), int(b)) for a, b in zip(n, m)]
        min_sim = float(rng.choice([0.15, 0.2, 0.1, -1.0, 0.15000001]))
        got = assign_flat(np.concatenate([a.ravel() for a in mats]), n, m, min_sim, rule)
        start = 0
        for a, rows in zip(mats, n):
            _assert_same(assign_images(a, min_sim=min_sim, rule=rule), got, slice(start, start + rows))
            start += rows
        assert got.kept_per_doc.tolist() == [int(assign_images(a, min_sim).kept.sum()) for a in mats]


def test_batch_solver_takes_the_argmax_fast_path_only_when_it_is_the_unique_optimum():
    distinct = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)  # argmax 0, 1: no solver
    clash = np.array([[0.9, 0.8], [0.7, 0.2]], np.float32)  # both want 0: solver
    tie = np.array([[0.5, 0.5, 0.1]], np.float32)  # one image, tied: solver
    mats = [distinct, clash, tie]
    got = assign_flat(np.concatenate([a.ravel() for a in mats]), [2, 2, 1], [2, 2, 3])
    assert got.docs_solved == 2
    assert got.matched_text_index.tolist() == [0, 1, 1, 0, assign_images(tie).matched_text_index[0]]


def test_batch_solver_rejects_bad_input():
    with pytest.raises(ValueError):
        assign_flat(np.zeros(5), [2], [3])
    with pytest.raises(ValueError):
        assign_flat(np.array([0.2, np.nan]), [1], [2])


def _clip_scores_frame(rng: np.random.Generator, docs: int) -> pl.DataFrame:
    rows = []
    for d in range(docs):
        n, m = int(rng.integers(0, 7)), int(rng.integers(1, 9))
        rows.append(
            {
                "doc_id": f"s:{d}",
                "url": f"https://example.com/{d}",
                "text_list": [f"sentence {d}.{j}" for j in range(m)],
                "images": [
                    {
                        "image_index": i * 2,
                        "image_name": f"{d:04d}{i}.jpg",
                        "raw_url": f"https://x/{d}/{i}.jpg",
                        "phash": f"{d * 7 + i:016x}",
                    }
                    for i in range(n)
                ],
                "similarity_matrix": _random_matrix(rng, n, m).tolist(),
            }
        )
    return pl.DataFrame(rows, schema=CLIP_SCORES_SCHEMA)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("seed", range(4))
def test_assign_frame_matches_assign_document_row_by_row(seed, rule):
    rng = np.random.default_rng(100 + seed)
    frame = _clip_scores_frame(rng, 200)
    for min_sim in (0.15, 0.2, -1.0):
        images = StepStats()
        want = [r for r in (assign_document(row, min_sim, images, rule) for row in frame.iter_rows(named=True)) if r]
        got = assign_frame(frame, min_sim, rule)
        assert got.frame.schema == pl.Schema(ASSIGNMENTS_SCHEMA)
        assert got.frame.to_dicts() == pl.DataFrame(want, schema=ASSIGNMENTS_SCHEMA).to_dicts()
        assert (got.images_kept, got.images_dropped) == (images.kept, images.total_dropped)
        assert got.docs_in == frame.height
        assert got.matched_sim_sum == pytest.approx(sum(im["matched_sim"] for r in want for im in r["image_info"]))


def test_assign_frame_handles_slices_and_empty_batches():
    frame = _clip_scores_frame(np.random.default_rng(7), 50)
    part = frame.slice(13, 20)  # arrow offsets that do not start at 0
    images = StepStats()
    want = [r for r in (assign_document(row, 0.15, images) for row in part.iter_rows(named=True)) if r]
    assert assign_frame(part, 0.15).frame.to_dicts() == pl.DataFrame(want, schema=ASSIGNMENTS_SCHEMA).to_dicts()
    empty = assign_frame(frame.clear(), 0.15)
    assert empty.frame.height == 0 and empty.frame.schema == pl.Schema(ASSIGNMENTS_SCHEMA)


def test_assign_frame_rejects_a_matrix_that_is_not_images_x_sentences():
    frame = _clip_scores_frame(np.random.default_rng(3), 5).with_columns(
        pl.col("text_list").list.concat(pl.lit(["one more"]))
    )
    with pytest.raises(ValueError, match="not images x sentences"):
        assign_frame(frame, 0.15)
