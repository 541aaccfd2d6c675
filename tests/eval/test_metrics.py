"""Metric formulas against hand-worked cases; the neighbour search against brute force."""

import numpy as np
import pytest

from medscale.eval.metrics import (
    accuracy_at_k,
    auc,
    average_precision_at_k,
    bootstrap_interval,
    f1_score,
    majority_vote_at_k,
    mean_interval,
)
from medscale.eval.mlp import dann_alpha
from medscale.eval.retrieval import nearest

NEIGHBOURS = np.array([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1], [0, 0, 0, 0, 0], [1, 1, 0, 0, 2]])
LABELS = np.array([1, 1, 1, 0])


def test_average_precision_at_5_by_hand():
    # hits at ranks 1 and 3: (1/1 + 2/3) / 2; at 2 and 5: (1/2 + 2/5) / 2; none: 0; at 3 and 4: (1/3 + 2/4) / 2
    expected = [(1 + 2 / 3) / 2, (1 / 2 + 2 / 5) / 2, 0.0, (1 / 3 + 2 / 4) / 2]
    assert np.allclose(average_precision_at_k(NEIGHBOURS, LABELS), expected)


def test_accuracy_at_k_by_hand():
    assert accuracy_at_k(NEIGHBOURS, LABELS, 1).tolist() == [1, 0, 0, 0]
    assert accuracy_at_k(NEIGHBOURS, LABELS, 3).tolist() == [1, 1, 0, 1]
    assert accuracy_at_k(NEIGHBOURS, LABELS, 5).tolist() == [1, 1, 0, 1]


def test_majority_vote_counts_ties_as_correct():
    # [1,0,1,0,0] y=1: 0 wins 3-2 -> wrong; [0,1,0,0,1] y=1: 0 wins 3-2 -> wrong; no hit -> wrong;
    # [1,1,0,0,2] y=0: 0 and 1 tie at 2 -> correct
    assert majority_vote_at_k(NEIGHBOURS, LABELS, 5).tolist() == [0, 0, 0, 1]


def test_auc_by_hand_with_ties_and_macro_one_vs_rest():
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert auc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)
    scores = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.3, 0.4, 0.3]])
    labels = np.array([0, 1, 2, 1])
    # class 0: positive 0.8 beats 0.2, 0.1, 0.3 -> 1; class 1: positives 0.7, 0.4 vs 0.1, 0.2 -> 1;
    # class 2: positive 0.7 vs 0.1, 0.1, 0.3 -> 1
    assert auc(scores, labels) == pytest.approx(1.0)
    scores[3] = [0.9, 0.05, 0.05]
    # class 0: 0.8 beats 0.2 and 0.1, not 0.9 -> 2/3; class 1: 0.7 beats 0.1 and 0.2, 0.05 beats neither -> 2/4;
    # class 2: 0.7 beats 0.1, 0.1, 0.05 -> 1
    assert auc(scores, labels) == pytest.approx((2 / 3 + 2 / 4 + 1) / 3)


def test_f1_and_the_alpha_schedule():
    assert f1_score(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])) == pytest.approx(0.5)
    assert f1_score(np.array([0, 0]), np.array([0, 0])) == 0.0
    assert dann_alpha(0.0) == 0.0 and dann_alpha(1.0) == pytest.approx(2 / (1 + np.exp(-10)) - 1)


def test_bootstrap_intervals_bracket_the_value():
    rng = np.random.default_rng(0)
    values = (rng.random(200) < 0.7).astype(float)
    mean, low, high = mean_interval(values, 500, 0)
    assert low < mean < high and 0.05 < high - low < 0.2  # about 2 x 1.96 x sqrt(0.21 / 200) = 0.127
    scores, labels = rng.random(200), (rng.random(200) < 0.5).astype(int)
    low, high = bootstrap_interval({"scores": scores, "labels": labels}, auc, 300, 0)
    assert low < auc(scores, labels) < high
    assert np.isnan(mean_interval(values, 0, 0)[1])


@pytest.mark.parametrize("distance", ["cosine", "l2"])
def test_nearest_matches_brute_force(distance):
    rng = np.random.default_rng(1)
    queries, database = rng.normal(size=(50, 16)), rng.normal(size=(300, 16))
    idx, _ = nearest(queries, database, 5, distance)
    if distance == "cosine":
        q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        d = database / np.linalg.norm(database, axis=1, keepdims=True)
        expected = np.argsort(-(q @ d.T), axis=1)[:, :5]
    else:
        expected = np.argsort(((queries[:, None] - database[None]) ** 2).sum(-1), axis=1)[:, :5]
    assert (idx == expected).all()


def test_corruptions_follow_their_formulas():
    from medscale.eval.corruptions import corrupt

    x = np.tile(np.linspace(40, 200, 28, dtype=np.float64).round().astype(np.uint8), (3, 28, 1))
    contrast = corrupt(x, "contrast_down", 5).astype(float)  # x0.4 around each image's mean
    assert abs(contrast.mean() - x.mean()) < 1 and contrast.std() == pytest.approx(0.4 * x.std(), rel=0.02)
    assert np.abs(corrupt(x, "brightness_down", 5).astype(float) - 0.5 * x).max() <= 0.5 + 1e-9
    assert corrupt(np.array([[0, 255]], np.uint8), "gamma_up", 3).tolist() == [[0, 255]]
    noisy = corrupt(np.full((4, 64, 64), 128, np.uint8), "gaussian_noise", 5).astype(float) / 255
    assert noisy.std() == pytest.approx(0.08, rel=0.05)
    assert (corrupt(x, "gaussian_noise", 1, seed=3) == corrupt(x, "gaussian_noise", 1, seed=3)).all()
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(x, "fog", 1)
