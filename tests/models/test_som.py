import numpy as np
import pytest

from skygrade.models.som import (
    EDGE_MARGIN,
    MIN_ISOLATED,
    SOM_FEATURES,
    Scaling,
    SourceSom,
    best_matching_units,
    feature_matrix,
    interior_mask,
    measured_mask,
    train_som,
    ward_clusters,
)
from skygrade.models.summary import ccd_summary

D = len(SOM_FEATURES)


def table(n, rng, flags=None):
    return {
        "X_IMAGE": rng.uniform(129, 384, n),  # inside the edge margin of a 512 x 1152 CCD
        "Y_IMAGE": rng.uniform(129, 1024, n),
        "ISO0": rng.integers(5, 200, n),
        "ELONGATION": rng.uniform(1, 3, n),
        "ELLIPTICITY": rng.uniform(0, 0.6, n),
        "CLASS_STAR": rng.uniform(0, 1, n),
        "BACKGROUND": rng.uniform(100, 2000, n),
        "FLAGS": np.zeros(n, np.int32) if flags is None else np.asarray(flags, np.int32),
    }


def blobs(n_per, centers, rng, spread=0.05):
    return np.concatenate([c + spread * rng.standard_normal((n_per, D)) for c in centers]).astype(
        np.float32
    )


@pytest.fixture(scope="module")
def blob_som():
    rng = np.random.default_rng(1)
    centers = 3.0 * np.eye(D)[:4]
    rows = blobs(2000, centers, rng)
    return train_som(rows, grid=(8, 8), iterations=4000, n_clusters=20, seed=3), centers


def test_feature_matrix_keeps_blended_drops_saturated_truncated():
    rng = np.random.default_rng(0)
    t = table(5, rng, flags=[0, 2, 4, 8, 2 | 16])
    rows, index = feature_matrix(t, width=512, height=1152)
    assert rows.shape == (2, D)
    assert list(index) == [0, 1]
    assert rows.dtype == np.float32
    np.testing.assert_allclose(rows[:, 0], (t["X_IMAGE"][:2] - 1) / 512, rtol=1e-6)
    np.testing.assert_array_equal(rows[:, SOM_FEATURES.index("BLENDED")], [0.0, 1.0])


def test_feature_matrix_validates_inputs():
    t = table(3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="CCD size must be positive, got 0x10"):
        feature_matrix(t, width=0, height=10)


def test_detections_by_the_edges_are_left_out_of_every_statistic():
    """A real archive CCD keeps MegaCam's prescan/overscan strips: thousands of deblended,
    elongated detections where the background bends by the strips (x < 100, x past the width,
    the top rows). Neither the SOM's rows nor the summary statistics may see them."""
    rng = np.random.default_rng(4)
    sky = table(600, rng)
    sky["X_IMAGE"] = rng.uniform(EDGE_MARGIN + 1, 2048 - EDGE_MARGIN, 600)
    sky["Y_IMAGE"] = rng.uniform(EDGE_MARGIN + 1, 4612 - EDGE_MARGIN, 600)
    junk = table(2000, rng, flags=rng.choice([0, 2], 2000))
    junk["X_IMAGE"] = np.r_[
        rng.uniform(33, 100, 700), rng.uniform(2000, 2080, 700), rng.uniform(1, 2112, 600)
    ]
    junk["Y_IMAGE"] = np.r_[rng.uniform(1, 4612, 1400), rng.uniform(4580, 4612, 600)]
    junk["ELONGATION"] = rng.uniform(3, 8, 2000)
    framed = {k: np.r_[sky[k], junk[k]] for k in sky}
    assert not interior_mask(junk, 2048, 4612).any()
    assert interior_mask(sky, 2048, 4612).all()
    np.testing.assert_array_equal(
        feature_matrix(framed, 2048, 4612)[0], feature_matrix(sky, 2048, 4612)[0]
    )
    np.testing.assert_array_equal(  # a statistic of an absent column (FLUX...) is NaN in both
        ccd_summary(framed, 60.0, 2048, 4612), ccd_summary(sky, 60.0, 2048, 4612)
    )


def test_the_edge_margin_is_two_meshes_from_1024_px_up_and_an_eighth_of_a_smaller_ccd():
    for width, height, margin in (
        (2048, 4612, EDGE_MARGIN),
        (1024, 2306, EDGE_MARGIN),
        (512, 1152, 64),
        (64, 64, 8),
    ):
        x = np.arange(1.0, width + 1.0)  # one detection per column, 1-based
        kept = interior_mask({"X_IMAGE": x, "Y_IMAGE": np.full(width, height / 2)}, width, height)
        assert kept.sum() == width - 2 * margin, (width, height)
        assert x[kept].min() == margin + 1 and x[kept].max() == width - margin


def test_few_isolated_sources_fall_back_to_every_clean_one():
    """A trailed CCD under stock deblending: the trails are deblended pieces."""
    t = table(100, np.random.default_rng(0), flags=[0] * (MIN_ISOLATED - 1) + [2] * 71)
    assert measured_mask(t, 512, 1152).sum() == 100
    t["FLAGS"][MIN_ISOLATED - 1] = 0
    assert measured_mask(t, 512, 1152).sum() == MIN_ISOLATED


def test_meaningless_class_star_and_any_sky_give_the_same_rows():
    """Archive catalogs: CLASS_STAR from a wrong SEEING_FWHM, sky kept or subtracted."""
    t = table(30, np.random.default_rng(0))
    other = t | {"CLASS_STAR": np.full(30, 3e-4), "BACKGROUND": np.zeros(30)}
    np.testing.assert_array_equal(
        feature_matrix(t, 512, 1152)[0], feature_matrix(other, 512, 1152)[0]
    )


def test_scaling_is_robust_and_clipped():
    rows = np.random.default_rng(0).normal(5.0, 2.0, (10000, D)).astype(np.float32)
    rows[0] = 1e6
    s = Scaling.fit(rows)
    scaled = s.apply(rows)
    assert abs(float(np.median(scaled[:, 0]))) < 0.05
    assert scaled.max() == 5.0


def test_bmu_matches_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, D)).astype(np.float32)
    w = rng.normal(size=(49, D)).astype(np.float32)
    bmu, dist2 = best_matching_units(x, w, chunk=777)
    brute = ((x[:, None, :] - w[None, :, :]) ** 2).sum(-1)
    np.testing.assert_array_equal(bmu, brute.argmin(1))
    np.testing.assert_allclose(dist2, brute.min(1), rtol=1e-4, atol=1e-4)


def test_ward_separates_blobs_and_is_deterministic():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    pts = np.concatenate([c + rng.normal(0, 0.5, (30, 2)) for c in centers])
    labels = ward_clusters(pts, 3)
    assert sorted(np.unique(labels)) == [0, 1, 2]
    for k in range(3):
        assert len(set(labels[30 * k : 30 * (k + 1)])) == 1
    np.testing.assert_array_equal(labels, ward_clusters(pts, 3))
    with pytest.raises(ValueError, match="n_clusters must be in"):
        ward_clusters(pts, 0)


def test_synthetic_blobs_land_in_different_clusters(blob_som):
    som, centers = blob_som
    rng = np.random.default_rng(9)
    # 20 clusters over 4 blobs: a blob may span several clusters, but no cluster spans two blobs.
    owner = {}
    for k, c in enumerate(centers):
        for label in np.unique(som.cluster_of(blobs(300, [c], rng))):
            assert owner.setdefault(int(label), k) == k, f"cluster {label} mixes blobs"
    assert len(set(owner.values())) == len(centers)
    assert som.n_clusters == 20


def test_hits_sum_to_clean_count(blob_som):
    som, _ = blob_som
    rng = np.random.default_rng(2)
    t = table(400, rng, flags=rng.choice([0, 2, 4], 400))
    rows, index = feature_matrix(t, 512, 1152)
    hits = som.hits(rows)
    assert hits.dtype == np.int32 and hits.shape == (20,)
    # >= MIN_ISOLATED isolated sources: only those are measured (deblended pieces are not).
    assert hits.sum() == len(index) == int(np.sum(t["FLAGS"] == 0))
    assert som.hits(rows[:0]).sum() == 0


def test_same_seed_same_som_and_quality_recorded():
    rng = np.random.default_rng(4)
    rows = rng.normal(size=(3000, D)).astype(np.float32)
    a = train_som(rows, grid=(6, 6), iterations=1500, n_clusters=5, seed=11)
    b = train_som(rows, grid=(6, 6), iterations=1500, n_clusters=5, seed=11)
    c = train_som(rows, grid=(6, 6), iterations=1500, n_clusters=5, seed=12)
    np.testing.assert_array_equal(a.codebook, b.codebook)
    np.testing.assert_array_equal(a.clusters, b.clusters)
    assert not np.array_equal(a.codebook, c.codebook)
    assert a.meta["quantization_error"] > 0
    assert 0 <= a.meta["topographic_error"] <= 1


def test_save_load_round_trip_is_exact(blob_som, tmp_path):
    som, _ = blob_som
    path = som.save(tmp_path / "som.npz")
    back = SourceSom.load(path)
    np.testing.assert_array_equal(back.codebook, som.codebook)
    np.testing.assert_array_equal(back.clusters, som.clusters)
    np.testing.assert_array_equal(back.scaling.center, som.scaling.center)
    np.testing.assert_array_equal(back.scaling.scale, som.scaling.scale)
    assert back.meta == som.meta and (back.rows, back.cols) == (som.rows, som.cols)
    rows = np.random.default_rng(5).normal(size=(1000, D)).astype(np.float32)
    np.testing.assert_array_equal(back.cluster_of(rows), som.cluster_of(rows))


def test_load_refuses_other_features(blob_som, tmp_path):
    som, _ = blob_som
    from dataclasses import replace

    path = replace(som, features=("A",) * D).save(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="trained on features"):
        SourceSom.load(path)


def test_train_validates_inputs():
    with pytest.raises(ValueError, match="rows must have shape"):
        train_som(np.zeros((100, 3)))
    with pytest.raises(ValueError, match="at least 20 sources"):
        train_som(np.zeros((10, D)))
