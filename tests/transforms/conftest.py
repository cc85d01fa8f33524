"""Synthetic sky images and MegaCam-like MEF files for the transform tests.

Deliberately independent of the simulator (streamer/sky_*.py), so that extraction is
checked against a truth we construct here.
"""

import numpy as np
import pytest
from astropy.io import fits


def moffat(size, fwhm, beta=3.0, q=1.0, theta=0.0, dx=0.0, dy=0.0):
    """Unit-flux elliptical Moffat stamp (axis ratio q, angle theta)."""
    half = size // 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(float)
    x, y = x - dx, y - dy
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * x + s * y, (-s * x + c * y) / q
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    img = (1 + (u * u + v * v) / alpha**2) ** -beta
    return img / img.sum()


def sky_image(
    rng, shape=(600, 500), sky=800.0, n_stars=60, n_galaxies=30, fwhm=3.5, gain=1.6, rdnoise=5.0
):
    """Noisy image with stars and galaxies; returns (image float32, truth dict)."""
    h, w = shape
    img = np.full(shape, sky, dtype=np.float64)
    truth = {"x": [], "y": [], "flux": [], "star": []}
    size = 31
    half = size // 2
    for i in range(n_stars + n_galaxies):
        star = i < n_stars
        x, y = rng.uniform(half + 2, w - half - 2), rng.uniform(half + 2, h - half - 2)
        flux = 10 ** rng.uniform(3.3, 5.0)
        ix, iy = int(round(x)), int(round(y))
        if star:
            stamp = moffat(size, fwhm, dx=x - ix, dy=y - iy)
        else:
            stamp = moffat(
                size,
                fwhm * rng.uniform(2.2, 3.5),
                beta=1.5,
                q=rng.uniform(0.4, 0.9),
                theta=rng.uniform(0, np.pi),
                dx=x - ix,
                dy=y - iy,
            )
        img[iy - half : iy + half + 1, ix - half : ix + half + 1] += flux * stamp
        for k, v in zip(("x", "y", "flux", "star"), (x, y, flux, star), strict=True):
            truth[k].append(v)
    noisy = rng.normal(img, np.sqrt(img / gain + (rdnoise / gain) ** 2))
    return noisy.astype(np.float32), {k: np.array(v) for k, v in truth.items()}


def write_mef(path, ccds, expnum=2817001, exptime=120.0, date_obs="2026-11-25T06:12:33.4"):
    """Write CCD images as a MegaCam-like MEF (uint16 stored with BZERO=32768)."""
    primary = fits.PrimaryHDU()
    h = primary.header
    if expnum is not None:
        h["EXPNUM"] = expnum
    if exptime is not None:
        h["EXPTIME"] = exptime
    h["DATE-OBS"] = date_obs
    h["FILTER"] = "r"
    h["OBJECT"] = "TEST"
    h["NEXTEND"] = len(ccds)
    hdus = [primary]
    for i, data in enumerate(ccds):
        ext = fits.ImageHDU(np.clip(np.rint(data), 0, 65535).astype(np.uint16), name=f"ccd{i:02d}")
        ext.header["CCDNAME"] = f"ccd{i:02d}"
        ext.header["GAIN"] = 1.6
        ext.header["RDNOISE"] = 5.0
        ext.header["SATURATE"] = 65535.0
        hdus.append(ext)
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return str(path)


@pytest.fixture
def synth():
    """The synthetic-data helpers as a namespace."""

    class Synth:
        pass

    ns = Synth()
    ns.moffat, ns.sky_image, ns.write_mef = moffat, sky_image, write_mef
    return ns
