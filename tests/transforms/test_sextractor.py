"""The sextractor and catalog backends, against the real ``source-extractor`` binary.

Run with ``-s`` to see the sep / SExtractor parity numbers and per-CCD timings.
"""

from __future__ import annotations

import gzip
import logging
import math
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.io import fits

from skygrade.transforms.catalog_files import (
    REQUIRED_COLUMNS,
    CatalogBackend,
    catalog_columns_to_features,
    read_catalog,
)
from skygrade.transforms.ccd_pixels import CcdPixels
from skygrade.transforms.exposure import ExposureMeta
from skygrade.transforms.exposure_errors import ExposureError
from skygrade.transforms.extract import (
    FEATURE_COLUMNS,
    CcdFeatures,
    CcdRejected,
    SepParams,
    sep_features,
)
from skygrade.transforms.sextractor import (
    CATALOG_PARAMETERS,
    PIXEL_SCALE,
    SextractorBackend,
    SextractorError,
    estimate_seeing,
    run_sextractor,
)

BINARY = "source-extractor"
SHARE = Path("/usr/share/source-extractor")
GAIN, SATURATE, FWHM_PX = 1.6, 65535.0, 4.3


# --------------------------------------------------------------------------- synthetic CCDs


def synthetic_ccd(
    seed: int = 0,
    shape: tuple[int, int] = (1152, 1024),
    n_stars: int = 600,
    n_galaxies: int = 150,
    sky: float = 1000.0,
    fwhm_px: float = FWHM_PX,
    beta: float = 3.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A MegaCam-like CCD: Moffat stars and PSF-convolved exponential-disc galaxies with
    power-law fluxes, a sky of ~1000 ADU with a gentle gradient, Poisson and read noise, clipped
    at saturation.

    Returns the image and the 0-based (x, y) of the stars and of the galaxies.
    """
    rng = np.random.default_rng(seed)
    height, width = shape
    img = np.zeros(shape)
    alpha = fwhm_px / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    # N(>F) ~ F^-0.5 for stars, F^-1 for galaxies: stars dominate the bright end (high latitude).
    fmin, fmax = 300.0, 3e6
    flux = fmin * (1.0 - rng.random(n_stars) * (1.0 - np.sqrt(fmin / fmax))) ** -2.0
    stars = np.c_[rng.uniform(5, width - 5, n_stars), rng.uniform(5, height - 5, n_stars)]
    norm = (beta - 1.0) / (np.pi * alpha**2)
    for (x, y), f in zip(stars, flux, strict=True):
        sl, dx, dy = _stamp(x, y, 25, shape)
        img[sl] += f * norm * (1.0 + (dx**2 + dy**2) / alpha**2) ** -beta
    galaxies = np.c_[
        rng.uniform(10, width - 10, n_galaxies), rng.uniform(10, height - 10, n_galaxies)
    ]
    kernel = 1.0 + np.add.outer(np.arange(-12, 13) ** 2, np.arange(-12, 13) ** 2) / alpha**2
    kernel = kernel**-beta / (kernel**-beta).sum()
    for x, y in galaxies:
        re, q, theta = rng.uniform(2.5, 8.0), rng.uniform(0.3, 0.9), rng.uniform(0, np.pi)
        sl, dx, dy = _stamp(x, y, int(6 * re) + 15, shape)
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        prof = _convolve(np.exp(-1.678 * np.hypot(u, v / q) / re), kernel)  # seen through the PSF
        img[sl] += 2e3 / (1.0 - rng.random() * 0.99) * prof / prof.sum()
    yy, xx = np.mgrid[0:height, 0:width]
    img += sky * (1.0 + 0.05 * xx / width - 0.03 * yy / height)
    img = rng.poisson(img * GAIN) / GAIN + rng.normal(0.0, 5.0 / GAIN, shape)
    return np.minimum(img, SATURATE).astype(np.float32), stars, galaxies


def _stamp(x: float, y: float, r: int, shape: tuple[int, int]):
    y0, y1 = max(0, int(y) - r), min(shape[0], int(y) + r + 1)
    x0, x1 = max(0, int(x) - r), min(shape[1], int(x) + r + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    return (slice(y0, y1), slice(x0, x1)), xx - x, yy - y


def _convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``image`` convolved with a centred odd-sized ``kernel`` (same shape, FFT, zero padded)."""
    ky, kx = kernel.shape
    shape = (image.shape[0] + ky - 1, image.shape[1] + kx - 1)
    out = np.fft.irfft2(np.fft.rfft2(image, shape) * np.fft.rfft2(kernel, shape), shape)
    return np.clip(
        out[ky // 2 : ky // 2 + image.shape[0], kx // 2 : kx // 2 + image.shape[1]], 0, None
    )


def match(x1, y1, x2, y2, radius: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """For each point of set 1, the index of the nearest point of set 2 and whether it lies
    within ``radius``."""
    if len(x2) == 0:
        return np.zeros(len(x1), int), np.zeros(len(x1), bool)
    d = np.hypot(np.subtract.outer(x1, x2), np.subtract.outer(y1, y2))
    nearest = d.argmin(axis=1)
    return nearest, d[np.arange(len(x1)), nearest] < radius


def _pixels(data: np.ndarray, index: int = 0) -> CcdPixels:
    return CcdPixels(index=index, name=f"ccd{index:02d}", data=data, gain=GAIN, rdnoise=5.0,
                     saturate=SATURATE)  # fmt: skip


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def parity_ccd():
    return synthetic_ccd(seed=0)


def _mef(path: Path, n_ccd: int, *, exptime_in_extensions: bool = True) -> Path:
    """A small MegaCam-like MEF (Elixir style: every extension header carries the exposure
    keywords, which SExtractor copies into LDAC_IMHEAD)."""
    keys = [
        ("EXPNUM", 2345678),
        ("EXPTIME", 120.0),
        ("DATE-OBS", "2026-11-25T06:00:00"),
        ("FILTER", "r.MP9602"),
        ("OBJECT", "D3"),
        ("AIRMASS", 1.2),
    ]
    hdus = [fits.PrimaryHDU(header=fits.Header(keys))]
    for i in range(n_ccd):
        data, _, _ = synthetic_ccd(seed=10 + i, shape=(400, 360), n_stars=60, n_galaxies=15)
        ext = fits.ImageHDU(data, name=f"ccd{i:02d}")
        ext.header["GAIN"], ext.header["SATURATE"] = GAIN, SATURATE
        if exptime_in_extensions:
            for key, value in keys:
                ext.header[key] = value
        hdus.append(ext)
    fits.HDUList(hdus).writeto(path)
    return path


def _sextract(image: Path, catalog: Path, catalog_type: str) -> Path:
    """Run source-extractor on an (MEF) image the way an archive would."""
    param = catalog.with_suffix(".param")
    param.write_text("\n".join(CATALOG_PARAMETERS) + "\n")
    subprocess.run(
        [BINARY, str(image), "-c", str(SHARE / "default.sex"),
         "-PARAMETERS_NAME", str(param), "-FILTER_NAME", str(SHARE / "default.conv"),
         "-STARNNW_NAME", str(SHARE / "default.nnw"), "-CATALOG_TYPE", catalog_type,
         "-CATALOG_NAME", str(catalog), "-PIXEL_SCALE", str(PIXEL_SCALE),
         "-SEEING_FWHM", "0.8", "-VERBOSE_TYPE", "QUIET"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return catalog


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory):
    """A 3-CCD MEF and its FITS_1.0 and FITS_LDAC catalogs, written by source-extractor."""
    tmp = tmp_path_factory.mktemp("catalogs")
    image = _mef(tmp / "2345678p.fits", 3)
    return SimpleNamespace(
        image=image,
        fits10=_sextract(image, tmp / "2345678p_fits10.cat", "FITS_1.0"),
        ldac=_sextract(image, tmp / "2345678p.ldac", "FITS_LDAC"),
    )


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy a catalog, letting ``edit(hdul)`` change it."""
    with fits.open(src) as hdul:
        hdul.readall()
        edit(hdul)
        hdul.writeto(dst)
    return dst


def _fits10_table(n: int, rng, *, class_star: float = 0.5, drop: tuple[str, ...] = ()):
    cols = {
        "X_IMAGE": rng.uniform(1, 2048, n),
        "Y_IMAGE": rng.uniform(1, 4612, n),
        "ISO0": rng.integers(5, 80, n),
        "ELONGATION": rng.uniform(1, 2, n),
        "ELLIPTICITY": rng.uniform(0, 0.5, n),
        "CLASS_STAR": np.full(n, class_star),
        "BACKGROUND": rng.uniform(900, 1100, n),
        "FLAGS": rng.choice([0, 2, 4], n),
    }
    formats = {"ISO0": "J", "FLAGS": "I"}
    return fits.BinTableHDU.from_columns(
        [fits.Column(k, formats.get(k, "E"), array=v) for k, v in cols.items() if k not in drop],
        name="OBJECTS",
    )


def _synthetic_fits10(path: Path, n_ccd: int, **kw) -> Path:
    rng = np.random.default_rng(n_ccd)
    primary = fits.PrimaryHDU()
    primary.header["EXPTIME"] = 300.0
    hdus = [primary] + [_fits10_table(50, rng, **kw) for _ in range(n_ccd)]
    fits.HDUList(hdus).writeto(path)
    return path


# --------------------------------------------------------------------------- parity


def test_sextractor_matches_sep_on_synthetic_ccd(parity_ccd):
    """sep_features and SExtractor agree on the same pixels with the same settings."""
    data, _, _ = parity_ccd
    params = SepParams()
    t0 = time.perf_counter()
    sep_table = sep_features(data.copy(), SATURATE, params)
    t_sep = time.perf_counter() - t0
    t0 = time.perf_counter()
    sex_table = SextractorBackend(params).measure(_pixels(data), SimpleNamespace(path="synthetic"))
    t_sex = time.perf_counter() - t0

    n_sex = len(sex_table["X_IMAGE"])
    assert n_sex > 150
    nearest, ok = match(
        sex_table["X_IMAGE"], sex_table["Y_IMAGE"], sep_table["X_IMAGE"], sep_table["Y_IMAGE"]
    )
    fraction = ok.mean()
    lines = [
        f"parity on a {data.shape[1]}x{data.shape[0]} CCD: SExtractor {n_sex} sources, "
        f"sep {len(sep_table['X_IMAGE'])}, matched within 1 px: {fraction:.3f}",
        f"per-CCD time: sep {t_sep:.3f} s, SExtractor {t_sex:.3f} s (incl. seeing estimate, "
        f"FITS write, process start)",
    ]
    for name in ("ISO0", "ELONGATION", "ELLIPTICITY", "BACKGROUND", "FLUX", "FLUX_RADIUS"):
        sep_v = sep_table[name][nearest[ok]].astype(float)
        sex_v = sex_table[name][ok].astype(float)
        rel = (sep_v - sex_v) / sex_v
        signed, absolute = np.median(rel), np.median(np.abs(rel))
        of_medians = np.median(sep_v) / np.median(sex_v) - 1.0
        lines.append(
            f"  {name:<12} median rel. diff {signed:+.4f}, median |rel. diff| {absolute:.4f}, "
            f"ratio of medians - 1 {of_medians:+.4f}"
        )
        if name in ("ISO0", "ELONGATION", "ELLIPTICITY", "BACKGROUND", "FLUX_RADIUS"):
            assert abs(signed) < 0.10, name
            assert absolute < 0.10, name
            assert abs(of_medians) < 0.10, name
    sep_flags, sex_flags = sep_table["FLAGS"][nearest[ok]], sex_table["FLAGS"][ok]
    for bit, what in ((2, "blended"), (4, "saturated")):
        agree = np.mean((sep_flags & bit > 0) == (sex_flags & bit > 0))
        lines.append(
            f"  FLAGS {bit} ({what}): sep {np.count_nonzero(sep_flags & bit)}, SExtractor "
            f"{np.count_nonzero(sex_flags & bit)}, same on {agree:.3f} of matched sources"
        )
        assert agree > 0.95, what
    print("\n" + "\n".join(lines))
    assert fraction >= 0.90
    assert np.count_nonzero(sex_table["FLAGS"] & 4) > 0  # SATUR_LEVEL reached SExtractor


def test_estimate_seeing_finds_the_psf(parity_ccd):
    data, _, _ = parity_ccd
    seeing = estimate_seeing(data, SATURATE)
    assert seeing == pytest.approx(FWHM_PX * PIXEL_SCALE, rel=0.15)
    assert estimate_seeing(np.full((200, 200), 1000, np.float32)) is None


def test_sextractor_backend_features_on_mef(catalogs):
    backend = SextractorBackend(SepParams())
    assert backend.name == "sextractor"
    meta = backend.open(str(catalogs.image))
    features = backend.features(meta, 1)
    assert isinstance(features, CcdFeatures)
    assert (features.width, features.height, features.backend) == (360, 400, "sextractor")
    assert features.exptime == 120.0 and features.exposure_id == "2345678"
    assert list(features.sources) == list(FEATURE_COLUMNS)
    assert features.n_sources > 10
    assert np.isfinite(features.sources["FLUX_RADIUS"]).all()


def test_sextractor_failure_names_binary_ccd_and_stderr(tmp_path):
    fake = tmp_path / "fake-sex"
    fake.write_text("#!/bin/sh\necho 'ERROR: boom in config' >&2\nexit 3\n")
    fake.chmod(0o755)
    data = np.random.default_rng(1).normal(1000, 10, (128, 128)).astype(np.float32)
    backend = SextractorBackend(SepParams(sextractor_binary=str(fake)))
    with pytest.raises(SextractorError, match=r"exp\.fits: CCD 4 \(ccd04\).*fake-sex.*boom"):
        backend.measure(_pixels(data, 4), SimpleNamespace(path="exp.fits"))
    with pytest.raises(SextractorError, match="no-such-sextractor.*not found"):
        run_sextractor(data, params=SepParams(sextractor_binary="no-such-sextractor"))


# --------------------------------------------------------------------------- catalog ingest


def test_read_fits10_catalog_written_by_sextractor(catalogs):
    cat = read_catalog(catalogs.fits10, exptime=90.0)
    assert cat.format == "FITS_1.0"
    # FITS_1.0 carries no image header: EXPTIME is the fallback, the id the file stem.
    assert cat.meta.exptime == 90.0 and cat.meta.exposure_id == "2345678p_fits10"
    # No DATE-OBS and no night folder: the night is unknown, not the day it was read.
    assert cat.meta.n_ccd == len(cat.sources) == 3 and cat.meta.night == "unknown"
    for table, shape in zip(cat.sources, cat.shapes, strict=True):
        assert list(table) == list(FEATURE_COLUMNS)
        assert len(table["X_IMAGE"]) > 10
        assert np.isfinite(table["FLUX"]).all() and np.isfinite(table["FLUX_RADIUS"]).all()
        assert shape == (4612, 2048)  # no header: MegaCam's CCD, never the sources' extent
    small = read_catalog(catalogs.fits10, exptime=90.0, ccd_shape=(360, 400))
    assert small.shapes == [(400, 360)] * 3


def test_read_ldac_catalog_takes_metadata_from_image_header(catalogs):
    cat = read_catalog(catalogs.ldac, exptime=90.0)  # the header's EXPTIME wins
    meta = cat.meta
    assert cat.format == "FITS_LDAC"
    assert isinstance(meta, ExposureMeta)
    assert (meta.exptime, meta.expnum, meta.exposure_id) == (120.0, 2345678, "2345678")
    assert meta.night == "2026-11-24"  # 06:00 UTC = 20:00 HST the evening before
    assert (meta.filter, meta.object, meta.airmass) == ("r.MP9602", "D3", 1.2)
    assert meta.n_ccd == 3 and meta.ccd_names == ("CCD00", "CCD01", "CCD02")
    assert meta.ccd_shape == (400, 360) and cat.shapes == [(400, 360)] * 3
    other = read_catalog(catalogs.fits10, exptime=120.0)
    for a, b in zip(cat.sources, other.sources, strict=True):
        for name in FEATURE_COLUMNS:
            np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.parametrize("fmt", ["fits10", "ldac"])
def test_catalog_backend(catalogs, fmt):
    backend = CatalogBackend(SepParams(catalog_exptime=60.0))
    assert backend.name == "catalog"
    path = getattr(catalogs, fmt)
    meta = backend.open(str(path))
    assert meta.n_ccd == 3 and meta.path == str(path)
    assert meta.exptime == (60.0 if fmt == "fits10" else 120.0)
    feats = [backend.features(meta, i) for i in range(meta.n_ccd)]
    assert [f.ccd for f in feats] == [0, 1, 2]
    assert all(f.backend == "catalog" and f.n_sources > 10 for f in feats)
    if fmt == "ldac":
        assert {(f.width, f.height) for f in feats} == {(360, 400)}
    with pytest.raises(CcdRejected, match="CCD 3"):
        backend.features(meta, 3)


def test_catalog_agrees_with_sextractor_backend(catalogs):
    """The catalog written by the archive's SExtractor run and our own run on the same CCD."""
    backend = SextractorBackend(SepParams(minarea=3))  # default.sex has DETECT_MINAREA 3
    live = backend.features(backend.open(str(catalogs.image)), 0).sources
    archived = read_catalog(catalogs.ldac).sources[0]
    nearest, ok = match(
        archived["X_IMAGE"], archived["Y_IMAGE"], live["X_IMAGE"], live["Y_IMAGE"], 0.01
    )
    assert ok.mean() > 0.95
    np.testing.assert_array_equal(archived["ISO0"][ok], live["ISO0"][nearest[ok]])


@pytest.mark.parametrize("n_ccd", [36, 40])
def test_36_and_40_table_catalogs(tmp_path, n_ccd):
    path = _synthetic_fits10(tmp_path / f"cat{n_ccd}.fits", n_ccd)
    cat = read_catalog(path)
    assert cat.meta.n_ccd == n_ccd and len(cat.sources) == n_ccd
    assert cat.meta.exptime == 300.0  # from the catalog's PRIMARY header
    assert cat.meta.exposure_id == f"cat{n_ccd}"
    backend = CatalogBackend(None)
    assert backend.features(backend.open(path), n_ccd - 1).n_sources == 50


def test_missing_exptime_is_nan_unless_configured(tmp_path):
    """Real archive catalogs carry no EXPTIME: graded without it, never refused."""
    path = _synthetic_fits10_noexp(tmp_path / "noexp.fits")
    assert math.isnan(read_catalog(path).meta.exptime)
    assert math.isnan(CatalogBackend(SepParams()).open(path).exptime)
    assert read_catalog(path, exptime=45.0).meta.exptime == 45.0
    assert CatalogBackend(SepParams(catalog_exptime=45.0)).open(path).exptime == 45.0


def test_archive_style_catalog_gz_named_as_pipelines_name_them(tmp_path):
    """``1625583p.fits.ldac.gz``: gzipped FITS_1.0, eight columns, no header at all, a dead CCD."""
    rng = np.random.default_rng(5)
    night_dir = tmp_path / "catalogs"
    night_dir.mkdir()
    raw = tmp_path / "raw.fits"
    tables = [_fits10_table(40, rng), _fits10_table(0, rng), _fits10_table(40, rng)]
    fits.HDUList([fits.PrimaryHDU(), *tables]).writeto(raw)
    path = night_dir / "1625583p.fits.ldac.gz"
    path.write_bytes(gzip.compress(raw.read_bytes()))
    backend = CatalogBackend(SepParams())
    meta = backend.open(path)
    assert meta.exposure_id == "1625583" and meta.n_ccd == 3
    assert meta.night == "unknown" and math.isnan(meta.exptime)
    assert CatalogBackend(SepParams(catalog_night="2016-03-02")).open(path).night == "2016-03-02"
    feats = backend.features(meta, 0)
    assert (feats.width, feats.height) == (2048, 4612)  # MegaCam's, not the sources' extent
    assert np.isnan(feats.sources["FLUX_RADIUS"]).all()
    with pytest.raises(CcdRejected, match="CCD 1: .*no rows") as err:
        backend.features(meta, 1)
    assert err.value.reason == "empty_ccd"
    small = CatalogBackend(SepParams(catalog_ccd_shape=(1024, 2306))).features(meta, 2)
    assert (small.width, small.height) == (1024, 2306)
    dated = tmp_path / "2026-11-24" / "1625584p.fits.ldac"
    dated.parent.mkdir()
    dated.write_bytes(raw.read_bytes())
    assert backend.open(dated).night == "2026-11-24"  # the night folder, without DATE-OBS


def _synthetic_fits10_noexp(path: Path) -> Path:
    _synthetic_fits10(path, 2)
    with fits.open(path, mode="update") as hdul:
        del hdul[0].header["EXPTIME"]
    return path


@pytest.mark.parametrize("column", REQUIRED_COLUMNS)
def test_missing_column_names_column_file_and_hdu(tmp_path, column):
    path = tmp_path / "broken.fits"
    rng = np.random.default_rng(0)
    tables = [_fits10_table(20, rng), _fits10_table(20, rng, drop=(column,))]
    fits.HDUList([fits.PrimaryHDU(), *tables]).writeto(path)
    pattern = rf"broken\.fits: HDU 2: required column {column} is missing"
    with pytest.raises(ExposureError, match=pattern) as err:
        read_catalog(path, exptime=10.0)
    assert err.value.reason == "missing_column" and err.value.hdu == 2
    with pytest.raises(ExposureError, match=pattern):
        CatalogBackend(SepParams(catalog_exptime=10.0)).open(path)
    meta = SimpleNamespace(path=str(path), exposure_id="x", n_ccd=2, exptime=10.0)
    with pytest.raises(CcdRejected, match=pattern):
        CatalogBackend(None).features(meta, 1)


def test_shape_from_axes_and_optional_columns_nan():
    rng = np.random.default_rng(2)
    cols = {c: rng.uniform(1, 2, 4) for c in REQUIRED_COLUMNS if c not in ("ELONGATION",)}
    del cols["ELLIPTICITY"]
    cols |= {"A_IMAGE": np.array([2.0, 3.0, 1.0, 4.0]), "B_IMAGE": np.array([1.0, 1.5, 1.0, 1.0])}
    table = catalog_columns_to_features(cols)
    np.testing.assert_allclose(table["ELONGATION"], [2.0, 2.0, 1.0, 4.0])
    np.testing.assert_allclose(table["ELLIPTICITY"], [0.5, 0.5, 0.0, 0.75])
    assert np.isnan(table["FLUX"]).all() and np.isnan(table["THETA_IMAGE"]).all()
    del cols["A_IMAGE"]
    with pytest.raises(KeyError, match="ELONGATION"):
        catalog_columns_to_features(cols)


def test_not_a_catalog(tmp_path):
    path = tmp_path / "empty.fits"
    fits.PrimaryHDU().writeto(path)
    with pytest.raises(ExposureError, match="empty.fits.*not a SExtractor catalog"):
        read_catalog(path, exptime=1.0)


@pytest.mark.parametrize("with_fluxerr", [True, False], ids=["fluxerr", "snr_proxy"])
def test_meaningless_class_star_is_recomputed(tmp_path, parity_ccd, caplog, with_fluxerr):
    """Archived catalogs have CLASS_STAR ~3e-4 almost everywhere (a few saturated stars ~1, as
    SExtractor gives with a wrong SEEING_FWHM); it is rebuilt from FLUX_RADIUS (the S/N from
    FLUXERR_ISO, or from a noise estimate when the catalog lacks it)."""
    data, stars, galaxies = parity_ccd
    image = tmp_path / "one.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, name="ccd00")]).writeto(image)
    real = _sextract(image, tmp_path / "one.cat", "FITS_1.0")

    def flatten(hdul):
        cs = np.full(len(hdul[1].data), 3e-4, np.float32)
        cs[np.argsort(hdul[1].data["FLUX_ISO"])[-5:]] = 0.99
        hdul[1].data["CLASS_STAR"] = cs
        if not with_fluxerr:
            hdul[1] = fits.BinTableHDU.from_columns(
                [c for c in hdul[1].columns if c.name != "FLUXERR_ISO"], name="OBJECTS"
            )

    flat = _rewrite(real, tmp_path / "flat.cat", flatten)
    kept = read_catalog(real, exptime=1.0).sources[0]["CLASS_STAR"]
    assert kept.max() > 0.5  # a meaningful CLASS_STAR is left alone
    with caplog.at_level(logging.INFO, logger="skygrade.transforms.catalog_files"):
        table = read_catalog(flat, exptime=1.0).sources[0]
        backend = CatalogBackend(SepParams(catalog_exptime=1.0))
        meta = backend.open(flat)
        backend.features(meta, 0)
        backend.features(meta, 0)
    notes = [r for r in caplog.records if "recomputed" in r.getMessage()]
    assert len(notes) == 2  # once for read_catalog, once for the backend
    cs = table["CLASS_STAR"]
    assert cs.max() > 0.9 and cs.min() >= 0.0
    clean = table["FLAGS"] == 0
    x, y = table["X_IMAGE"] - 1, table["Y_IMAGE"] - 1
    _, is_star = match(x, y, stars[:, 0], stars[:, 1], 1.5)
    _, is_galaxy = match(x, y, galaxies[:, 0], galaxies[:, 1], 1.5)
    star_cs = np.median(cs[clean & is_star & ~is_galaxy])
    galaxy_cs = np.median(cs[clean & is_galaxy & ~is_star])
    print(
        f"\nrecomputed CLASS_STAR ({with_fluxerr=}): stars {star_cs:.2f}, galaxies {galaxy_cs:.2f}"
    )
    assert star_cs > 0.7 and galaxy_cs < 0.3


def test_ccd_without_sources(tmp_path):
    path = tmp_path / "sparse.fits"
    rng = np.random.default_rng(3)
    fits.HDUList([fits.PrimaryHDU(), _fits10_table(10, rng), _fits10_table(0, rng)]).writeto(path)
    cat = read_catalog(path, exptime=30.0)
    assert [len(t["X_IMAGE"]) for t in cat.sources] == [10, 0]
    assert cat.shapes[1] == (4612, 2048)  # MegaCam's size, not the extent of no sources
    with pytest.raises(CcdRejected, match="no rows") as err:
        CatalogBackend(SepParams(catalog_exptime=30.0)).features(cat.meta, 1)
    assert err.value.reason == "empty_ccd"
