"""The evaluation-only GalSim renderer: files the grader reads, labels, and drawn physics."""

import csv
import dataclasses

import numpy as np
import pytest

pytest.importorskip("galsim")

from skygrade.models.classes import CLASSES  # noqa: E402
from skygrade.streamer import galsim_render as gr  # noqa: E402
from skygrade.streamer.galsim_ccd import render_ccd, trail_path  # noqa: E402
from skygrade.streamer.galsim_spec import FILTERS, PIXEL_SCALE, Mosaic, plan_archive  # noqa: E402
from skygrade.transforms.ccd_pixels import read_ccd  # noqa: E402
from skygrade.transforms.dataset import find_archive  # noqa: E402
from skygrade.transforms.exposure import read_meta  # noqa: E402

MOSAIC = Mosaic(2, 256, 512)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    out = tmp_path_factory.mktemp("gs")
    rc = gr.main(
        ["--out", str(out), "--exposures", "1", "--nights", "2025-02-03", "--seed", "5"]
        + ["--n-ccd", "2", "--ccd-shape", "256x512"]
    )
    assert rc == 0
    return out


def test_archive_is_readable_and_labelled(archive):
    with open(archive / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["label"] for r in rows) == sorted(CLASSES)
    items = find_archive(archive)
    assert {i.exposure_id: i.label for i in items} == {r["exposure_id"]: r["label"] for r in rows}
    for item in items:
        assert item.night == "2025-02-03"
        meta = read_meta(item.path)
        assert meta.exposure_id == item.exposure_id
        assert meta.night == "2025-02-03"  # DATE-OBS falls in the directory's night
        assert meta.n_ccd == 2 and meta.ccd_shape == (512, 256)
        assert meta.ccd_names == ("ccd00", "ccd01")
        assert meta.filter in FILTERS and meta.exptime > 0 and meta.airmass >= 1.0
        assert meta.object
        ccd = read_ccd(item.path, 1)
        assert ccd.data.dtype == np.float32 and ccd.shape == (512, 256)
        assert 1.0 < ccd.gain < 2.0 and 3.0 < ccd.rdnoise < 6.0
        assert ccd.data.max() <= ccd.saturate
        assert np.median(ccd.data) > 300  # bias + sky, stored through BZERO = 32768
        from astropy.io import fits

        with fits.open(item.path) as hdul:
            assert hdul[0].header["GSCLASS"] == item.label
            assert hdul[0].header["NEXTEND"] == 2
            assert hdul[1].header["BZERO"] == 32768 and hdul[1].header["BITPIX"] == 16


def test_same_seed_same_pixels():
    spec = plan_archive(["2025-02-03"], 1, ["RBT"], 9, 1)[0]
    a, _ = render_ccd(spec, Mosaic(1, 128, 128), 0)
    b, _ = render_ccd(spec, Mosaic(1, 128, 128), 0)
    np.testing.assert_array_equal(a, b)


def _star_shapes(img: np.ndarray, n: int = 5, half: int = 30) -> tuple[float, float, float]:
    """Median adaptive-moment size (sigma, px) and distortions e1, e2 of the brightest unsaturated,
    isolated sources: the PSF every source shares."""
    galsim = pytest.importorskip("galsim")
    d = img.astype(float)
    d = d - np.median(d, axis=0)  # amplifier halves, bad columns
    sat = img >= 0.95 * img.max()
    taken: list[tuple[int, int]] = []
    sizes, e1s, e2s = [], [], []
    # rank by the light in 9x9 boxes: cosmic rays are sharp but hold little charge
    c = np.pad(d, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    box = np.zeros_like(d)
    box[4:-4, 4:-4] = c[9:, 9:] - c[:-9, 9:] - c[9:, :-9] + c[:-9, :-9]
    for flat in np.argsort(box, axis=None)[::-1]:
        y, x = np.unravel_index(flat, d.shape)
        if len(sizes) == n or box[y, x] < 5000:
            break
        if not (half <= y < d.shape[0] - half and half <= x < d.shape[1] - half):
            continue
        if any(abs(y - ty) < 2 * half and abs(x - tx) < 2 * half for ty, tx in taken):
            continue
        taken.append((y, x))
        stamp = d[y - half : y + half + 1, x - half : x + half + 1]
        if sat[y - half : y + half + 1, x - half : x + half + 1].any():
            continue
        mom = galsim.hsm.FindAdaptiveMom(galsim.ImageD(stamp), strict=False)
        if mom.moments_status == 0:
            sizes.append(mom.moments_sigma)
            e1s.append(mom.observed_shape.e1)
            e2s.append(mom.observed_shape.e2)
    assert len(sizes) >= 3, "too few bright isolated stars"
    return float(np.median(sizes)), float(np.median(e1s)), float(np.median(e2s))


def test_seeing_and_trails_are_drawn_as_specified():
    mosaic = Mosaic(1, 512, 512)
    base = plan_archive(["2025-02-03"], 1, ["GOOD"], 11, 1)[0]
    base = dataclasses.replace(
        base,
        filter="r.MP9602",
        exptime=300.0,
        optics={},
        star_density=8.0,
        bad_column_ccds=(),
        shear=(0.0, 0.0),
        shear_pattern=0.0,
        fwhm=0.6,
    )
    good = render_ccd(base, mosaic, 0)[0]
    bad = render_ccd(dataclasses.replace(base, label="B_SEEING", fwhm=2.0), mosaic, 0)[0]
    trail = dataclasses.replace(
        base, label="BT", trail_mode="line", trail_length=6.0, trail_angle=0.0
    )
    trailed = render_ccd(trail, mosaic, 0)[0]
    g_size, g_e1, g_e2 = _star_shapes(good)
    b_size, _, _ = _star_shapes(bad)
    t_size, t_e1, t_e2 = _star_shapes(trailed)
    assert g_size == pytest.approx(0.6 / 2.3548 / PIXEL_SCALE, rel=0.3)  # drawn 0.6"
    assert abs(g_e1) < 0.1 and abs(g_e2) < 0.1  # round
    assert b_size > 2.2 * g_size  # 2.0" vs 0.6"
    assert t_e1 > 0.5 and abs(t_e2) < 0.15  # a 6" trail along x


def test_rbt_paths_are_long_and_bt_paths_straight():
    spec = plan_archive(["2025-02-03"], 1, ["RBT"], 3, 1)[0]
    for mode in ("wobble", "walk", "arc", "jump"):
        s = dataclasses.replace(spec, trail_mode=mode, trail_length=20.0)
        span = np.hypot(*np.ptp(trail_path(s, 0.5, -0.5), axis=0))
        assert 8.0 < span < 45.0, mode
    s = dataclasses.replace(spec, trail_mode="line", trail_length=4.0, trail_params={})
    assert np.hypot(*np.ptp(trail_path(s, 0.0, 0.0), axis=0)) == pytest.approx(4.0, rel=0.05)
    assert trail_path(dataclasses.replace(spec, trail_mode="none"), 0, 0) is None
