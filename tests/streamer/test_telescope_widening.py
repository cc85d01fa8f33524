"""The simulator's wider sky (issue 20 item 1): Kolmogorov PSFs, scattered-light arcs,
amplifier offsets, astigmatism over the focal plane and tracking jumps, each drawn and each
visible in the pixels."""

from __future__ import annotations

import dataclasses
from unittest import mock

import numpy as np
import sep

from skygrade.models.classes import CLASSES
from skygrade.streamer.sky_context import _context, _fields, _psf_shape_at, _trail_path
from skygrade.streamer.sky_fits import render_exposure
from skygrade.streamer.sky_kernels import _build_kernels, _kolmogorov_profile, _psf_grid
from skygrade.streamer.sky_plan import Geometry, plan_night
from skygrade.streamer.sky_render import _galaxy_templates

TINY = Geometry(2, 256, 320)
NIGHT = "2024-03-01"


def _half_light_over_fwhm(grid: np.ndarray, step: float, fwhm: float) -> float:
    n = grid.shape[0]
    yy, xx = np.indices(grid.shape)
    r = np.hypot(xx - (n - 1) / 2, yy - (n - 1) / 2).ravel() * step
    order = np.argsort(r)
    cum = np.cumsum(grid.ravel()[order])
    return float(r[order][np.searchsorted(cum / cum[-1], 0.5)] / fwhm)


def test_kolmogorov_profile_has_unit_fwhm_and_the_theoretical_half_light_radius():
    radius, prof = _kolmogorov_profile()
    assert prof[0] == 1.0 and np.all(np.diff(prof[:200]) <= 0)
    assert abs(np.interp(0.5, radius, prof) - 0.5) < 1e-3  # half maximum at 0.5 FWHM
    fwhm = 6.0
    grid = _psf_grid(1601, 0.25, fwhm, 3.0, 0.0, 0.0, "kolmogorov")
    # Kolmogorov: half-light radius 0.5548 lambda/r0, FWHM 0.9759 lambda/r0 -> 0.5685 FWHM.
    assert abs(_half_light_over_fwhm(grid, 0.25, fwhm) - 0.5685) < 0.01
    # Its wings fall as r^(-11/3): between 5 and 10 FWHM the slope is close to -11/3.
    r5, r10 = np.interp([5.0, 10.0], radius, prof)
    assert -4.0 < np.log(r10 / r5) / np.log(2.0) < -3.4


def test_elliptical_kolmogorov_has_the_axis_ratio_asked():
    grid = _psf_grid(241, 0.25, 8.0, 3.0, 0.2, 0.0, "kolmogorov")
    row, col = grid[120], grid[:, 120]
    width = [np.count_nonzero(v >= v.max() / 2) for v in (row, col)]
    assert abs(width[1] / width[0] - 0.8) < 0.05  # minor / major = 1 - ellipticity


def test_nights_draw_both_psf_models_and_some_amplifier_offsets():
    plans = plan_night(NIGHT, 80, 3, {c: 1.0 for c in CLASSES})
    models = [p.psf_model for p in plans]
    assert 0.15 < models.count("kolmogorov") / len(plans) < 0.55
    offsets = [p.amp_offset for p in plans]
    assert 0.1 < np.mean([o > 0 for o in offsets]) < 0.5
    assert all(0.0 <= o <= 20.0 for o in offsets)


def test_amplifier_offset_steps_the_bias_between_the_two_halves():
    plan = plan_night(NIGHT, 1, 0, {"GOOD": 1.0})[0]
    flat = dataclasses.replace(plan, amp_offset=0.0)
    stepped = dataclasses.replace(plan, amp_offset=40.0)
    a = np.asarray(render_exposure(flat, TINY)[1].data, dtype=np.float64)
    b = np.asarray(render_exposure(stepped, TINY)[1].data, dtype=np.float64)
    diff = b - a
    left, right = diff[:, : TINY.width // 2], diff[:, TINY.width // 2 :]
    assert np.all(left == 0.0)
    step = float(np.median(right))
    assert abs(step) > 1.0 and np.all(np.abs(right - step) <= 1.0)  # one offset, rounding


def test_scattered_light_arcs_brighten_a_ring_of_the_sky():
    plans = [p for p in plan_night(NIGHT, 60, 5, {"BGP": 1.0}) if p.scatter > 0]
    with_arcs = [p for p in plans if len(_context(p, TINY).arcs)]
    assert with_arcs and len(with_arcs) < len(plans)  # about half of the scattered-light skies
    ctx = _context(with_arcs[0], TINY)
    au, av, rad, width, amp = ctx.arcs[0]
    # Where the ring crosses the mosaic the sky is brighter by about the arc's amplitude.
    t = np.linspace(0.0, 2.0 * np.pi, 2000)
    u, v = au + rad * np.cos(t), av + rad * np.sin(t)
    inside = np.hypot(u, v) < 1.0  # within the field, where vignetting is under 6%
    assert inside.any()
    u, v = u[inside], v[inside]
    sky, _ = _fields(ctx, u, v)
    bare, _ = _fields(dataclasses.replace(ctx, arcs=ctx.arcs[:0]), u, v)
    assert np.all(sky >= bare) and np.min(sky - bare) > 0.9 * amp


def test_brighter_galaxies_take_larger_templates():
    rng = np.random.default_rng(0)
    half_light = np.exp(np.linspace(np.log(0.8), np.log(14.0), 10))
    mag = np.repeat([18.0, 22.0, 25.0], 2000)
    size = half_light[_galaxy_templates(rng, mag, half_light)].reshape(3, -1)
    med = np.median(size, axis=1)
    assert med[0] > 1.8 * med[1] > 1.8 * 1.5 * med[2]  # ~0.1 dex per magnitude
    assert 2.5 < med[1] < 4.0  # ~0.6" (3.2 px) at magnitude 22
    assert np.std(np.log10(size[1])) > 0.08  # with scatter at a given magnitude


def test_astigmatism_grows_as_r_squared_radially_or_tangentially():
    plan = plan_night(NIGHT, 1, 0, {"GOOD": 1.0})[0]
    radial = dataclasses.replace(plan, psf_ellip=0.0, psf_astig=0.06)
    assert _psf_shape_at(radial, 0.0, 0.0)[0] == 0.0
    e, angle = _psf_shape_at(radial, 1.0, 0.0)
    assert abs(e - 0.06) < 1e-9 and abs(angle) < 1e-6  # along the radius
    e, angle = _psf_shape_at(radial, 0.0, 0.5)
    assert abs(e - 0.015) < 1e-9 and abs(angle - 90.0) < 1e-6
    e, angle = _psf_shape_at(dataclasses.replace(radial, psf_astig=-0.06), 1.0, 0.0)
    assert abs(e - 0.06) < 1e-9 and abs(angle - 90.0) < 1e-6  # across it
    # The constant part and the astigmatism add as spin-2 vectors: aligned they sum.
    both = dataclasses.replace(radial, psf_ellip=0.05, psf_angle=0.0)
    assert abs(_psf_shape_at(both, 1.0, 0.0)[0] - 0.11) < 1e-9
    assert abs(_psf_shape_at(both, 0.0, 1.0)[0] - 0.01) < 1e-9  # crossed they cancel
    # And the pixels change with it.
    a = np.asarray(render_exposure(radial, TINY)[1].data, dtype=np.float64)
    b = np.asarray(render_exposure(dataclasses.replace(radial, psf_astig=0.0), TINY)[1].data)
    assert np.abs(a - b).max() > 10.0


def test_nights_draw_astigmatism_and_jumps_only_for_severe_tracking_failures():
    """A jump doubles every star: RBT (random, severe bad tracking), never BT (one direction)."""
    plans = plan_night(NIGHT, 300, 3, {c: 1.0 for c in CLASSES})
    astig = np.array([p.psf_astig for p in plans])
    assert 0.3 < np.mean(astig != 0) < 0.7 and np.all(np.abs(astig) <= 0.06)
    assert (astig > 0).any() and (astig < 0).any()
    severe = [p for p in plans if p.label == "RBT"]
    jumped = [p for p in severe if p.trail_jump > 0]
    assert 0.08 < len(jumped) / len(severe) < 0.45
    assert all(0.2 <= p.trail_jump <= 0.5 for p in jumped)
    assert not any(p.trail_jump for p in plans if p.label != "RBT")


def test_a_jump_on_a_linear_trail_draws_two_images_a_trail_length_apart():
    plan = plan_night(NIGHT, 1, 0, {"BT": 1.0})[0]
    plan = dataclasses.replace(
        plan, trail_mode="linear", trail_length=20.0, trail_angle=0.0, trail_jump=0.4
    )
    fwhm = 4.0
    path = _trail_path(_context(plan, TINY), 0.0, 0.0, fwhm)
    ks = _build_kernels(fwhm, 3.0, 0.0, 0.0, path, np.zeros((0, 4)), "moffat")
    profile = ks.core[(ks.oversample // 2) * (ks.oversample + 1)].sum(axis=0)
    inner = profile[1:-1]
    peaks = np.nonzero((inner > profile[:-2]) & (inner >= profile[2:]))[0] + 1
    peaks = peaks[profile[peaks] > 0.2 * profile.max()]
    assert len(peaks) == 2
    assert abs(np.diff(peaks)[0] - 20.0) <= 1.0
    # Held 60% of the time before the jump, 40% after; the slew between is faint.
    ratio = profile[peaks[0]] / profile[peaks[1]]
    assert 1.3 < ratio < 1.7
    assert profile[peaks[0] + 10] < 0.05 * profile[peaks[1]]


def test_a_jump_in_a_random_walk_displaces_the_rest_of_the_path():
    plan = plan_night(NIGHT, 1, 0, {"RBT": 1.0})[0]
    plan = dataclasses.replace(plan, trail_mode="walk", trail_length=120.0)
    smooth = _context(plan, TINY).walk
    jumped = _context(dataclasses.replace(plan, trail_jump=0.3), TINY).walk
    steps = np.hypot(*np.diff(jumped, axis=0).T)
    assert steps.max() > 0.45 * 120.0 > 10 * np.hypot(*np.diff(smooth, axis=0).T).max()
    assert int(np.argmax(steps)) + 1 == round(len(jumped) * 0.7)


def test_cosmic_rays_are_diffused_tracks_a_5_sigma_unfiltered_extraction_detects():
    import sep

    from skygrade.streamer.sky_render import _add_cosmic_rays

    plan = plan_night("2026-10-01", 1, seed=3, class_mix={"GOOD": 1.0})[0]
    noise = np.random.default_rng(0).normal(0.0, 10.0, (2000, 1000)).astype(np.float32)
    found = {}
    for exptime in (60.0, 600.0):
        image = noise.copy()
        _add_cosmic_rays(
            np.random.default_rng(1), image, dataclasses.replace(plan, exptime=exptime), 1.6
        )
        found[exptime] = sep.extract(
            image, 5.0, err=10.0, minarea=5, filter_kernel=None, deblend_cont=1.0
        )
    # the rate follows the exposure time (a dozen to a few hundred on 2 Mpx)
    assert len(found[60.0]) >= 5 and 6 * len(found[60.0]) < len(found[600.0]) < 600
    long = found[600.0]
    # small and sharp, and a share of them tracks elongated like no PSF
    assert np.median(long["npix"]) < 40
    assert 0.05 < np.mean(long["a"] / long["b"] > 3.0) < 0.6


def test_overcast_bgp_exposures_lose_magnitudes_of_every_source_and_only_bgp_does():
    """Thick, even cloud: 1-3.5 mag off every source, drawn only for BGP; clear classes keep a
    transparency of 0.85 or more."""
    plans = [
        p
        for night in ("2024-03-01", "2024-03-02", "2024-03-03")
        for p in plan_night(night, 60, seed=5, class_mix={c: 1.0 for c in CLASSES})
    ]
    overcast = [p for p in plans if p.transparency < 0.4]
    assert overcast and {p.label for p in overcast} == {"BGP"}
    assert all(p.transparency >= 0.04 and p.cloud_cover == 1.0 for p in overcast)
    assert min(p.transparency for p in plans if p.label != "BGP") >= 0.85
    # every source is fainter by the transparency: most drop under 5 sigma; the sky stays
    one = next(p for p in overcast if p.exptime >= 100 and p.sky_factor < 3)
    clear = dataclasses.replace(one, transparency=1.0, cloud_min=1.0, cloud_cover=0.0)
    with mock.patch("skygrade.streamer.sky_render._add_cosmic_rays", lambda *a: None):
        found, sky = [], []
        for q in (one, clear):
            data = render_exposure(q, Geometry(1, 1024, 1024))[1].data.astype(np.float64)
            back = sep.Background(data, bw=64, bh=64)
            found.append(len(sep.extract(data - back, 5.0, err=back.globalrms)))
            sky.append(back.globalback)
    assert found[1] >= 8 and found[0] <= 0.5 * found[1], found
    assert abs(sky[0] / sky[1] - 1) < 0.45  # the sky is not dimmed with the sources
