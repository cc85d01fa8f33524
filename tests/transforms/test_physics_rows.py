"""The physical measurements reach the exposure and CCD rows, the reason, alike from the Beam
stage and from the CCD pool (issue 22 item 5)."""

import dataclasses
import math
from datetime import UTC, datetime

import numpy as np
import pytest

from skygrade.ops.config import Config
from skygrade.streamer.pipelines import run_grade
from skygrade.streamer.sky_context import _context, _fwhm_at
from skygrade.streamer.sky_fits import write_exposure
from skygrade.streamer.sky_plan import FILTERS, ExposurePlan, Geometry, _ccd_origin
from skygrade.transforms.grade import CcdScore, grade_exposure
from skygrade.transforms.grades_dataset import CCD_SCHEMA, EXPOSURE_SCHEMA, GradesDataset
from skygrade.transforms.psf_measure import CcdPhysics

GEO = Geometry(2, 1024, 2048)
COLUMNS = (
    "seeing_arcsec",
    "seeing_minor_arcsec",
    "seeing_zenith_arcsec",
    "n_psf_stars",
    "psf_ellipticity",
    "psf_pa_deg",
    "sky_adu_s",
    "sky_mag_arcsec2",
    "source_count_ratio",
    "seeing_method",
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_bundle):
    return tiny_bundle(tmp_path_factory.mktemp("bundle") / "b", "phys-1")


@pytest.fixture(scope="module")
def exposure(tmp_path_factory):
    plan = ExposurePlan(
        expnum=2_100_001,
        label="GOOD",
        night="2026-11-24",
        date_obs=datetime(2026, 11, 25, 8, tzinfo=UTC),
        exptime=300.0,
        filter="r.MP9601",
        object="TEST",
        airmass=1.4,
        seed=21,
        seeing=1.1,
        beta=3.0,
        psf_ellip=0.0,
        trail_mode="none",
    )
    root = tmp_path_factory.mktemp("drop") / "2026-11-24"
    return plan, str(write_exposure(plan, GEO, root / plan.filename))


def _truth(plan, ccd):
    ctx = _context(plan, GEO)
    x0, y0 = _ccd_origin(GEO, ccd)
    (xc, yc), r = ctx.fp_centre, ctx.fp_radius
    return _fwhm_at(ctx, (x0 + GEO.width / 2 - xc) / r, (y0 + GEO.height / 2 - yc) / r) * 0.187


@pytest.mark.parametrize("ccd_workers", [0, 1])
def test_rows_carry_seeing_sky_and_airmass(bundle, exposure, tmp_path, ccd_workers):
    plan, path = exposure
    (row,) = run_grade([path], tmp_path, bundle, Config(), ccd_workers=ccd_workers)
    assert row["status"] == "graded"
    truths = [_truth(plan, c) for c in range(GEO.n_ccd)]
    assert row["seeing_arcsec"] == pytest.approx(float(np.median(truths)), rel=0.05)
    assert row["seeing_zenith_arcsec"] == pytest.approx(row["seeing_arcsec"] * 1.4**-0.6)
    assert row["airmass"] == pytest.approx(1.4)
    assert row["seeing_method"] == "moffat_fit"
    assert row["n_psf_stars"] >= 2 * 3
    assert row["sky_adu_s"] > 0 and 15 < row["sky_mag_arcsec2"] < 25
    assert row["source_count_ratio"] > 0
    expected = (
        f'seeing {row["seeing_arcsec"]:.2f}" ({row["seeing_zenith_arcsec"]:.2f}" at zenith, '
        f"{row['n_psf_stars']} stars)"
    )
    assert expected in row["reason"]
    # the dataset has them, per exposure and per CCD
    table = GradesDataset(tmp_path).read().to_pylist()
    assert table[0]["seeing_arcsec"] == pytest.approx(row["seeing_arcsec"])
    ccds = sorted(GradesDataset(tmp_path).read("ccds").to_pylist(), key=lambda r: r["ccd"])
    assert [c["ccd"] for c in ccds] == [0, 1]
    for c, truth in zip(ccds, truths, strict=True):
        assert c["seeing_arcsec"] == pytest.approx(truth, rel=0.05)
        assert c["n_psf_stars"] >= 3
        assert c["sky_mag_arcsec2"] == pytest.approx(row["sky_mag_arcsec2"], abs=0.2)
    assert sum(c["n_psf_stars"] for c in ccds) == row["n_psf_stars"]


def test_the_beam_stage_and_the_pool_measure_the_same(bundle, exposure, tmp_path):
    _, path = exposure
    (spread,) = run_grade([path], tmp_path / "a", bundle, Config())
    (pooled,) = run_grade([path], tmp_path / "b", bundle, Config(), ccd_workers=1)
    for name in (*COLUMNS, "airmass"):
        assert spread[name] == pooled[name], name


def test_schemas_name_their_units():
    for schema in (EXPOSURE_SCHEMA, CCD_SCHEMA):
        for name in COLUMNS:
            assert name in schema.names
    assert "airmass" in EXPOSURE_SCHEMA.names


def test_reason_without_stars_has_no_seeing_and_physics_never_change_the_grade():
    probs = np.array([0.6, 0.1, 0.1, 0.1, 0.1])
    plain = [CcdScore("1", c, probs, n_sources=10) for c in range(3)]
    measured = [
        dataclasses.replace(
            s, physics=CcdPhysics(seeing_arcsec=2.5, n_stars=7, method="moffat_fit")
        )
        for s in plain
    ]
    a = grade_exposure("1", 3, plain, airmass=1.2)
    b = grade_exposure("1", 3, measured, airmass=1.2)
    assert (a.grade, a.confidence) == (b.grade, b.confidence)
    assert "seeing" not in a.reason and math.isnan(a.physics.seeing_arcsec)
    assert a.physics.airmass == 1.2
    assert 'seeing 2.50" (' in b.reason and "21 stars" in b.reason
    # a CCD without probabilities (no clean source) still gives its sky
    unscored = CcdScore(
        "1", 3, None, reason="no_clean_sources: x", physics=CcdPhysics(sky_mag_arcsec2=19.0)
    )
    c = grade_exposure("1", 4, [*plain, unscored])
    assert c.physics.sky_mag_arcsec2 == 19.0


def test_photzp_and_the_bias_level_come_from_the_headers(exposure, tmp_path):
    from astropy.io import fits

    from skygrade.transforms.ccd_pixels import read_ccd
    from skygrade.transforms.exposure import read_meta

    _, path = exposure
    assert read_meta(path).photzp is None
    with fits.open(path) as hdul:
        biaslvl = hdul[1].header["BIASLVL"]
    assert read_ccd(path, 0).bias == pytest.approx(biaslvl)
    primary = fits.PrimaryHDU()
    primary.header.update(EXPNUM=2100002, EXPTIME=60.0, PHOTZP=26.05, NEXTEND=1)
    primary.header["DATE-OBS"] = "2026-11-25T08:00:00"
    ccd = fits.ImageHDU(np.full((64, 64), 1000, np.uint16), name="ccd00")
    other = tmp_path / "2100002o.fits"
    fits.HDUList([primary, ccd]).writeto(other)
    assert read_meta(other).photzp == pytest.approx(26.05)
    assert read_ccd(other, 0).bias is None  # processed data: no pedestal to take off


def test_catalog_backend_reports_what_a_catalog_allows(exposure, tmp_path):
    """A FITS_1.0 catalog (no pixels): seeing from FLUX_RADIUS, said so; sky, PHOTZP, airmass."""
    from astropy.io import fits

    from skygrade.ops.config import ExtractConfig
    from skygrade.transforms.catalog_files import CatalogBackend
    from skygrade.transforms.extract import FEATURE_COLUMNS, sep_features
    from skygrade.transforms.psf_measure import with_physics

    plan, path = exposure
    primary = fits.PrimaryHDU()
    primary.header.update(EXPTIME=plan.exptime, FILTER=plan.filter, AIRMASS=1.4, PHOTZP=26.3)
    primary.header["DATE-OBS"] = "2026-11-25T08:00:00"
    tables = []
    with fits.open(path) as hdul:
        for ccd in range(GEO.n_ccd):
            hdu = hdul[ccd + 1]
            table = sep_features(hdu.data.astype(np.float32), hdu.header["SATURATE"])
            cols = [fits.Column(name=c, format="E", array=table[c]) for c in FEATURE_COLUMNS]
            tables.append(fits.BinTableHDU.from_columns(cols, name="OBJECTS"))
    catalog = tmp_path / "2100001p.cat"
    fits.HDUList([primary, *tables]).writeto(catalog)
    backend = CatalogBackend(ExtractConfig())
    meta = backend.open(str(catalog))
    assert meta.photzp == pytest.approx(26.3)
    features = with_physics(backend.features(meta, 0), meta, ExtractConfig())
    phys = features.physics
    assert phys.method == "catalog_flux_radius"
    assert phys.n_stars >= 3
    # 2 x FLUX_RADIUS: exact for a Gaussian, high for the Moffat (beta 3) of the simulator
    assert 1.05 < phys.seeing_arcsec / _truth(plan, 0) < 1.5
    assert phys.seeing_zenith_arcsec == pytest.approx(phys.seeing_arcsec * 1.4**-0.6)
    assert phys.zero_point == pytest.approx(26.3)
    # the catalog's BACKGROUND still holds the bias (no BIASLVL in a catalog): sky reads high
    truth_sky = FILTERS[plan.filter].sky_rate
    assert phys.sky_adu_s > truth_sky
