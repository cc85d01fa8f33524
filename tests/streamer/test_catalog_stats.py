import numpy as np
import pytest
from astropy.io import fits

from skygrade.streamer.catalog_stats import STATS, ccd_stats, exposure_stats


def _table(elong, iso, flags):
    cols = {
        "ELONGATION": np.asarray(elong, float),
        "ISO0": np.asarray(iso, float),
        "FLAGS": np.asarray(flags, np.int16),
        "BACKGROUND": np.full(len(elong), 80.0),
    }
    return fits.BinTableHDU.from_columns(
        [
            fits.Column(name=k, format="E" if v.dtype.kind == "f" else "I", array=v)
            for k, v in cols.items()
        ]
    ).data


def test_bright_elongation_reads_the_brightest_quarter_of_the_isolated_sources():
    # 120 isolated noise blobs (ISO0 6, elongation 1.8) and 40 round, large stars (ISO0 60):
    # the median over FLAGS == 0 is the blobs', the brightest quarter is the stars'.
    elong = [1.8] * 120 + [1.05] * 40 + [3.0] * 10
    iso = [6] * 120 + [60] * 40 + [200] * 10
    flags = [0] * 160 + [2] * 10  # the deblended pieces are not isolated
    stats = dict(zip(STATS, ccd_stats(_table(elong, iso, flags), None), strict=True))
    assert stats["elong clean"] == np.float32(1.8)
    assert stats["elong bright"] == np.float32(1.05)
    assert stats["FLAGS==0"] == 160 / 170


def test_interior_reads_only_what_the_network_reads(tmp_path):
    """A real archive CCD (no image header: 2048 x 4612) with its frame's edge pieces: with
    --interior the pieces by the edges leave every statistic and the count is per interior."""
    rng = np.random.default_rng(3)
    inside = {"X_IMAGE": rng.uniform(200, 1800, 300), "Y_IMAGE": rng.uniform(200, 4400, 300)}
    edge = {"X_IMAGE": rng.uniform(33, 100, 900), "Y_IMAGE": rng.uniform(1, 4612, 900)}
    cols = {
        "X_IMAGE": np.r_[inside["X_IMAGE"], edge["X_IMAGE"]],
        "Y_IMAGE": np.r_[inside["Y_IMAGE"], edge["Y_IMAGE"]],
        "ELONGATION": np.r_[np.full(300, 1.1), np.full(900, 3.0)],
        "ISO0": np.r_[np.full(300, 30.0), np.full(900, 6.0)],
        "FLAGS": np.r_[np.zeros(300), np.full(900, 2)].astype(np.int16),
        "BACKGROUND": np.r_[np.full(300, 200.0), np.full(900, 20.0)],
    }
    table = fits.BinTableHDU.from_columns(
        [
            fits.Column(name=k, format="E" if v.dtype.kind == "f" else "I", array=v)
            for k, v in cols.items()
        ],
        name="OBJECTS",
    )
    path = tmp_path / "1625583p.fits.ldac"
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path)
    every = dict(zip(STATS, exposure_stats(path), strict=True))
    inner = dict(zip(STATS, exposure_stats(path, interior=True), strict=True))
    assert every["sources/CCD"] == 1200 and every["FLAGS==0"] == 0.25
    assert every["elong all"] == np.float32(3.0) and every["BKG"] == np.float32(20.0)
    assert inner["FLAGS==0"] == 1.0 and inner["elong all"] == np.float32(1.1)
    assert inner["BKG"] == np.float32(200.0)
    assert inner["sources/CCD"] == pytest.approx(300 * 2048 * 4612 / (1792 * 4356))


def test_sky_spread_in_adu_survives_a_subtracted_sky_level():
    # A gradient spanning 1000 ADU over the CCD's sources, its level kept (500..1500) and
    # subtracted (-500..500):
    # the median moves by the level, the spread in ADU does not.
    n = 101
    kept = _table([1.1] * n, [20] * n, [0] * n)
    kept["BACKGROUND"] = np.linspace(500.0, 1500.0, n)
    subtracted = _table([1.1] * n, [20] * n, [0] * n)
    subtracted["BACKGROUND"] = np.linspace(-500.0, 500.0, n)
    a = dict(zip(STATS, ccd_stats(kept, None), strict=True))
    b = dict(zip(STATS, ccd_stats(subtracted, None), strict=True))
    assert a["BKG"] == pytest.approx(1000.0) and b["BKG"] == pytest.approx(0.0, abs=1e-6)
    assert a["BKG spread"] == pytest.approx(np.log10(801.0), rel=1e-4)
    assert b["BKG spread"] == pytest.approx(a["BKG spread"], rel=1e-4)
    flat = dict(zip(STATS, ccd_stats(_table([1.1] * n, [20] * n, [0] * n), None), strict=True))
    assert flat["BKG spread"] == 0.0
