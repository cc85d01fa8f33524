"""Evaluation pieces without Beam: threshold tree, statistics, ablations, the report's data."""

import json

import numpy as np
import pytest
import torch

from skygrade.models.classes import CLASSES
from skygrade.models.cnn import AUX_FEATURES, CnnShape, DualInputNet
from skygrade.models.evaluate import (
    MODES,
    STATISTICS,
    ablation_probs,
    build_report,
    comparison_rows,
    exposure_statistics,
    fit_threshold_tree,
    mode_metrics,
    statistics_matrix,
)
from skygrade.models.mosaic import tile_grid
from skygrade.models.train import Dataset, classification_metrics, predict
from skygrade.transforms.extract import CcdFeatures, empty_sources


def _separable(n_per_class: int, seed: int):
    """GOOD: small radius, round; B_SEEING: large radius, round; RBT: elongated. Column 2 is
    noise."""
    rng = np.random.default_rng(seed)
    radius = np.concatenate(
        [rng.uniform(1.5, 2.5, n_per_class), rng.uniform(3.5, 5.0, n_per_class)]
        + [rng.uniform(2.0, 4.0, n_per_class)]
    )
    elong = np.concatenate(
        [rng.uniform(1.0, 1.2, 2 * n_per_class), rng.uniform(2.5, 4, n_per_class)]
    )
    noise = rng.normal(size=3 * n_per_class)
    y = np.repeat([CLASSES.index(c) for c in ("GOOD", "B_SEEING", "RBT")], n_per_class)
    return np.column_stack([radius, elong, noise]), y


def test_threshold_tree_learns_separable_data_and_describes_its_thresholds():
    X, y = _separable(30, seed=1)
    tree = fit_threshold_tree(X, y, ["radius", "elongation", "noise"], depth=3, min_leaf=5)
    X_test, y_test = _separable(20, seed=2)
    assert np.mean(tree.predict(X_test) == y_test) == 1.0
    rules = tree.describe()
    assert 3 <= len(rules) <= 8
    text = "\n".join(rules)
    assert "noise" not in text  # the uninformative column is never used
    elong_rule = next(r for r in rules if r.startswith("elongation >"))
    threshold = float(elong_rule.split()[2])
    assert 1.2 < threshold < 2.5 and elong_rule.split(" -> ")[1].startswith("RBT")
    assert any("radius <=" in r and "-> GOOD" in r for r in rules)
    assert all("training exposures:" in r for r in rules)
    probs = tree.predict_proba(X_test)
    assert probs.shape == (60, len(CLASSES)) and np.allclose(probs.sum(1), 1)


def test_threshold_tree_respects_depth_min_leaf_and_fills_nan():
    X, y = _separable(30, seed=3)
    stump = fit_threshold_tree(X, y, ["r", "e", "n"], depth=1)
    assert len(stump.describe()) == 2
    big_leaves = fit_threshold_tree(X, y, ["r", "e", "n"], depth=3, min_leaf=40)
    assert len(big_leaves.describe()) == 2  # 90 samples: only one split leaves 40 on each side
    X_nan = X.copy()
    X_nan[0, 1] = np.nan
    tree = fit_threshold_tree(X_nan, y, ["r", "e", "n"])
    assert tree.predict(np.array([[np.nan, np.nan, np.nan]])).shape == (1,)
    one_class = fit_threshold_tree(X[:30], y[:30], ["r", "e", "n"])
    assert one_class.describe() == ["always -> GOOD (30 training exposures: 30 GOOD)"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"depth": 0}, "depth must be >= 1, got 0"),
        ({"min_leaf": 0}, "min_leaf must be >= 1, got 0"),
        ({"names": ["a"]}, "names has 1 entries for 3 columns"),
        ({"y": np.full(90, 7)}, r"class indices in \[0, 5\)"),
        ({"X": np.zeros((0, 3)), "y": np.zeros(0, int)}, "no rows"),
    ],
)
def test_threshold_tree_rejects_bad_inputs(kwargs, match):
    X, y = _separable(30, seed=0)
    args = {"X": X, "y": y, "names": ["r", "e", "n"], **kwargs}
    with pytest.raises(ValueError, match=match):
        fit_threshold_tree(**args)


def _ccd(radius, elong, sky, flags=None, exptime=100.0):
    n = len(radius)
    t = empty_sources() if n == 0 else {k: np.zeros(n, v.dtype) for k, v in empty_sources().items()}
    if n:
        t["FLUX_RADIUS"] = np.asarray(radius, np.float32)
        t["ELONGATION"] = np.asarray(elong, np.float32)
        t["BACKGROUND"] = np.asarray(sky, np.float32)
        t["FLAGS"] = np.zeros(n, np.int32) if flags is None else np.asarray(flags, np.int32)
    return CcdFeatures("1", 0, 2, exptime, 1000, 1000, t)


def test_exposure_statistics_use_clean_sources_and_survive_empty_ccds():
    a = _ccd([2.0, 2.0, 9.0], [1.1, 1.1, 5.0], [100, 100, 100], flags=[0, 2, 4])  # 4: saturated
    b = _ccd([3.0], [1.3], [1000])
    stats = exposure_statistics([a, b])
    assert set(stats) == set(STATISTICS)
    assert stats["flux_radius_px"] == pytest.approx(2.0)  # the saturated 9 px source is left out
    assert stats["elongation"] == pytest.approx(1.1)
    assert stats["sky_ccd_spread_dex"] == pytest.approx(0.5)  # log10 100 and log10 1000
    assert stats["blended_fraction"] == pytest.approx(0.25)
    assert stats["log_density"] == pytest.approx(np.log10(3 / 2 + 1))
    empty = exposure_statistics([_ccd([], [], [])])
    assert np.isnan(empty["flux_radius_px"]) and np.isnan(empty["log_sky_rate"])
    assert statistics_matrix([stats, empty]).shape == (2, len(STATISTICS))


def _tiny_data(n=6, tile=8, n_clusters=4, seed=0):
    rng = np.random.default_rng(seed)
    rows, cols = tile_grid(n_clusters)
    return Dataset(
        rng.normal(size=(n, rows * tile, cols * tile)).astype(np.float32),
        rng.random((n, n_clusters + len(AUX_FEATURES))).astype(np.float32),
        np.ones(n, np.float32),
        np.array([0, 0, 1, 1, 4, 4])[:n],
        np.array(["a", "a", "b", "b", "c", "c"], dtype=object)[:n],
    )


def test_ablation_probs_mask_one_network_at_inference():
    torch.manual_seed(0)
    model = DualInputNet(CnnShape(n_clusters=4, tile=8)).eval()
    data = _tiny_data()
    probs = ablation_probs(model, data, data.vector.mean(0))
    assert set(probs) == set(MODES)
    assert probs["hits_only"] is probs["catalog"]
    np.testing.assert_allclose(probs["full"], predict(model, data))
    np.testing.assert_allclose(probs["catalog"], predict(model, data, np.zeros(6, np.float32)))
    # image-only: every CCD sees the same hits vector, so only the images differ
    assert not np.allclose(probs["image_only"], probs["full"])
    with pytest.raises(ValueError, match="mean_vector must have shape"):
        ablation_probs(model, data, np.zeros(3))
    m = mode_metrics(data, probs["full"])
    assert m["ccd"]["n"] == 6 and m["exposure"]["n"] == 3


def _metrics(truth, pred):
    return classification_metrics(np.array(truth), np.eye(len(CLASSES))[pred])


def test_report_is_json_with_the_side_by_side_rows():
    data = _tiny_data()
    cnn = {mode: mode_metrics(data, np.eye(len(CLASSES))[data.label]) for mode in MODES}
    base = _metrics([0, 1, 4], [0, 0, 4])
    report = build_report(
        bundle={"path": "b", "version": "v1"},
        archive="arch",
        scope={"kind": "independent", "text": "All 3 exposures."},
        cnn=cnn,
        baseline={
            "fit_on": "the bundle's 9 training exposures",
            "n_fit": 9,
            "depth": 3,
            "min_leaf": 2,
            "rules": ["elongation > 1.7 -> RBT (4 training exposures: 4 RBT)"],
            "metrics": base,
        },
        comparison={"text": "Same 3 exposures.", "rows": comparison_rows(cnn, base)},
    )
    json.dumps(report, allow_nan=False)  # NaN (ECE of nothing, etc.) became null
    assert [r["method"] for r in report["comparison"]["rows"]] == [*MODES, "baseline"]
    assert report["notes"][0].startswith("Ablations are inference-time maskings")
