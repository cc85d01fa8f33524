import numpy as np
import pytest

from models.aggregate import combine
from models.classes import CLASSES
from transforms.grade import CcdScore, grade_exposure, pick_class


def p(**kw):
    v = np.array([kw.get(c, 0.0) for c in CLASSES])
    return v / v.sum()


def score(ccd, probs, elong=1.2, reason=None):
    return CcdScore(
        "100",
        ccd,
        probs,
        n_sources=10,
        median_elongation=elong,
        median_iso0=20,
        median_background=900,
        reason=reason,
    )


def test_majority_of_trailed_ccds_grades_bt_with_a_readable_reason():
    ccds = [score(i, p(BT=0.8, GOOD=0.2), elong=1.9) for i in range(31)]
    ccds += [score(31 + i, p(GOOD=0.7, BT=0.3), elong=1.2) for i in range(5)]
    g = grade_exposure("100", 36, ccds)
    assert g.grade == "BT" and g.status == "graded"
    assert g.reason.startswith("BT: 31/36 CCDs trailed, median elongation 1.90")
    assert 0.5 < g.confidence <= 1
    assert g.n_ccd_graded == 36 and g.n_sources == 360


def test_dead_and_quarantined_ccds_do_not_vote_but_are_named():
    ccds = [score(i, p(GOOD=0.9, BT=0.1)) for i in range(3)]
    ccds += [score(3, None, reason="all_zero: dead CCD"), score(4, None, reason="no_clean_sources")]
    g = grade_exposure("100", 5, ccds)
    assert g.grade == "GOOD" and g.n_ccd == 5 and g.n_ccd_graded == 3
    assert "2 CCD(s) not graded (all_zero, no_clean_sources)" in g.reason


def test_all_quarantined_is_not_graded():
    g = grade_exposure(
        "100", 2, [score(0, None, reason="all_zero: x"), score(1, None, reason="all_zero: y")]
    )
    assert g.status == "quarantined" and g.grade is None and g.confidence == 0.0
    assert g.reason.startswith("no_usable_ccds: none of 2 CCDs")


def test_a_sky_saturated_on_half_the_ccds_or_more_is_bgp():
    sat = "saturated: every pixel is 65535.0, at or above SATURATE = 65535 (sky saturated?)"
    g = grade_exposure("100", 8, [score(i, None, reason=sat) for i in range(8)])
    assert (g.status, g.grade, g.confidence, g.n_ccd_graded) == ("graded", "BGP", 1.0, 0)
    assert g.probs.tolist() == [float(c == "BGP") for c in CLASSES]
    assert g.reason.startswith("BGP: sky saturated on 8/8 CCDs (no source measurable)")
    # half saturated: BGP whatever the others say; fewer than half: the others grade it
    half = [score(i, p(GOOD=0.9, BT=0.1)) for i in range(4)]
    half += [score(4 + i, None, reason=sat) for i in range(4)]
    g = grade_exposure("100", 8, half)
    assert (g.grade, g.n_ccd_graded) == ("BGP", 4)
    assert "4 CCD(s) not graded (saturated)" in g.reason
    g = grade_exposure("100", 8, half[:5] + [score(5 + i, p(GOOD=0.9, BT=0.1)) for i in range(3)])
    assert g.grade == "GOOD" and "1 CCD(s) not graded (saturated)" in g.reason
    # dead CCDs (constant below SATURATE) are not a sky problem
    dead = [score(i, None, reason="constant: every pixel is 1000.0 (dead CCD?)") for i in range(8)]
    assert grade_exposure("100", 8, dead).status == "quarantined"


def test_exact_tie_goes_to_the_more_severe_class():
    assert pick_class(p(GOOD=0.5, BT=0.5)) == "BT"
    assert pick_class(p(B_SEEING=0.4, BGP=0.4, GOOD=0.2)) == "BGP"
    g = grade_exposure("100", 2, [score(0, p(GOOD=0.9, RBT=0.1)), score(1, p(RBT=0.9, GOOD=0.1))])
    assert g.grade == "RBT"
    assert g.confidence == pytest.approx(0.5)


def test_geometric_mean_lets_a_confident_minority_tip_a_close_call():
    probs = np.stack([p(GOOD=0.55, B_SEEING=0.45)] * 3 + [p(GOOD=0.02, B_SEEING=0.98)])
    assert CLASSES[int(np.argmax(combine(probs)))] == "B_SEEING"
    np.testing.assert_allclose(combine(probs).sum(), 1.0)
    assert np.isfinite(combine(np.stack([p(GOOD=1.0), p(BT=1.0)]))).all()
