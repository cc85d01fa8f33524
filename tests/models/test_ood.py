"""Out-of-distribution scores (skygrade.models.ood): inputs made deliberately unlike training."""

import numpy as np
import pytest

from skygrade.models.cnn import AUX_FEATURES, hit_vector
from skygrade.models.ood import fit_reference, ood_scores, temper
from skygrade.models.summary import SUMMARY_FEATURES

NAMES = [f"hits_{i}" for i in range(20)] + list(AUX_FEATURES)


def training_vectors(n, rng):
    """Input-2 vectors of ordinary CCDs: ~2000 sources, PSF-like shapes, a 100 s exposure."""
    hits = rng.multinomial(2000, np.full(20, 1 / 20), size=n)
    summary = np.column_stack(
        [rng.normal(0.37, 0.05, n), rng.normal(0.05, 0.02, n)]
        + [np.full(n, np.nan)] * (len(SUMMARY_FEATURES) - 2)
    )
    return hit_vector(hits, np.full(n, 2500), np.full(n, 100.0), np.full(n, 9.45), summary)


def test_training_like_ccds_score_below_one_and_unlike_ones_far_above():
    rng = np.random.default_rng(0)
    ref = fit_reference(training_vectors(2000, rng), NAMES)
    familiar = ood_scores(training_vectors(500, rng), ref)
    assert np.mean(familiar <= 1.0) > 0.95
    # a sky the simulator never drew: every source in two clusters, elongation of 3
    hits = np.zeros((1, 20))
    hits[0, :2] = 1000
    summary = np.full((1, len(SUMMARY_FEATURES)), np.nan)
    summary[0, :2] = [0.9, np.log10(3.0)]
    strange = hit_vector(hits, [2500], [100.0], [9.45], summary)
    score = float(ood_scores(strange, ref)[0])
    assert score > 3.0
    probs = temper(np.array([[0.0, 0.0, 0.0, 0.0, 1.0]]), np.array([score]))
    assert probs.max() < 0.4 and np.isclose(probs.sum(), 1.0)  # not RBT at 1.00


def test_flags_are_not_distances_and_missing_reference_is_nan():
    rng = np.random.default_rng(1)
    vectors = training_vectors(300, rng)
    ref = fit_reference(vectors, NAMES)
    no_exptime = vectors[:5].copy()
    no_exptime[:, 20 + AUX_FEATURES.index("exptime_known")] = 0.0  # a catalog without EXPTIME
    np.testing.assert_allclose(ood_scores(no_exptime, ref), ood_scores(vectors[:5], ref))
    assert np.isnan(ood_scores(vectors[:3], None)).all()
    with pytest.raises(ValueError, match="columns"):
        ood_scores(vectors[:, :5], ref)
    with pytest.raises(ValueError, match="at least 10"):
        fit_reference(vectors[:5], NAMES)
