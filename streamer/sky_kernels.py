"""Pixel kernels of the simulated MegaCam: the PSF, smeared by tracking, and galaxy stamps.

A region of a CCD gets a :class:`_KernelSet` from :func:`_build_kernels`: the PSF (elliptical
Moffat, beta 2-5, or Kolmogorov, the long-exposure atmosphere with wings falling as
r**(-11/3)) convolved with the tracking path, integrated over pixels at sub-pixel phases (the
compact kernel), on a wider grid for bright stars (the wide kernel), and convolved with galaxy
profiles (Gaussian, exponential and de Vaucouleurs templates). Nothing here draws a random
number: the kernels are a function of their arguments.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

_MAX_HALF = 110  # cap on a kernel's half size, pixels


# --------------------------------------------------------------------------------------------
# PSF and tracking kernels
# --------------------------------------------------------------------------------------------


def _moffat_alpha(fwhm: float, beta: float) -> float:
    return fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))


def _rotated(x: np.ndarray, y: np.ndarray, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    t = math.radians(angle_deg)
    c, s = math.cos(t), math.sin(t)
    return x * c + y * s, -x * s + y * c


def _moffat_grid(
    n: int, step: float, fwhm: float, beta: float, ellip: float, angle: float
) -> np.ndarray:
    """Elliptical Moffat sampled on an ``n x n`` grid centred on the middle sample."""
    coords = (np.arange(n) - (n - 1) / 2.0) * step
    x, y = np.meshgrid(coords, coords)
    xr, yr = _rotated(x, y, angle)
    q = max(1.0 - ellip, 0.05)
    alpha = _moffat_alpha(fwhm, beta)
    r2 = (xr / (alpha / math.sqrt(q))) ** 2 + (yr / (alpha * math.sqrt(q))) ** 2
    return (1.0 + r2) ** (-beta)


@functools.cache
def _kolmogorov_profile() -> tuple[np.ndarray, np.ndarray]:
    """Radial profile of the long-exposure Kolmogorov PSF: (radius / FWHM, peak-normalised).

    The inverse Fourier transform of the atmospheric transfer function
    ``exp(-3.44 (f lambda / r0)**(5/3))`` on a 2048^2 grid with 16 samples per FWHM (FWHM ~
    0.976 lambda / r0), read along one axis; the radius is rescaled so that the half maximum
    lies at exactly 0.5 FWHM. Computed once per process (~0.3 s).
    """
    n, per_fwhm = 2048, 16.0
    lam_r0 = per_fwhm / 0.976  # samples
    f = np.fft.fftfreq(n)
    k = np.hypot(f[:, None], f[None, :])
    psf = np.fft.fftshift(np.fft.ifft2(np.exp(-3.44 * (k * lam_r0) ** (5.0 / 3.0))).real)
    prof = psf[n // 2, n // 2 :]
    prof = np.clip(prof / prof[0], 0.0, None)
    r = np.arange(prof.size) / per_fwhm
    i = int(np.argmax(prof < 0.5))
    r_half = r[i - 1] + (prof[i - 1] - 0.5) / (prof[i - 1] - prof[i]) * (r[i] - r[i - 1])
    return r * (0.5 / r_half), prof


def _psf_grid(
    n: int, step: float, fwhm: float, beta: float, ellip: float, angle: float, model: str
) -> np.ndarray:
    """Elliptical PSF of the plan's model sampled on an ``n x n`` grid (centred as Moffat's)."""
    if model == "moffat":
        return _moffat_grid(n, step, fwhm, beta, ellip, angle)
    coords = (np.arange(n) - (n - 1) / 2.0) * step
    x, y = np.meshgrid(coords, coords)
    xr, yr = _rotated(x, y, angle)
    q = max(1.0 - ellip, 0.05)
    r = np.hypot(xr * math.sqrt(q), yr / math.sqrt(q)) / fwhm
    radius, prof = _kolmogorov_profile()
    return np.interp(r, radius, prof, right=0.0)


def _deposit(step: float, path: np.ndarray) -> np.ndarray:
    """Bilinear deposit of equally weighted path points (pixels) on a grid of odd size.

    The grid has spacing ``step`` and its origin at the central sample; the result sums to 1.
    """
    half = int(math.ceil(np.max(np.abs(path)) / step)) + 1
    n = 2 * half + 1
    img = np.zeros(n * n, dtype=np.float64)
    gx = path[:, 0] / step + half
    gy = path[:, 1] / step + half
    ix = np.floor(gx).astype(np.int64)
    iy = np.floor(gy).astype(np.int64)
    fx = gx - ix
    fy = gy - iy
    for dy, dx, w in (
        (0, 0, (1 - fx) * (1 - fy)),
        (0, 1, fx * (1 - fy)),
        (1, 0, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        yy = np.clip(iy + dy, 0, n - 1)
        xx = np.clip(ix + dx, 0, n - 1)
        img += np.bincount(yy * n + xx, weights=w, minlength=n * n)
    return img.reshape(n, n) / img.sum()


def _convolve_same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Linear convolution of ``a`` with ``b`` (odd size, origin at its centre), ``a``-shaped."""
    na, nb = a.shape[0], b.shape[0]
    size = na + nb - 1
    size += size % 2
    full = np.fft.irfft2(
        np.fft.rfft2(a, (size, size)) * np.fft.rfft2(b, (size, size)), (size, size)
    )
    h = nb // 2
    out = full[h : h + na, h : h + na]
    return np.clip(out, 0.0, None)


def _bin(img: np.ndarray, os_: int) -> np.ndarray:
    n = img.shape[0] // os_
    return img[: n * os_, : n * os_].reshape(n, os_, n, os_).sum(axis=(1, 3))


@dataclass
class _KernelSet:
    """Pixel kernels of one CCD region: compact with sub-pixel phases, wide, galaxy templates."""

    oversample: int
    core: list[np.ndarray]  # index qy * os + qx, phases q in [-os/2, os/2)
    core_half: int
    wide: np.ndarray
    wide_half: int
    galaxies: list[np.ndarray]
    galaxy_half: list[int]


def _path_extent(path: np.ndarray | None) -> float:
    if path is None or len(path) == 0:
        return 0.0
    return float(np.max(np.abs(path)))


def _build_kernels(
    fwhm: float,
    beta: float,
    ellip: float,
    angle: float,
    path: np.ndarray | None,
    galaxy_shapes: np.ndarray,
    model: str = "moffat",
) -> _KernelSet:
    """Build the kernels of one region: PSF (``model``) convolved with the tracking path."""
    extent = _path_extent(path)
    core_half = min(_MAX_HALF, int(math.ceil(3.0 * fwhm + extent + 2)))
    os_ = 4 if core_half <= 24 else 2 if core_half <= 60 else 1
    n = (2 * core_half + 1) * os_
    step = 1.0 / os_
    psf = _psf_grid(n, step, fwhm, beta, ellip, angle, model)
    if path is not None and extent > 0.05:
        psf = _convolve_same(psf, _deposit(step, path))
    # The oversampled grid is centred on the centre of pixel h; phase q (a sub-pixel shift of
    # q/os, q in [-os/2, os/2)) is a roll by q samples before binning.
    core: list[np.ndarray] = []
    for qy in range(-(os_ // 2), os_ - os_ // 2):
        for qx in range(-(os_ // 2), os_ - os_ // 2):
            shifted = np.roll(psf, (qy, qx), (0, 1))
            k = _bin(shifted, os_)
            core.append((k / k.sum()).astype(np.float32))
    # Phase-0 pixel kernel for galaxies and the wide kernel.
    pix0 = core[(os_ // 2) * os_ + (os_ // 2)].astype(np.float64)
    wide_half = min(_MAX_HALF, int(math.ceil(12.0 * fwhm + extent + 2)))
    nw = 2 * wide_half + 1
    wide = _psf_grid(nw, 1.0, fwhm, beta, ellip, angle, model)
    if path is not None and extent > 0.05:
        wide = _convolve_same(wide, _deposit(1.0, path))
    wide = (wide / wide.sum()).astype(np.float32)
    galaxies: list[np.ndarray] = []
    galaxy_half: list[int] = []
    for size, q, pa, profile in galaxy_shapes:
        extra = int(math.ceil(_GALAXY_EXTENT[int(profile)] * size))
        gh = min(_MAX_HALF, core_half + extra)
        coords = np.arange(2 * extra + 1, dtype=np.float64) - extra
        x, y = np.meshgrid(coords, coords)
        xr, yr = _rotated(x, y, pa)
        gal = _galaxy_profile(np.hypot(xr / size, yr / (size * q)), int(profile))
        padded = np.pad(pix0, extra)
        g = _convolve_same(padded, gal / gal.sum())
        if gh < core_half + extra:
            cut = core_half + extra - gh
            g = g[cut:-cut, cut:-cut]
        galaxies.append((g / g.sum()).astype(np.float32))
        galaxy_half.append(gh)
    return _KernelSet(os_, core, core_half, wide, wide_half, galaxies, galaxy_half)


# --------------------------------------------------------------------------------------------
# Galaxy profiles
# --------------------------------------------------------------------------------------------


_GALAXY_EXTENT = (3.5, 6.0, 8.0)
"""Stamp half-size, in units of the profile's size, of each galaxy profile."""


def _galaxy_profile(r: np.ndarray, profile: int) -> np.ndarray:
    """Galaxy surface brightness at elliptical radius ``r`` (in units of the profile's size):
    0 Gaussian (``size`` = sigma), 1 exponential disc (``size`` = scale length), 2 de
    Vaucouleurs (Sersic n = 4; ``size`` = effective radius / 4, its core as compact as an
    exponential's)."""
    if profile == 0:
        return np.exp(-0.5 * r**2)
    if profile == 1:
        return np.exp(-r)
    return np.exp(-7.669 * ((r / 4.0) ** 0.25 - 1.0)) * (r <= 8.0)
