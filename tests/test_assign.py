import numpy as np
import pytest

from mmc4_assets.assign import assign_images


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


def test_image_whose_only_good_sentence_is_taken_becomes_surplus_not_below_threshold():
    # both images only clear the threshold on sentence 0; sentence 1 is below it for both
    sim = np.array([[0.4, 0.01], [0.3, 0.02]])
    a = assign_images(sim, min_sim=0.15)
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
