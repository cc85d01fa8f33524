"""Tests of the simulated MegaCam telescope: determinism, file format, physics, delivery."""

from __future__ import annotations

import csv
import dataclasses
import threading
import time
from functools import cache
from unittest import mock

import numpy as np
import pytest
import sep
from astropy.io import fits

from skygrade.streamer.sky_fits import exposure_bytes, render_exposure, write_exposure
from skygrade.streamer.sky_plan import (
    FILTERS,
    GEOMETRIES,
    NARROW_BAND_EXPTIME_S,
    ExposurePlan,
    Geometry,
    plan_night,
    resolve_geometry,
)
from skygrade.streamer.telescope import run_telescope, simulate_archive, write_progressively

TINY = Geometry(2, 256, 320)
SMALL = Geometry(2, 512, 1152)
MEDIUM = Geometry(1, 1024, 1152)
NIGHT = "2024-03-01"
SEEDS = (0, 1, 2)


def _plan(label: str, seed: int = 0, **changes) -> ExposurePlan:
    plan = plan_night(NIGHT, 1, seed, {label: 1.0})[0]
    return dataclasses.replace(plan, **changes) if changes else plan


# --- geometry --------------------------------------------------------------------------------


def test_resolve_geometry_presets_and_overrides():
    assert resolve_geometry("full") == Geometry(36, 2048, 4612)
    assert resolve_geometry("small") == GEOMETRIES["small"] == Geometry(4, 512, 1152)
    assert resolve_geometry("small", n_ccd=2) == Geometry(2, 512, 1152)
    assert resolve_geometry("full", ccd_shape=(1024, 2048)) == Geometry(36, 1024, 2048)


def test_resolve_geometry_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="full, small"):
        resolve_geometry("huge")
    with pytest.raises(ValueError, match="n_ccd"):
        resolve_geometry("small", n_ccd=0)


# --- planning --------------------------------------------------------------------------------


def test_plan_night_times_expnums_and_labels():
    plans = plan_night(NIGHT, 40, seed=3, class_mix={"GOOD": 3, "BT": 1})
    expnums = [p.expnum for p in plans]
    assert expnums == sorted(expnums) and len(set(expnums)) == 40
    assert all(1_000_000 <= e < 10_000_000 for e in expnums)
    times = [p.date_obs for p in plans]
    assert times == sorted(times)
    # 19:00-05:30 HST = 05:00-15:30 UTC the next day.
    assert times[0] >= plans[0].date_obs.replace(day=2, hour=5, minute=0, second=0, microsecond=0)
    assert times[-1] <= plans[0].date_obs.replace(day=2, hour=15, minute=30, second=0)
    assert {p.label for p in plans} == {"GOOD", "BT"}
    assert all(5 <= p.exptime <= 1200 for p in plans)  # snapshots to 20-minute exposures
    assert plan_night(NIGHT, 40, seed=3, class_mix={"GOOD": 3, "BT": 1}) == plans
    assert plan_night(NIGHT, 5, seed=4, class_mix={"GOOD": 1})[0].expnum != expnums[0]
    assert plan_night(NIGHT, 2, 3, {"GOOD": 1}, first_expnum=2_000_000)[1].expnum == 2_000_001


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"class_mix": {"NOPE": 1.0}}, "unknown classes"),
        ({"class_mix": {"GOOD": 0.0}}, "positive sum"),
        ({"night": "2024-13-45"}, "YYYY-MM-DD"),
        ({"n_exposures": -1}, "n_exposures"),
        ({"narrow_band": 1.5}, "narrow_band"),
    ],
)
def test_plan_night_validates(kwargs, match):
    args = {"night": NIGHT, "n_exposures": 2, "seed": 0, "class_mix": {"GOOD": 1.0}} | kwargs
    with pytest.raises(ValueError, match=match):
        plan_night(**args)


def _nights_plans(narrow_band: float) -> list[ExposurePlan]:
    mix = {"GOOD": 1.0, "BT": 1.0, "BGP": 1.0}
    return [
        p
        for night in ("2024-03-01", "2024-03-02", "2024-03-03", "2024-03-04")
        for p in plan_night(night, 100, 3, mix, narrow_band=narrow_band)
    ]


def test_narrow_band_exposures_change_only_their_filter_and_exposure_time():
    broad, some, more = (_nights_plans(f) for f in (0.0, 0.1, 0.3))
    assert not any(FILTERS[p.filter].narrow for p in broad)
    for plans, share in ((some, 0.1), (more, 0.3)):
        narrow = [FILTERS[p.filter].narrow for p in plans]
        assert abs(np.mean(narrow) - share) < 0.05, np.mean(narrow)
        for b, p in zip(broad, plans, strict=True):
            # Its own stream: every other draw of the plan is the broad-band one's.
            assert dataclasses.replace(p, filter=b.filter, exptime=b.exptime) == b
            if FILTERS[p.filter].narrow:
                assert NARROW_BAND_EXPTIME_S[0] <= p.exptime <= NARROW_BAND_EXPTIME_S[1]
            else:
                assert (p.filter, p.exptime) == (b.filter, b.exptime)
    # Narrow-band at a smaller share stays so at a larger one (same filter and time).
    assert all(
        (p.filter, p.exptime) == (q.filter, q.exptime)
        for p, q in zip(some, more, strict=True)
        if FILTERS[p.filter].narrow
    )
    assert {p.filter for p in more if FILTERS[p.filter].narrow} == {
        n for n, f in FILTERS.items() if f.narrow
    }


def test_a_narrow_band_sky_is_darker_and_holds_fewer_sources():
    broad = _plan("GOOD", 1, filter="r.MP9601", exptime=300.0)
    narrow = _stats(dataclasses.replace(broad, filter="Ha.MP9603"))
    wide = _stats(broad)
    assert narrow["back_per_s"] < 0.15 * wide["back_per_s"], (narrow, wide)
    assert narrow["n"] < 0.5 * wide["n"], (narrow, wide)


# --- file format and determinism -------------------------------------------------------------


def test_same_seed_same_bytes_and_different_seed_different_bytes(tmp_path):
    plan = _plan("BT", seed=5)
    first = exposure_bytes(plan, TINY)
    assert exposure_bytes(plan, TINY) == first
    assert len(first) % 2880 == 0
    a = write_exposure(plan, TINY, tmp_path / "a" / plan.filename)
    b = write_exposure(plan, TINY, tmp_path / "b" / plan.filename)
    assert a.read_bytes() == b.read_bytes() == first
    assert not list(tmp_path.rglob("*.tmp"))
    other = dataclasses.replace(plan, seed=6)
    assert exposure_bytes(other, TINY) != first


def test_headers_and_uint16_round_trip(tmp_path):
    plan = _plan("RBT", seed=2)
    rendered = render_exposure(plan, TINY)
    arrays = [hdu.data.copy() for hdu in rendered[1:]]
    path = write_exposure(plan, TINY, tmp_path / plan.filename)
    with fits.open(path) as hdul:
        assert len(hdul) == TINY.n_ccd + 1
        h = hdul[0].header
        assert hdul[0].data is None
        assert h["EXPNUM"] == plan.expnum and h["NEXTEND"] == TINY.n_ccd
        assert h["SIMCLASS"] == "RBT" and h["INSTRUME"] == "MegaPrime"
        assert h["EXPTIME"] == plan.exptime and h["FILTER"] == plan.filter
        assert h["OBJECT"] == plan.object and h["AIRMASS"] == plan.airmass
        assert h["DATE-OBS"].startswith(plan.date_obs.strftime("%Y-%m-%dT%H:%M:%S"))
        assert len(h["DATE-OBS"]) == len("2024-03-02T05:00:00.0")
        for key in ("RA", "DEC", "SIMSEEIN", "SIMTRAIL", "SIMSKY", "SIMTRMOD"):
            assert key in h
        assert h["SIMSEEIN"] == pytest.approx(plan.seeing, abs=1e-3)
        for i, (hdu, expected) in enumerate(zip(hdul[1:], arrays, strict=True)):
            e = hdu.header
            assert e["EXTNAME"] == e["CCDNAME"] == f"ccd{i:02d}"
            assert e["BITPIX"] == 16 and e["BZERO"] == 32768
            assert e["NAXIS1"] == TINY.width and e["NAXIS2"] == TINY.height
            assert 1.5 <= e["GAIN"] <= 1.8 and 4 <= e["RDNOISE"] <= 6
            assert 60000 <= e["SATURATE"] <= 65535 and e["IMAGEID"] == i
            assert hdu.data.dtype == np.uint16
            np.testing.assert_array_equal(hdu.data, expected)
            assert hdu.data.max() <= e["SATURATE"]


def test_simulate_archive_layout_and_labels_merge(tmp_path):
    done = []
    paths = simulate_archive(
        tmp_path, ["2024-03-01"], 2, TINY, 1, {"GOOD": 1, "BGP": 1}, lambda *a: done.append(a)
    )
    assert [d[:2] for d in done] == [(1, 2), (2, 2)]
    assert all(p.parent == tmp_path / "2024-03-01" and p.name.endswith("o.fits") for p in paths)
    simulate_archive(tmp_path, ["2024-03-02"], 1, TINY, 1, {"RBT": 1})
    with (tmp_path / "labels.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["exposure_id", "label"]
    ids = [r[0] for r in rows[1:]]
    assert len(ids) == 3 and ids == sorted(ids, key=int)
    for path in paths:
        with fits.open(path) as hdul:
            assert [hdul[0].header["SIMCLASS"]] == [
                r[1] for r in rows[1:] if r[0] == path.stem[:-1]
            ]
    assert rows[-1][1] == "RBT"


# --- physics: the classes differ where they should ---------------------------------------------


@cache
def _stats(plan: ExposurePlan, geometry: Geometry = MEDIUM) -> dict[str, float]:
    """Pooled sep statistics of an exposure's sky (thresh 1.5 x global rms, minarea 5,
    bw=bh=64), cosmic rays off: they are the detector's, the same in every class, and a
    trailed sky's few detections would be diluted by them."""
    elong, radius, iso, back, bvar = [], [], [], [], []
    with mock.patch("skygrade.streamer.sky_render._add_cosmic_rays", lambda *a: None):
        hdus = render_exposure(plan, geometry)[1:]
    for hdu in hdus:
        data = np.asarray(hdu.data, dtype=np.float32)
        bkg = sep.Background(data, bw=64, bh=64)
        sub = data - bkg.back()
        objs = sep.extract(sub, 1.5, err=bkg.globalrms, minarea=5)
        good = (objs["flag"] & ~3) == 0
        objs = objs[good]
        fr, _ = sep.flux_radius(sub, objs["x"], objs["y"], 6.0 * objs["a"], 0.5, subpix=1)
        elong.append(objs["a"] / objs["b"])
        radius.append(fr)
        iso.append(objs["tnpix"])
        back.append(bkg.globalback)
        bvar.append(np.std(bkg.back()) / bkg.globalback)
    return {
        "elong": float(np.median(np.concatenate(elong))),
        "radius": float(np.median(np.concatenate(radius))),
        "iso": float(np.median(np.concatenate(iso))),
        "back_per_s": float(np.median(back)) / plan.exptime,
        "back_var": float(np.median(bvar)),
        "n": float(sum(len(e) for e in elong)),
    }


def _median_over_seeds(label: str, key: str, **changes) -> float:
    return float(np.median([_stats(_plan(label, s, **changes))[key] for s in SEEDS]))


def test_elongation_sets_bt_and_rbt_apart_from_good():
    # Smeared trails, not jumps: a jump draws two round images, not one long one
    # (tests/streamer/test_telescope_widening.py checks those).
    good = _median_over_seeds("GOOD", "elong")
    bt = _median_over_seeds("BT", "elong", trail_jump=0.0)
    rbt = _median_over_seeds("RBT", "elong", trail_jump=0.0)
    # A random walk's extent is shorter than its path: RBT is not more elongated than BT in the
    # median (2.0-2.3 both over three seeds); both are far from GOOD.
    assert good < 1.45
    assert good + 0.2 < bt and good + 0.4 < rbt
    assert rbt > 1.9


def test_bad_seeing_makes_bigger_sources():
    good_r = _median_over_seeds("GOOD", "radius")
    bad_r = _median_over_seeds("B_SEEING", "radius")
    assert bad_r > 1.4 * good_r
    assert _median_over_seeds("B_SEEING", "iso") > _median_over_seeds("GOOD", "iso")
    assert _median_over_seeds("B_SEEING", "elong") < _median_over_seeds(
        "BT", "elong", trail_jump=0.0
    )


# BGP plans whose one cause is moonlight, scattered light or clouds (plan_night draws the causes
# per exposure; these seeds draw exactly one), and the same plan with that cause taken out.
_BGP_CAUSES = {
    "moon": (1, {"sky_factor": 1.0, "sky_gradient": 0.0}),
    "scatter": (0, {"scatter": 0.0}),
    "clouds": (12, {"cloud_min": 1.0, "cloud_cover": 0.0, "transparency": 1.0}),
}


@pytest.mark.parametrize("cause", list(_BGP_CAUSES))
def test_each_background_problem_has_its_own_effect(cause):
    seed, clear = _BGP_CAUSES[cause]
    plan = _plan("BGP", seed)
    drawn = {
        "moon": plan.sky_factor >= 3.0,
        "scatter": plan.scatter > 0.0,
        "clouds": plan.cloud_min < 1.0,
    }
    assert [c for c, on in drawn.items() if on] == [cause], (seed, plan)
    bgp = _stats(plan)
    without = _stats(dataclasses.replace(plan, **clear))
    brighter = bgp["back_per_s"] / without["back_per_s"]
    if cause == "moon":  # the whole sky brighter
        assert brighter > 3.0, (bgp, without)
    elif cause == "scatter":  # blobs: a sky that varies across the CCD, about as bright overall
        assert bgp["back_var"] > 3.0 * without["back_var"] + 0.02, (bgp, without)
        assert brighter < 1.5, (bgp, without)
    else:  # clouds: fewer sources detected, under a sky no brighter (dark sky: clouds darken it)
        assert bgp["n"] < 0.7 * without["n"], (bgp, without)
        assert brighter < 1.0, (bgp, without)


@pytest.mark.parametrize("exptime", [30.0, 600.0])
def test_good_stays_good_at_short_and_long_exposures(exptime):
    good = [_stats(_plan("GOOD", s, exptime=exptime)) for s in SEEDS]
    elong = np.median([g["elong"] for g in good])
    radius = np.median([g["radius"] for g in good])
    assert elong < 1.45
    assert elong + 0.2 < _median_over_seeds("BT", "elong", trail_jump=0.0)
    assert radius * 1.3 < _median_over_seeds("B_SEEING", "radius")
    assert all(g["n"] > 30 for g in good)


# --- delivery -------------------------------------------------------------------------------


def test_write_progressively_grows_the_file(tmp_path):
    data = bytes(range(256)) * 40
    path = tmp_path / "sub" / "x.fits"
    sizes = []

    def on_chunk(i, n):
        sizes.append((i, n, path.stat().st_size, path.read_bytes() == data[: path.stat().st_size]))

    t0 = time.monotonic()
    write_progressively(data, path, chunks=5, duration_s=0.2, on_chunk=on_chunk)
    assert time.monotonic() - t0 >= 0.18
    assert [s[0] for s in sizes] == [1, 2, 3, 4, 5] and all(s[1] == 5 for s in sizes)
    grown = [s[2] for s in sizes]
    assert grown == sorted(grown) and grown[0] < len(data) and grown[-1] == len(data)
    assert all(s[3] for s in sizes)
    assert path.read_bytes() == data
    with pytest.raises(ValueError, match="chunks"):
        write_progressively(data, path, chunks=0, duration_s=0.1)


def test_write_progressively_stop_finishes_at_once(tmp_path):
    stop = threading.Event()
    stop.set()
    t0 = time.monotonic()
    write_progressively(b"x" * 1000, tmp_path / "y", chunks=10, duration_s=30.0, stop=stop)
    assert time.monotonic() - t0 < 1.0
    assert (tmp_path / "y").read_bytes() == b"x" * 1000


def test_run_telescope_delivers_n_exposures(tmp_path):
    seen = []
    paths = run_telescope(
        tmp_path,
        3,
        TINY,
        seed=7,
        class_mix={"GOOD": 1, "BT": 1},
        cadence_s=0.05,
        transfer_s=0.05,
        transfer_chunks=3,
        night=NIGHT,
        progress=lambda i, n, p: seen.append((i, n, p)),
    )
    assert len(paths) == 3 and [s[:2] for s in seen] == [(1, 3), (2, 3), (3, 3)]
    plans = plan_night(NIGHT, 3, 7, {"GOOD": 1, "BT": 1})
    for path, plan in zip(paths, plans, strict=True):
        assert path == tmp_path / NIGHT / plan.filename
        assert path.read_bytes() == exposure_bytes(plan, TINY)
    with (tmp_path / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["exposure_id"], r["label"]) for r in rows] == [
        (p.exposure_id, p.label) for p in plans
    ]


def test_run_telescope_stops_promptly(tmp_path):
    stop = threading.Event()
    result: list = []
    thread = threading.Thread(
        target=lambda: result.append(
            run_telescope(tmp_path, None, TINY, 1, {"GOOD": 1}, 30.0, 0.05, 2, NIGHT, stop=stop)
        )
    )
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not list(tmp_path.rglob("*o.fits")) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)  # now waiting 30 s for the next slot
        t0 = time.monotonic()
        stop.set()
        thread.join(timeout=5)
        assert not thread.is_alive()
        assert time.monotonic() - t0 < 2.0
    finally:
        stop.set()
        thread.join()
    assert len(result[0]) == 1
    with pytest.raises(ValueError, match="stop event"):
        run_telescope(tmp_path, None, TINY, 1, {"GOOD": 1}, 1.0, 0.0, 1, NIGHT)
