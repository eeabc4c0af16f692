"""assign_images / assign_flat against the transcription of MMC4's compute_assignments.py.

The differential test runs >= 10,000 generated matrices through the reference, the
per-document solver and the batch solver, and demands identical answers, ties included.
"""

from collections import Counter
from itertools import permutations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mmc4_assets.assign import assign_images
from mmc4_assets.assign.batch import assign_flat
from mmc4_assets.assign.linear import MMC4, THRESHOLDED_ARGMAX
from mmc4_reference import reference_assignment

F32_EPS = float(np.finfo(np.float32).eps)
KINDS = (
    "ties",
    "all_below",
    "more_images",
    "one_by_one",
    "zero_sentences",
    "near_threshold",
    "continuous",
    "one_column_wanted",
)


def _matrix(rng: np.random.Generator, kind: str) -> np.ndarray:
    n, m = int(rng.integers(1, 7)), int(rng.integers(1, 8))
    if kind == "ties":
        a = rng.choice([0.1, 0.15, 0.2, 0.3], (n, m))
    elif kind == "all_below":  # some rows entirely below the threshold, others not
        a = rng.random((n, m)) * 0.149
        a[rng.random(n) < 0.4] += 0.1
    elif kind == "more_images":
        m = int(rng.integers(1, 4))
        n = m + int(rng.integers(1, 5))
        a = rng.choice([0.12, 0.15, 0.18, 0.2], (n, m)) if rng.random() < 0.5 else rng.normal(0.18, 0.05, (n, m))
    elif kind == "one_by_one":
        a = rng.choice([0.1, 0.149, 0.15, 0.151, 0.3], (1, 1))
    elif kind == "zero_sentences":
        a = np.zeros((n, 0))
    elif kind == "near_threshold":  # float32 neighbours of 0.15: the filter's edge
        a = np.float32(0.15) + rng.integers(-3, 4, (n, m)) * F32_EPS * 0.1
    elif kind == "continuous":
        a = rng.normal(0.16, 0.05, (n, m))
    else:  # every image wants the same sentence
        a = rng.random((n, m)) * 0.2
        a[:, rng.integers(0, m)] += 0.2
    return a.astype(np.float32)


def _cases(seed: int, per_kind: int) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(kind, _matrix(rng, kind)) for _ in range(per_kind) for kind in KINDS]


def _same(ref, kept, matched, matched_sim, surplus) -> bool:
    r_kept, r_matched, r_sim, r_surplus = ref
    return (
        r_kept == kept.tolist()
        and r_matched == matched.tolist()
        and r_surplus == surplus.tolist()
        and np.array_equal(np.array(r_sim, dtype=np.float64), matched_sim, equal_nan=True)
    )


def test_matches_the_mmc4_transcription_on_10000_matrices():
    cases = _cases(seed=16, per_kind=1300)  # 8 kinds x 1300 = 10,400 matrices
    counts, per_doc_diff, batch_diff = Counter(), [], []
    refs = [reference_assignment(a, 0.15) for _, a in cases]
    for (kind, a), ref in zip(cases, refs):
        counts[kind] += 1
        got = assign_images(a, 0.15)
        if not _same(ref, got.kept, got.matched_text_index, got.matched_sim, got.surplus):
            per_doc_diff.append((kind, a.tolist()))
    for start in range(0, len(cases), 500):  # the batch solver, 500 documents per batch
        chunk = cases[start : start + 500]
        n = np.array([a.shape[0] for _, a in chunk])
        m = np.array([a.shape[1] for _, a in chunk])
        got = assign_flat(np.concatenate([a.ravel() for _, a in chunk]), n, m, 0.15)
        row = 0
        for (kind, a), ref in zip(chunk, refs[start : start + 500]):
            sl = slice(row, row + a.shape[0])
            if not _same(ref, got.kept[sl], got.matched_text_index[sl], got.matched_sim[sl], got.surplus[sl]):
                batch_diff.append((kind, a.tolist()))
            row += a.shape[0]
    assert sum(counts.values()) >= 10_000 and min(counts.values()) >= 1000, counts
    assert per_doc_diff == [] and batch_diff == []
    # the generator does reach the cases the issue names
    assert any(r[3].count(True) for r in refs)  # argmax surplus happened
    assert any(not any(r[0]) for r in refs)  # documents losing every image
    assert any(s < 0.15 for r in refs for s in r[2] if not np.isnan(s))  # pairs below 0.15 chosen


def test_tie_heavy_batches_match_the_transcription_at_other_thresholds():
    rng = np.random.default_rng(3)
    for min_sim in (0.1, 0.2, -1.0):
        mats = [
            rng.choice([0.1, 0.2, 0.2, 0.3], (int(rng.integers(0, 6)), int(rng.integers(0, 6)))) for _ in range(300)
        ]
        n, m = np.array([a.shape[0] for a in mats]), np.array([a.shape[1] for a in mats])
        got = assign_flat(np.concatenate([a.ravel() for a in mats]), n, m, min_sim)
        row = 0
        for a in mats:
            sl = slice(row, row + a.shape[0])
            assert _same(
                reference_assignment(a, min_sim),
                got.kept[sl],
                got.matched_text_index[sl],
                got.matched_sim[sl],
                got.surplus[sl],
            )
            row += a.shape[0]


def test_a_pair_below_the_threshold_is_chosen_when_it_maximises_the_total():
    # both images clear 0.15 only on sentence 0; MMC4 solves the whole matrix: 0.4 + 0.02 > 0.3 + 0.01
    sim = np.array([[0.4, 0.01], [0.3, 0.02]])
    a = assign_images(sim)
    assert a.kept.all() and a.matched_text_index.tolist() == [0, 1] and not a.surplus.any()
    assert a.matched_sim.tolist() == pytest.approx([0.4, 0.02])
    old = assign_images(sim, rule=THRESHOLDED_ARGMAX)
    assert old.matched_text_index.tolist() == [0, 0] and old.surplus.tolist() == [False, True]


def test_sentences_outnumbering_images_never_share_a_sentence():
    # the thresholded variant put both images on sentence 1; MMC4 gives each its own
    sim = np.array([[0.05, 0.30, 0.10], [0.02, 0.20, 0.12]])
    assert assign_images(sim).matched_text_index.tolist() == [1, 2]
    assert assign_images(sim, rule=THRESHOLDED_ARGMAX).matched_text_index.tolist() == [1, 1]


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown assignment rule"):
        assign_images(np.ones((1, 1)), rule="greedy")
    with pytest.raises(ValueError, match="unknown assignment rule"):
        assign_flat(np.ones(1), [1], [1], rule="greedy")


# -- properties ---------------------------------------------------------------------------


def _best_total(sim: np.ndarray) -> float:
    """The optimum by brute force over every injective placement (small matrices only)."""
    n, m = sim.shape
    if n <= m:
        return max(sum(sim[i, c] for i, c in enumerate(cols)) for cols in permutations(range(m), n))
    return max(sum(sim[r, j] for j, r in enumerate(rows)) for rows in permutations(range(n), m))


_values = st.sampled_from([0.0, 0.1, 0.14, 0.15, 0.16, 0.2, 0.3]) | st.floats(-0.25, 0.5, width=32)
_matrices = hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=5), elements=_values)


@settings(max_examples=300, deadline=None)
@given(_matrices)
def test_property_total_is_optimal_and_sentences_shared_only_by_surplus(sim):
    a = assign_images(sim, 0.15)
    kept = np.flatnonzero(a.kept)
    if kept.size == 0:
        return
    sub = sim[kept].astype(np.float64)
    idx, surplus = a.matched_text_index[kept], a.surplus[kept]
    # matched_sim is the matrix entry
    assert np.array_equal(a.matched_sim[kept], sub[np.arange(kept.size), idx])
    # the one-to-one part is an optimal assignment of the kept images' whole matrix
    assert sub[~surplus, idx[~surplus]].sum() == pytest.approx(_best_total(sub), abs=1e-9)
    if kept.size <= sim.shape[1]:
        assert not surplus.any() and len(set(idx.tolist())) == kept.size
    else:  # every sentence is taken once; the surplus sit on their best sentence
        assert sorted(idx[~surplus].tolist()) == list(range(sim.shape[1]))
        assert np.array_equal(sub[surplus, idx[surplus]], sub[surplus].max(axis=1))


@settings(max_examples=200, deadline=None)
@given(_matrices)
def test_property_thresholded_variant_keeps_every_match_above_the_threshold(sim):
    a = assign_images(sim, 0.15, rule=THRESHOLDED_ARGMAX)
    assert (a.matched_sim[a.kept] >= 0.15).all()
    assert a.kept.tolist() == assign_images(sim, 0.15, rule=MMC4).kept.tolist()
