"""Seeing, PSF shape, sky and source counts (transforms/psf_measure.py) against the truth.

The truth comes from the simulator itself: the FWHM of the PSF it rendered on each CCD
(``skygrade.streamer.sky_context._fwhm_at`` at the CCD's centre: one PSF region per CCD at these
sizes), its Moffat beta, ellipticity and angle, its sky rate. Exposures are small (2 CCDs of
1024x2048, 300 s) so that each CCD has ~10-30 usable stars even at 2" seeing.
"""

import math
from datetime import UTC, datetime
from types import SimpleNamespace

import numpy as np
import pytest

from skygrade.streamer.sky_context import _context, _fields, _fwhm_at
from skygrade.streamer.sky_fits import render_exposure
from skygrade.streamer.sky_plan import FILTERS, PIXEL_SCALE, ExposurePlan, Geometry, _ccd_origin
from skygrade.streamer.sky_render import _regions
from skygrade.transforms import psf_measure as P
from skygrade.transforms.extract import empty_sources, sep_features

GEO = Geometry(2, 1024, 2048)


def _plan(seeing, beta, seed, **kw):
    base = dict(
        expnum=2_000_000 + seed,
        label="GOOD",
        night="2026-01-01",
        date_obs=datetime(2026, 1, 1, 8, tzinfo=UTC),
        exptime=300.0,
        filter="r.MP9601",
        object="TEST",
        airmass=1.3,
        seed=seed,
        seeing=seeing,
        beta=beta,
        psf_ellip=0.0,
        trail_mode="none",
    )
    return ExposurePlan(**(base | kw))


def _truth_fwhm(plan, ccd):
    """FWHM (arcsec) the simulator rendered on CCD ``ccd`` (one PSF region per CCD here)."""
    assert _regions(GEO) == (1, 1)
    ctx = _context(plan, GEO)
    x0, y0 = _ccd_origin(GEO, ccd)
    (xc, yc), r = ctx.fp_centre, ctx.fp_radius
    u, v = (x0 + GEO.width / 2 - xc) / r, (y0 + GEO.height / 2 - yc) / r
    return _fwhm_at(ctx, u, v) * PIXEL_SCALE


def _measure(plan):
    hdul = render_exposure(plan, GEO)
    out = []
    for ccd in range(GEO.n_ccd):
        hdu = hdul[ccd + 1]
        data = hdu.data.astype(np.float32)
        table = sep_features(data, hdu.header["SATURATE"])
        out.append((table, data, hdu.header))
    return out


@pytest.mark.parametrize(
    "seeing, beta",
    [(0.5, 2.0), (0.8, 5.0), (1.2, 3.0), (1.6, 2.5), (2.0, 4.0)],
)
def test_seeing_within_5_percent_of_the_simulated_psf(seeing, beta):
    plan = _plan(seeing, beta, seed=int(seeing * 100 + beta * 10))
    measured, truths = [], []
    for ccd, (table, data, header) in enumerate(_measure(plan)):
        psf = P.measure_psf(table, data, header["SATURATE"])
        truth = _truth_fwhm(plan, ccd)
        assert psf.method == "moffat_fit"
        assert psf.n_stars >= P.MIN_STARS
        assert psf.fwhm * PIXEL_SCALE == pytest.approx(truth, rel=0.05)
        # a round, untrailed PSF: the minor axis is the FWHM too
        assert psf.fwhm_minor * PIXEL_SCALE == pytest.approx(truth, rel=0.05)
        measured.append(P.CcdPhysics(seeing_arcsec=psf.fwhm * PIXEL_SCALE, n_stars=psf.n_stars))
        truths.append(truth)
    exposure = P.exposure_physics(measured, airmass=plan.airmass)
    assert exposure.seeing_arcsec == pytest.approx(float(np.median(truths)), rel=0.05)
    assert exposure.seeing_zenith_arcsec == pytest.approx(
        exposure.seeing_arcsec * plan.airmass**-0.6
    )
    assert exposure.n_stars == sum(c.n_stars for c in measured)


def test_psf_ellipticity_and_angle_of_an_elliptical_psf():
    plan = _plan(0.8, 3.0, seed=11, psf_ellip=0.08, psf_angle=120.0)
    for table, data, header in _measure(plan):
        psf = P.measure_psf(table, data, header["SATURATE"])
        assert psf.ellipticity == pytest.approx(0.08, abs=0.015)
        assert (psf.pa_deg - 120.0 + 90.0) % 180.0 - 90.0 == pytest.approx(0.0, abs=4.0)


def test_a_linear_trail_is_seen_along_its_direction_and_the_minor_axis_stays_closer():
    """Trail of 1.5 FWHM at 60 deg: the equivalent FWHM reads ~30% high, the minor axis ~10%
    (a Moffat integrated along the trail has broader wings across it: not the seeing exactly,
    but 3x closer)."""
    seeing = 0.8
    plan = _plan(
        seeing,
        3.0,
        seed=12,
        trail_mode="linear",
        trail_length=1.5 * seeing / PIXEL_SCALE,
        trail_angle=60.0,
    )
    for ccd, (table, data, header) in enumerate(_measure(plan)):
        psf = P.measure_psf(table, data, header["SATURATE"])
        truth = _truth_fwhm(plan, ccd)
        equivalent = psf.fwhm * PIXEL_SCALE / truth - 1
        minor = psf.fwhm_minor * PIXEL_SCALE / truth - 1
        assert equivalent > 0.2
        assert 0 < minor < 0.15
        assert minor < equivalent / 2
        assert psf.pa_deg == pytest.approx(60.0, abs=3.0)
        assert psf.ellipticity > 0.2


def test_catalog_mode_uses_flux_radius_and_says_so():
    plan = _plan(1.0, 3.0, seed=13)
    table, _, _ = _measure(plan)[0]
    psf = P.measure_psf(table, None, None)
    assert psf.method == "catalog_flux_radius"
    assert psf.n_stars >= P.MIN_STARS
    # 2 x FLUX_RADIUS is exact for a Gaussian; Moffat wings (beta 3) make it read high
    assert 1.0 < psf.fwhm * PIXEL_SCALE / _truth_fwhm(plan, 0) < 1.6
    no_radius = table | {"FLUX_RADIUS": np.full(len(table["FLUX_RADIUS"]), np.nan, np.float32)}
    unmeasured = P.measure_psf(no_radius, None, None)
    assert math.isnan(unmeasured.fwhm) and unmeasured.method == "none"


def test_no_star_gives_nan_not_a_number_from_noise():
    rng = np.random.default_rng(0)
    data = rng.normal(0, 5, (300, 300)).astype(np.float32)
    data[100:102, 100:102] += 400  # one hot spot: a cosmic ray, not a star
    table = sep_features(data.copy() + 100, 65535.0)
    psf = P.measure_psf(table, data, 65535.0)
    assert math.isnan(psf.fwhm) and psf.n_stars < P.MIN_STARS and psf.method == "none"
    assert math.isnan(P.measure_psf(empty_sources(), data, 65535.0).fwhm)


def _cfg(**kw):
    base = dict(
        pixel_scale=PIXEL_SCALE,
        zero_points={"r.MP9601": 26.3, "g": 26.0},
        expected_sources_per_mpx={"r.MP9601": 100.0},
        source_count_exponent=0.5,
    )
    return SimpleNamespace(**(base | kw))


def test_sky_rate_and_brightness_against_the_simulated_sky():
    plan = _plan(0.8, 3.0, seed=14, sky_factor=1.7)
    table, data, header = _measure(plan)[0]
    features = SimpleNamespace(
        sources=table,
        pixels=data,
        exptime=plan.exptime,
        width=GEO.width,
        height=GEO.height,
        saturate=header["SATURATE"],
        bias=header["BIASLVL"],
    )
    meta = SimpleNamespace(filter=plan.filter, airmass=plan.airmass, photzp=None)
    phys = P.ccd_physics(features, meta, _cfg())
    # truth: filter sky rate x sky factor x the field (vignetting) at the CCD's centre
    ctx = _context(plan, GEO)
    x0, y0 = _ccd_origin(GEO, 0)
    (xc, yc), r = ctx.fp_centre, ctx.fp_radius
    u = np.array([(x0 + GEO.width / 2 - xc) / r])
    v = np.array([(y0 + GEO.height / 2 - yc) / r])
    field, _ = _fields(ctx, u, v)
    truth = FILTERS[plan.filter].sky_rate * plan.sky_factor * float(field[0])
    assert phys.sky_adu_s == pytest.approx(truth, rel=0.03)
    mag = 26.3 - 2.5 * math.log10(truth / PIXEL_SCALE**2)
    assert phys.sky_mag_arcsec2 == pytest.approx(mag, abs=0.03)
    assert phys.zero_point == 26.3
    assert phys.seeing_zenith_arcsec == pytest.approx(phys.seeing_arcsec * 1.3**-0.6)
    clean = int(np.sum(table["FLAGS"] == 0))
    expected = 100.0 * (300.0 / 100.0) ** 0.5
    assert phys.source_count_ratio == pytest.approx(
        clean / (GEO.width * GEO.height / 1e6) / expected
    )
    # PHOTZP from the header wins over the table
    with_zp = P.ccd_physics(features, SimpleNamespace(**(vars(meta) | {"photzp": 25.0})), _cfg())
    assert with_zp.zero_point == 25.0
    assert with_zp.sky_mag_arcsec2 == pytest.approx(phys.sky_mag_arcsec2 - 1.3)


def test_zero_point_lookup():
    zps = {"r.MP9601": 26.2, "g": 26.5}
    assert P.zero_point("r.MP9601", zps) == 26.2
    assert P.zero_point("g.MP9402", zps) == 26.5  # by band letter
    assert math.isnan(P.zero_point("Ha.MP7605", zps))
    assert math.isnan(P.zero_point(None, zps))
    assert P.zero_point("Ha.MP7605", zps, photzp=24.1) == 24.1
    assert math.isnan(P.sky_brightness(-1.0, 26.0))


def test_exposure_physics_medians_and_text():
    ccds = [
        P.CcdPhysics(seeing_arcsec=s, n_stars=n, sky_mag_arcsec2=m, method="moffat_fit")
        for s, n, m in [(1.0, 10, 20.0), (1.2, 12, 20.2), (1.4, 15, 20.4)]
    ] + [P.CcdPhysics(sky_mag_arcsec2=20.6)]
    exp = P.exposure_physics(ccds, airmass=1.5)
    assert exp.seeing_arcsec == pytest.approx(1.2)
    assert exp.n_stars == 37
    assert exp.sky_mag_arcsec2 == pytest.approx(20.3)
    text = P.seeing_text(exp)
    assert text == f'seeing 1.20" ({1.2 * 1.5**-0.6:.2f}" at zenith, 37 stars)'
    assert P.seeing_text(P.exposure_physics([], None)) == ""
