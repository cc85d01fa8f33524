import numpy as np
import pytest

from skygrade.models.mosaic import split_tiles, tile_grid
from skygrade.models.som import MIN_ISOLATED, SOM_FEATURES, interior_mask, train_som
from skygrade.transforms.extract import CcdFeatures, empty_sources
from skygrade.transforms.representative import (
    ccd_inputs,
    cutout,
    representative_image,
    representative_seed,
    scale_stamp,
)
from skygrade.transforms.som_hits import ccd_hits


def features(n, rng, width=300, height=200, flags=None):
    src = empty_sources()
    src = {k: np.zeros(n, v.dtype) for k, v in src.items()}
    src["X_IMAGE"] = rng.uniform(1, width, n).astype(np.float32)
    src["Y_IMAGE"] = rng.uniform(1, height, n).astype(np.float32)
    src["ISO0"] = rng.integers(5, 100, n).astype(np.int32)
    src["ELONGATION"] = rng.uniform(1, 3, n).astype(np.float32)
    src["ELLIPTICITY"] = 1 - 1 / src["ELONGATION"]
    src["CLASS_STAR"] = rng.uniform(0, 1, n).astype(np.float32)
    src["BACKGROUND"] = np.full(n, 500, np.float32)
    if flags is not None:
        src["FLAGS"] = np.asarray(flags, np.int32)
    return src


@pytest.fixture(scope="module")
def som():
    rows = np.random.default_rng(0).normal(size=(5000, len(SOM_FEATURES))).astype(np.float32)
    return train_som(rows, grid=(6, 6), iterations=2000, n_clusters=20, seed=0)


def test_tile_grid():
    assert tile_grid(20) == (4, 5)
    assert tile_grid(16) == (4, 4)
    assert tile_grid(7) == (2, 4)


def test_split_tiles_inverts_the_mosaic():
    tiles = np.arange(20 * 4 * 4, dtype=np.float32).reshape(1, 20, 4, 4)
    mosaic = np.zeros((1, 16, 20), np.float32)
    for k in range(20):
        r, c = divmod(k, 5)
        mosaic[0, r * 4 : (r + 1) * 4, c * 4 : (c + 1) * 4] = tiles[0, k]
    np.testing.assert_array_equal(split_tiles(mosaic, 20, 4), tiles)
    with pytest.raises(ValueError, match="does not match"):
        split_tiles(mosaic, 20, 5)


def test_cutout_centre_and_padding():
    img = np.arange(100 * 80, dtype=np.float32).reshape(100, 80)
    stamp, padded = cutout(img, 40, 50, 8)
    assert not padded
    assert stamp[4, 4] == img[50, 40]
    edge, padded = cutout(img, 1, 1, 8)
    assert padded
    assert edge[4, 4] == img[1, 1] and edge[0, 0] == 0


def test_scale_stamp_robust():
    rng = np.random.default_rng(0)
    stamp = rng.normal(1000, 5, (32, 32)).astype(np.float32)
    stamp[16, 16] += 5000
    out = scale_stamp(stamp)
    assert out[16, 16] == pytest.approx(1.0)  # the central source peaks at 1
    assert abs(float(np.median(out))) < 0.01  # local sky removed
    assert not scale_stamp(np.zeros((8, 8), np.float32)).any()


def test_cutout_centres_are_the_chosen_sources():
    # A synthetic image: each source is a unique bright pixel value; the tile centre must hold it.
    rng = np.random.default_rng(1)
    img = np.zeros((200, 300), np.float32)
    n = 60
    gx, gy = np.meshgrid(np.arange(10, 300, 24), np.arange(10, 200, 24))
    x, y = gx.ravel()[:n].astype(float), gy.ravel()[:n].astype(float)
    img[y.astype(int), x.astype(int)] = 100 + np.arange(n)
    labels = (np.arange(n) % 20).astype(np.int16)
    rep = representative_image(img, x, y, labels, np.arange(n), 20, 16, rng)
    assert rep.image.shape == (64, 80)
    for k, src in enumerate(rep.chosen):
        assert labels[src] == k
        r, c = divmod(k, 5)
        tile = rep.image[r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16]
        assert tile[8, 8] == 1.0  # the chosen source sits at the tile centre, scaled to 1
        assert np.count_nonzero(tile) == 1


def test_reproducible_empty_clusters_and_edges():
    img = np.random.default_rng(0).normal(0, 1, (100, 100)).astype(np.float32)
    x = np.array([1.0, 50.0, 52.0, 98.0])
    y = np.array([1.0, 50.0, 52.0, 98.0])
    labels = np.array([0, 1, 1, 2], np.int16)
    a = representative_image(img, x, y, labels, np.arange(4), 20, 16, representative_seed("e", 3))
    b = representative_image(img, x, y, labels, np.arange(4), 20, 16, representative_seed("e", 3))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.chosen, b.chosen)
    assert list(a.chosen[3:]) == [-1] * 17  # empty clusters
    assert not a.image[16:, :].any()  # blank tiles (rows 2-4 hold clusters 5..19)
    assert a.padded[0] and a.padded[2] and not a.padded[1]  # edge sources flagged


def test_edge_source_avoided_when_cluster_has_another():
    img = np.ones((100, 100), np.float32)
    x = np.array([0.0, 50.0])
    y = np.array([0.0, 50.0])
    for seed in range(10):
        rep = representative_image(
            img, x, y, np.zeros(2, np.int16), np.arange(2), 1, 16, np.random.default_rng(seed)
        )
        assert rep.chosen[0] == 1 and not rep.padded[0]


def test_tiny_ccd_smaller_than_cutout():
    img = np.ones((10, 12), np.float32)
    rep = representative_image(
        img,
        np.array([5.0]),
        np.array([5.0]),
        np.zeros(1, np.int16),
        np.arange(1),
        20,
        32,
        np.random.default_rng(0),
    )
    assert rep.image.shape == (128, 160) and rep.padded[0]


def test_ccd_hits_and_inputs(som):
    rng = np.random.default_rng(3)
    flags = rng.choice([0, 2, 4], 300)
    f = CcdFeatures(
        "123",
        4,
        36,
        120.0,
        300,
        200,
        features(300, rng, flags=flags),
        pixels=rng.normal(0, 1, (200, 300)).astype(np.float32),
    )
    h = ccd_hits(f, som)
    # >= 30 isolated sources: the SOM measures those, not deblended pieces (skygrade.models.som)
    inside = interior_mask(f.sources, 300, 200)  # the statistics leave the edges out
    assert not inside.all() and np.sum((flags == 0) & inside) >= MIN_ISOLATED
    assert h.hits.sum() == np.sum((flags == 0) & inside) and h.reason is None
    inputs = ccd_inputs(h, size=16)
    assert inputs.image.shape == (64, 80)
    assert inputs.n_sources == 300 and inputs.n_clean == h.hits.sum()
    assert inputs.blended_fraction == pytest.approx(np.mean(flags == 2))
    assert inputs.area_mpx == pytest.approx(250 * 150 / 1e6)  # the interior, 25 px margins
    again = ccd_inputs(ccd_hits(f, som), size=16)
    np.testing.assert_array_equal(inputs.image, again.image)


def test_a_som_from_before_the_edge_margin_measures_the_whole_ccd(som, tmp_path):
    """A bundle is fed the sources it was trained on: a SOM saved without an edge margin (every
    bundle before it) counts the detections by the edges, a new one leaves them out, and the
    summary statistics and the density follow the SOM."""
    import dataclasses

    from skygrade.models.som import EDGE_MARGIN, SourceSom

    assert som.edge_margin == EDGE_MARGIN
    assert SourceSom.load(som.save(tmp_path / "som.npz")).edge_margin == EDGE_MARGIN
    old = dataclasses.replace(som, meta={k: v for k, v in som.meta.items() if k != "edge_margin"})
    assert SourceSom.load(old.save(tmp_path / "old.npz")).edge_margin == 0
    rng = np.random.default_rng(6)
    src = features(300, rng, flags=np.zeros(300))
    src["X_IMAGE"][:5] = 310.0  # a framed catalog's strip, past the nominal width
    f = CcdFeatures("77", 0, 36, 60.0, 300, 200, src)
    new_hits, old_hits = ccd_hits(f, som), ccd_hits(f, old)
    assert old_hits.hits.sum() == 300
    assert new_hits.hits.sum() == interior_mask(f.sources, 300, 200).sum() < 300
    new, before = ccd_inputs(new_hits, size=16), ccd_inputs(old_hits, size=16)
    assert before.area_mpx == pytest.approx(0.06) and new.area_mpx == pytest.approx(0.0375)
    assert not np.array_equal(new.summary, before.summary, equal_nan=True)


def test_ccd_without_clean_sources_gets_zero_vector_and_reason(som):
    rng = np.random.default_rng(3)
    f = CcdFeatures("9", 0, 36, 60.0, 300, 200, features(5, rng, flags=[4] * 5))
    h = ccd_hits(f, som)
    assert h.hits.sum() == 0 and h.reason.startswith("no_clean_sources")
    outside = features(50, rng, width=3000, height=2000, flags=np.zeros(50))
    outside["X_IMAGE"] += 400.0  # a mosaic's coordinates, not this 300 x 200 CCD's
    h = ccd_hits(CcdFeatures("9", 2, 36, 60.0, 300, 200, outside), som)
    assert h.hits.sum() == 0 and h.reason.startswith("no_interior_sources: all 50 clean")
    assert "25 px" in h.reason and "300x200" in h.reason and "catalog_ccd_shape" in h.reason
    empty = CcdFeatures("9", 1, 36, 60.0, 300, 200, empty_sources())
    assert ccd_hits(empty, som).reason.startswith("no_sources")
    assert not ccd_inputs(ccd_hits(empty, som)).image.any()
