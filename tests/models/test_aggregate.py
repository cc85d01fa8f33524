import numpy as np

from skygrade.models.aggregate import combine, geometric_mean, vote_pool


def test_vote_pool_follows_the_majority_where_the_mean_follows_one_confident_ccd():
    # The demo's RBT exposure: three CCDs lean RBT, one is sure of BT (classes: BT, RBT).
    probs = np.array([[0.99, 0.01], [0.42, 0.58], [0.40, 0.60], [0.45, 0.55]])
    assert combine(probs).argmax() == 0
    assert vote_pool(probs).argmax() == 1
    np.testing.assert_allclose(vote_pool(probs).sum(), 1.0)


def test_vote_pool_lets_the_probabilities_break_a_tie():
    probs = np.array([[0.9, 0.1], [0.45, 0.55]])
    assert vote_pool(probs).argmax() == 0
    assert geometric_mean(probs).argmax() == 0
