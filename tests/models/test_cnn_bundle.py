import json

import numpy as np
import pytest
import torch

from skygrade.models.bundle import BundleError, ModelBundle, load_bundle, read_manifest
from skygrade.models.classes import CLASSES
from skygrade.models.cnn import (
    AUX_FEATURES,
    CnnShape,
    DualInputNet,
    EnsembleNet,
    hit_vector,
    predict_proba,
)
from skygrade.models.som import SOM_FEATURES, train_som
from skygrade.models.summary import SUMMARY_FEATURES, SUMMARY_FILL, ccd_summary, stack_summaries


@pytest.fixture(scope="module")
def bundle():
    rows = np.random.default_rng(0).normal(size=(3000, len(SOM_FEATURES))).astype(np.float32)
    som = train_som(rows, grid=(6, 6), iterations=1000, n_clusters=20, seed=0)
    torch.manual_seed(0)
    return ModelBundle(som, DualInputNet(CnnShape(tile=16)), {"version": "test-1"})


SMALL = CnnShape(tile=16)


def batch(n, shape=SMALL):
    rng = np.random.default_rng(1)
    image = rng.random((n, 4 * shape.tile, 5 * shape.tile), dtype=np.float32)
    hits = rng.integers(0, 50, (n, shape.n_clusters))
    vector = hit_vector(hits, hits.sum(1) + 10, np.full(n, 60.0), np.full(n, 9.45))
    return image, vector


def test_hit_vector_normalises_by_clean_count():
    v = hit_vector(
        np.array([[2, 2, 0], [0, 0, 0]]), np.array([8, 0]), np.array([100, 1]), [0.5, 0.0]
    )
    assert v.shape == (2, 3 + len(AUX_FEATURES))
    np.testing.assert_allclose(v[0, :3], [0.5, 0.5, 0.0])
    assert not v[1, :3].any()
    assert np.isfinite(v).all()
    assert v[0, 3 + AUX_FEATURES.index("exptime_known")] == 1.0


def test_unknown_exptime_is_flagged_not_read_as_a_measurement():
    """An archive catalog without EXPTIME: filled and flagged, never NaN into the network."""
    v = hit_vector(np.array([[2, 2, 0]] * 2), [8, 8], [np.nan, 100.0], [0.5, 0.5])
    assert np.isfinite(v).all()
    i = 3 + AUX_FEATURES.index("exptime_known")
    assert v[0, i] == 0.0 and v[1, i] == 1.0
    j = 3 + AUX_FEATURES.index("log_exptime")
    assert v[0, j] == pytest.approx(v[1, j])  # filled with 100 s


def test_source_density_not_count_so_ccd_size_does_not_matter():
    quarter = hit_vector(np.array([[300, 100]]), [450], [100.0], [2.36])
    full = hit_vector(np.array([[1200, 400]]), [1800], [100.0], [9.45])
    np.testing.assert_allclose(quarter, full, atol=2e-3)


def _sources(
    n,
    rng,
    width,
    height,
    elongation=1.1,
    radius=2.0,
    sky=500.0,
    gradient=0.0,
    theta=None,
    major_scatter=0.0,
):
    """A fake catalog; ``theta`` None: random orientations, else all within 5 degrees of it;
    ``major_scatter``: lognormal scatter of the major axis (a trail broken into pieces)."""
    x = rng.uniform(1, width, n)
    minor = rng.normal(0.6 * radius, 0.03, n)
    major = minor * elongation * np.exp(rng.normal(0.0, major_scatter, n))
    angle = rng.uniform(-90, 90, n) if theta is None else rng.normal(theta, 5.0, n)
    flux = rng.pareto(1.5, n) + 1
    return {
        "X_IMAGE": x,
        "Y_IMAGE": rng.uniform(1, height, n),
        "ISO0": 5.0 * flux**0.5 * rng.uniform(0.9, 1.1, n),  # a footprint grows with flux
        "ELONGATION": rng.normal(elongation, 0.02, n),
        "ELLIPTICITY": np.full(n, 0.05),
        "CLASS_STAR": np.full(n, 3e-4),
        "FLAGS": rng.choice([0, 2], n),
        "FLUX": flux,
        "FLUX_RADIUS": rng.normal(radius, 0.05, n),
        "A_IMAGE": major,
        "B_IMAGE": minor,
        "THETA_IMAGE": angle,
        "BACKGROUND": sky * (1 + gradient * x / width),
    }


def test_ccd_summary_is_the_same_on_quarter_and_full_size_ccds():
    rng = np.random.default_rng(3)
    quarter = ccd_summary(_sources(500, rng, 1024, 2306), 100.0, 1024, 2306)
    full = ccd_summary(_sources(2000, rng, 2048, 4612), 100.0, 2048, 4612)
    assert quarter.shape == (len(SUMMARY_FEATURES),)
    # theta_alignment of random orientations is noise ~ 1/sqrt(n): small on both, not equal
    t = SUMMARY_FEATURES.index("theta_alignment")
    assert quarter[t] < 0.25 and full[t] < 0.25  # 125 and 500 sources in the brightest quarter
    keep = np.arange(len(SUMMARY_FEATURES)) != t
    np.testing.assert_allclose(quarter[keep], full[keep], atol=0.02)
    assert quarter[SUMMARY_FEATURES.index("log_sky_rate")] == pytest.approx(np.log10(5.0))


def test_ccd_summary_sees_size_trails_and_sky_gradients():
    rng = np.random.default_rng(4)
    good = ccd_summary(_sources(400, rng, 1024, 2306), 60.0, 1024, 2306)
    fat = ccd_summary(_sources(400, rng, 1024, 2306, radius=4.0), 60.0, 1024, 2306)
    trailed = ccd_summary(_sources(400, rng, 1024, 2306, elongation=2.0), 60.0, 1024, 2306)
    sky = ccd_summary(_sources(400, rng, 1024, 2306, gradient=1.0), 60.0, 1024, 2306)
    i = SUMMARY_FEATURES.index
    assert fat[i("log_flux_radius")] > good[i("log_flux_radius")] + 0.25
    assert trailed[i("log_elongation")] > good[i("log_elongation")] + 0.2
    assert trailed[i("log_extent_p90")] > good[i("log_extent_p90")] + 0.2
    assert sky[i("sky_spread_dex")] > good[i("sky_spread_dex")] + 0.15
    assert sky[i("log_sky_spread_adu")] > good[i("log_sky_spread_adu")] + 0.5


def test_a_subtracted_sky_level_leaves_the_adu_spread_but_not_the_ratios():
    """A catalog extracted after the sky level was subtracted keeps a gradient in ADU
    (docs/model.md item 22); the ratio statistics read noise around 0 instead."""
    kept = _sources(400, np.random.default_rng(5), 1024, 2306, gradient=1.0)
    subtracted = dict(kept, BACKGROUND=kept["BACKGROUND"] - 750.0)  # 500..1000 -> -250..250
    i = SUMMARY_FEATURES.index
    a, b = (ccd_summary(t, 60.0, 1024, 2306) for t in (kept, subtracted))
    assert b[i("log_sky_spread_adu")] == pytest.approx(a[i("log_sky_spread_adu")])
    assert b[i("log_sky_spread_adu")] > 2.3  # p90 - p10: a few hundred ADU
    assert b[i("log_sky_rate")] < a[i("log_sky_rate")] - 0.5


def test_ccd_summary_tells_a_linear_trail_from_an_erratic_one():
    """BT: every star the same stroke, one way; RBT: pieces of unequal length, less aligned."""
    rng = np.random.default_rng(6)
    good = ccd_summary(_sources(400, rng, 1024, 2306), 60.0, 1024, 2306)
    linear = ccd_summary(
        _sources(400, rng, 1024, 2306, elongation=2.0, theta=30.0), 60.0, 1024, 2306
    )
    erratic = ccd_summary(
        _sources(400, rng, 1024, 2306, elongation=2.0, major_scatter=0.5), 60.0, 1024, 2306
    )
    i = SUMMARY_FEATURES.index
    assert linear[i("theta_alignment")] > 0.95 and good[i("theta_alignment")] < 0.2
    assert linear[i("theta_alignment")] > erratic[i("theta_alignment")] + 0.5
    assert erratic[i("log_major_spread")] > linear[i("log_major_spread")] + 0.2
    assert linear[i("log_major_over_radius")] > good[i("log_major_over_radius")] + 0.2


def test_ccd_summary_sees_doubled_images_that_no_shape_statistic_sees():
    """A mount that jumped draws every star twice, each image round: twin_fraction ~0.5 on the
    doubled CCD, ~0 on a single image of the same sky, on positions alone."""
    rng = np.random.default_rng(8)
    once = _sources(400, rng, 1024, 2306)
    twice = {k: np.r_[v, v] for k, v in once.items()}
    twice["X_IMAGE"] = np.r_[once["X_IMAGE"], once["X_IMAGE"] + 41.0]
    twice["Y_IMAGE"] = np.r_[once["Y_IMAGE"], once["Y_IMAGE"] - 17.0]
    twice["FLUX"] = np.r_[once["FLUX"], 0.7 * once["FLUX"]]
    i = SUMMARY_FEATURES.index
    single, doubled = ccd_summary(once, 60.0, 1024, 2306), ccd_summary(twice, 60.0, 1024, 2306)
    assert single[i("twin_fraction")] < 0.03
    assert doubled[i("twin_fraction")] > 0.3  # a twin of 0.7x the flux may miss the 300
    assert doubled[i("log_elongation")] == pytest.approx(single[i("log_elongation")], abs=0.02)
    few = {k: v[:15] for k, v in twice.items()}  # under TWIN_MIN_SOURCES measured: unmeasured
    assert np.isnan(ccd_summary(few, 60.0, 1024, 2306)[i("twin_fraction")])


def test_ccd_summary_without_optional_columns_or_sources():
    rng = np.random.default_rng(5)
    t = _sources(200, rng, 100, 100)
    t["FLUX"] = np.full(200, np.nan)  # a catalog without FLUX: brightness by ISO0
    for name in ("FLUX_RADIUS", "A_IMAGE", "B_IMAGE", "THETA_IMAGE"):  # optional columns
        t[name] = np.full(200, np.nan)
    s = ccd_summary(t, 30.0, 100, 100)
    missing = [
        SUMMARY_FEATURES.index(n)
        for n in (
            "log_flux_radius",
            "log_extent_p90",
            "log_major_spread",
            "log_radius_spread",
            "log_major_over_radius",
            "theta_alignment",
        )
    ]
    assert np.isnan(s[missing]).all()
    assert np.isfinite(np.delete(s, missing)).all()
    t["FLAGS"] = np.full(200, 16)  # nothing clean
    assert np.isnan(ccd_summary(t, 30.0, 100, 100)).all()
    # missing statistics enter the network at their fill values, like no summary at all
    v = hit_vector(np.array([[3, 1]]), [4], [30.0], [0.01], stack_summaries([s]))
    filled = hit_vector(
        np.array([[3, 1]]), [4], [30.0], [0.01], np.where(np.isnan(s), SUMMARY_FILL, s)[None]
    )
    # ... and the network is told the shape statistics were not measured
    flag = 2 + AUX_FEATURES.index("shapes_measured")
    assert v[0, flag] == 0.0 and filled[0, flag] == 1.0
    np.testing.assert_array_equal(np.delete(v, flag, 1), np.delete(filled, flag, 1))
    assert np.isfinite(hit_vector(np.array([[3, 1]]), [4], [30.0], [0.01], None)).all()


def test_forward_shapes_and_probabilities(bundle):
    image, vector = batch(3)
    p = predict_proba(bundle.cnn, image, vector, np.ones(3))
    assert p.shape == (3, len(CLASSES))
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)


def test_catalog_mode_ignores_the_image(bundle):
    image, vector = batch(2)
    a = predict_proba(bundle.cnn, image, vector, np.zeros(2))
    b = predict_proba(bundle.cnn, np.zeros_like(image), vector, np.zeros(2))
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_modality_dropout_only_in_training():
    net = DualInputNet(CnnShape(tile=16), modality_dropout=0.5)
    image, vector = batch(64)
    net.eval()
    with torch.no_grad():
        x = [torch.as_tensor(image), torch.as_tensor(vector), torch.ones(64)]
        assert torch.equal(net(*x), net(*x))
    with pytest.raises(ValueError, match="modality_dropout"):
        DualInputNet(modality_dropout=1.0)


def test_bundle_round_trip(bundle, tmp_path):
    path = bundle.save(tmp_path / "b", metrics={"accuracy": 0.5})
    back = load_bundle(path)
    assert back.version == "test-1" and back.manifest["metrics"] == {"accuracy": 0.5}
    assert back.tile == 16
    image, vector = batch(4)
    np.testing.assert_array_equal(
        predict_proba(bundle.cnn, image, vector, np.ones(4)),
        predict_proba(back.cnn, image, vector, np.ones(4)),
    )
    np.testing.assert_array_equal(back.som.codebook, bundle.som.codebook)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(classes=["GOOD", "BAD"]), "classes is"),
        (lambda m: m["som"].update(features=["X"]), "som.features is"),
        (lambda m: m["cnn"]["shape"].update(n_clusters=12), "cnn.shape.n_clusters is 12"),
        (lambda m: m.update(format="other/9"), "format is 'other/9'"),
        # Inputs named but a shape of other inputs: the weights could not read them.
        (
            lambda m: m["cnn"].update(aux_features=list(AUX_FEATURES[:3])),
            f"cnn.shape.n_aux is {len(AUX_FEATURES)}, this code needs 3",
        ),
        # An input this code does not compute, one named twice, no list at all.
        (
            lambda m: m["cnn"].update(aux_features=[*AUX_FEATURES[:-1], "moon_phase"]),
            "names 'moon_phase', which this code does not compute",
        ),
        (
            lambda m: m["cnn"].update(aux_features=[*AUX_FEATURES[:-1], AUX_FEATURES[0]]),
            f"names '{AUX_FEATURES[0]}' twice",
        ),
        (lambda m: m["cnn"].update(aux_features="all"), "cnn.aux_features is 'all'"),
    ],
)
def test_mismatched_manifest_is_refused(bundle, tmp_path, edit, message):
    path = bundle.save(tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        load_bundle(path)


def test_a_bundle_trained_before_a_statistic_existed_loads_and_reads_its_own_inputs(
    bundle, tmp_path
):
    """A bundle names its inputs: one trained without ``twin_fraction`` (the shipped one) loads
    under code that computes it, and its network is handed exactly the columns it knows, in its
    order, whatever this code appends."""
    older = [a for a in AUX_FEATURES if a != "twin_fraction"][::-1]  # another order, too
    shape = CnnShape(tile=16, n_aux=len(older))
    torch.manual_seed(2)
    old = ModelBundle(bundle.som, DualInputNet(shape), {"cnn": {"aux_features": older}})
    back = load_bundle(old.save(tmp_path / "old"))
    assert back.aux_features == tuple(older)
    image, vector = batch(4)
    assert vector.shape[1] == SMALL.n_clusters + len(AUX_FEATURES)
    picked = back.select_inputs(vector)
    assert picked.shape == (4, shape.n_clusters + len(older))
    for k, name in enumerate(older):
        np.testing.assert_array_equal(
            picked[:, shape.n_clusters + k], vector[:, SMALL.n_clusters + AUX_FEATURES.index(name)]
        )
    np.testing.assert_array_equal(picked[:, : shape.n_clusters], vector[:, : SMALL.n_clusters])
    np.testing.assert_array_equal(
        predict_proba(back.cnn, image, picked, np.ones(4)),
        predict_proba(old.cnn, image, picked, np.ones(4)),
    )
    # a bundle of this code's inputs reads every column, in this code's order
    np.testing.assert_array_equal(
        load_bundle(bundle.save(tmp_path / "new")).select_inputs(vector), vector
    )


def test_missing_bundle_and_pickled_weights_are_refused(bundle, tmp_path):
    with pytest.raises(BundleError, match="not a model bundle"):
        read_manifest(tmp_path)
    path = bundle.save(tmp_path / "b")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, path / "cnn.pt")
    with pytest.raises(BundleError, match="cannot load model bundle"):
        load_bundle(path)


# --------------------------------------------------------------------------- ensembles


def constant_member(probs):
    """A network whose output is ``log(probs)`` whatever the input."""
    net = DualInputNet(SMALL)
    with torch.no_grad():
        net.head[3].weight.zero_()
        net.head[3].bias.copy_(torch.log(torch.as_tensor(probs, dtype=torch.float32)))
    return net


def test_ensemble_takes_the_normalised_geometric_mean_of_its_members():
    a = [0.7, 0.1, 0.1, 0.05, 0.05]
    b = [0.1, 0.5, 0.1, 0.1, 0.2]
    c = [0.2, 0.2, 0.2, 0.2, 0.2]
    net = EnsembleNet([constant_member(a), constant_member(b), constant_member(c)])
    image, vector = batch(2)
    p = predict_proba(net, image, vector, np.ones(2))
    # by hand: (0.7*0.1*0.2)^(1/3) = 0.2410, (0.1*0.5*0.2)^(1/3) = 0.2154, ...
    geo = np.cbrt(np.prod([a, b, c], axis=0))
    np.testing.assert_allclose(geo[:2], [0.2410, 0.2154], atol=1e-4)
    np.testing.assert_allclose(p, np.tile(geo / geo.sum(), (2, 1)), rtol=1e-5)
    assert p[0].argmax() == CLASSES.index("GOOD")
    # one member: its own probabilities
    np.testing.assert_allclose(
        predict_proba(EnsembleNet([constant_member(b)]), image, vector, np.ones(2))[0], b, rtol=1e-5
    )


def test_fused_ensemble_scores_like_its_members_one_by_one():
    torch.manual_seed(3)
    net = EnsembleNet.empty(SMALL, 4).eval()
    image, vector = batch(6)
    present = np.array([1, 0, 1, 1, 0, 1], np.float32)
    each = np.mean([np.log(predict_proba(m, image, vector, present)) for m in net.members], 0)
    geo = np.exp(each) / np.exp(each).sum(1, keepdims=True)
    np.testing.assert_allclose(predict_proba(net, image, vector, present), geo, atol=1e-6)
    one = EnsembleNet(net.members[:1]).eval()
    np.testing.assert_allclose(
        predict_proba(one, image, vector, present),
        predict_proba(net.members[0], image, vector, present),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="at least one"):
        EnsembleNet([])
    with pytest.raises(ValueError, match="share one CnnShape"):
        EnsembleNet([DualInputNet(SMALL), DualInputNet(CnnShape(tile=8))])


@pytest.fixture(scope="module")
def ensemble_bundle(bundle):
    torch.manual_seed(1)
    return ModelBundle(bundle.som, EnsembleNet.empty(SMALL, 3), {"version": "test-ens"})


def test_ensemble_bundle_round_trip(ensemble_bundle, tmp_path):
    path = ensemble_bundle.save(tmp_path / "b")
    manifest = read_manifest(path)
    assert manifest["cnn"]["members"] == 3 and manifest["cnn"]["combine"] == "mean-log-probability"
    back = load_bundle(path)
    assert back.n_members == 3
    image, vector = batch(4)
    np.testing.assert_array_equal(
        predict_proba(ensemble_bundle.cnn, image, vector, np.ones(4)),
        predict_proba(back.cnn, image, vector, np.ones(4)),
    )
    # a single network is stored as a one-member ensemble
    assert (
        load_bundle(ModelBundle(back.som, back.cnn.members[0]).save(tmp_path / "one")).n_members
        == 1
    )


@pytest.mark.parametrize(
    ("members", "message"), [(2, "cnn.members is 2 but"), (5, "holds 3 networks")]
)
def test_member_count_mismatch_is_refused(ensemble_bundle, tmp_path, members, message):
    path = ensemble_bundle.save(tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["cnn"]["members"] = members
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        load_bundle(path)


@pytest.mark.parametrize("members", [0, "3", None, True])
def test_invalid_member_count_is_refused(ensemble_bundle, tmp_path, members):
    path = ensemble_bundle.save(tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["cnn"]["members"] = members
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="cnn.members is .*an integer >= 1"):
        load_bundle(path)


def test_single_network_bundle_of_format_1_loads_as_one_member(bundle, tmp_path):
    path = bundle.save(tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format"] = "skygrade-bundle/1"
    for key in ("members", "combine"):
        del manifest["cnn"][key]
    (path / "manifest.json").write_text(json.dumps(manifest))
    net = bundle.cnn.members[0]
    torch.save(net.state_dict(), path / "cnn.pt")  # the old layout: a plain network
    back = load_bundle(path)
    assert back.n_members == 1
    image, vector = batch(3)
    np.testing.assert_allclose(
        predict_proba(net, image, vector, np.ones(3)),
        predict_proba(back.cnn, image, vector, np.ones(3)),
        atol=1e-6,
    )
