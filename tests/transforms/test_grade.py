import numpy as np
import pytest

from skygrade.models.aggregate import combine, geometric_mean
from skygrade.models.classes import CLASSES
from skygrade.transforms.grade import CcdScore, grade_exposure, pick_class


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
    assert g.reason.startswith("BT: 31/36 CCDs trailed (5 GOOD), median elongation 1.90")
    assert 0.5 < g.confidence <= 1
    assert g.n_ccd_graded == 36 and g.n_sources == 360


def test_dead_and_quarantined_ccds_do_not_vote_but_are_named():
    ccds = [score(i, p(GOOD=0.9, BT=0.1)) for i in range(3)]
    ccds += [score(3, None, reason="all_zero: dead CCD"), score(4, None, reason="no_clean_sources")]
    g = grade_exposure("100", 5, ccds)
    assert g.grade == "GOOD" and g.n_ccd == 5 and g.n_ccd_graded == 3
    assert "2 CCD(s) not graded (all_zero, no_clean_sources)" in g.reason


def test_reason_names_the_inputs_a_catalog_lacked():
    ccds = [
        CcdScore("100", i, p(GOOD=0.9, BT=0.1), missing=("EXPTIME", "FLUX_RADIUS", "A_IMAGE"))
        for i in range(3)
    ]
    g = grade_exposure("100", 3, ccds)
    assert g.grade == "GOOD"
    assert g.reason.endswith("; graded without EXPTIME, FLUX_RADIUS, A_IMAGE (not in the input)")
    assert "graded without" not in grade_exposure("100", 1, [score(0, p(GOOD=1.0))]).reason


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


def test_the_grade_follows_the_votes_not_one_confident_ccd():
    """Issue 20: BGP 0.998, BGP 0.997, B_SEEING 1.00, RBT 1.00 was graded B_SEEING 0.93."""
    ccds = [
        score(0, p(BGP=0.998, B_SEEING=0.002)),
        score(1, p(BGP=0.997, B_SEEING=0.003)),
        score(2, p(B_SEEING=1.0)),
        score(3, p(RBT=0.99, B_SEEING=0.01)),
    ]
    before = geometric_mean(np.stack([c.probs for c in ccds]))
    assert CLASSES[int(np.argmax(before))] == "B_SEEING"  # one CCD's 0 vetoed BGP
    g = grade_exposure("100", 4, ccds)
    assert g.grade == "BGP" and g.confidence == pytest.approx(0.499, abs=1e-3)
    assert g.reason.startswith("BGP: 2/4 CCDs with a background problem (1 RBT, 1 B_SEEING)")
    np.testing.assert_allclose(combine(np.stack([c.probs for c in ccds])).sum(), 1.0)


def test_unfamiliar_inputs_are_named_in_the_reason():
    ccds = [CcdScore("100", i, p(RBT=0.6, GOOD=0.4), ood=o) for i, o in enumerate([2.5, 3.0, 0.4])]
    g = grade_exposure("100", 3, ccds)
    assert g.ood == pytest.approx(2.5)
    assert "inputs unlike the training data on 2/3 CCDs (OOD 2.8): confidence lowered" in g.reason
    assert "unlike" not in grade_exposure("100", 1, [score(0, p(GOOD=1.0))]).reason


def test_doubled_images_are_named_in_the_reason():
    """A mount jump doubles every star: the reason says on how many CCDs, and how many of the
    brightest sources were twinned; a CCD under the threshold, or unmeasured, is not counted."""
    twins = [0.31, 0.27, 0.05, float("nan")]
    ccds = [CcdScore("100", i, p(RBT=0.7, BT=0.3), twin_fraction=t) for i, t in enumerate(twins)]
    g = grade_exposure("100", 4, ccds)
    assert g.grade == "RBT"
    assert "; doubled images on 2/4 CCDs (29% of the brightest sources twinned at one offset)" in (
        g.reason
    )
    single = [CcdScore("100", 0, p(GOOD=1.0), twin_fraction=0.01)]
    assert "doubled" not in grade_exposure("100", 1, single).reason


def test_a_catalog_without_its_sky_says_a_background_problem_may_not_show():
    def ccds(background, image=None, probs=None):
        return [
            CcdScore(
                "100",
                i,
                p(GOOD=0.8, B_SEEING=0.2) if probs is None else probs,
                median_background=background,
                image=image,
            )
            for i in range(4)
        ]

    note = "a background problem may not show"
    subtracted = grade_exposure("100", 4, ccds(-3.0))
    assert subtracted.grade == "GOOD"
    assert "; sky -3 ADU in the catalog (subtracted before extraction" in subtracted.reason
    assert note in grade_exposure("100", 4, ccds(24.0)).reason
    # The sky kept, pixels graded (a representative image can show a gradient), a BGP grade,
    # or no background at all: no note.
    assert note not in grade_exposure("100", 4, ccds(900.0)).reason
    assert note not in grade_exposure("100", 4, ccds(-3.0, image=np.zeros((4, 4)))).reason
    assert note not in grade_exposure("100", 4, ccds(-3.0, probs=p(BGP=0.9, GOOD=0.1))).reason
    assert note not in grade_exposure("100", 4, ccds(float("nan"))).reason
