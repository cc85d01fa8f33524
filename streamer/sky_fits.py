"""The simulated MegaCam's FITS files: headers, the multi-extension file, its bytes on disk.

:func:`render_exposure` renders an :class:`~skygrade.streamer.sky_plan.ExposurePlan` into a
MegaCam-like multi-extension FITS: an empty PRIMARY HDU (the exposure's headers and its ground
truth, ``SIM*``) and one uint16 image extension per CCD (stored as int16 with ``BZERO = 32768``).
Rendering is a pure function of the plan, so the same plan always gives byte-identical files
(:func:`exposure_bytes`, :func:`write_exposure`).
"""

from __future__ import annotations

import io
import logging
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from astropy.io import fits

from skygrade.ops.files import atomic_write_bytes
from skygrade.streamer.sky_context import _context
from skygrade.streamer.sky_plan import PIXEL_SCALE, ExposurePlan, Geometry
from skygrade.streamer.sky_render import _render_ccd

log = logging.getLogger(__name__)


def _primary_header(plan: ExposurePlan, geometry: Geometry) -> fits.Header:
    h = fits.Header()
    h["INSTRUME"] = ("MegaPrime", "simulated CFHT MegaCam")
    h["TELESCOP"] = "CFHT 3.6m"
    h["OBSTYPE"] = "OBJECT"
    h["EXPNUM"] = (plan.expnum, "exposure number")
    h["OBJECT"] = plan.object
    h["FILTER"] = plan.filter
    h["EXPTIME"] = (float(plan.exptime), "exposure time [s]")
    h["DATE-OBS"] = (_isot(plan.date_obs), "start of exposure, UTC")
    h["AIRMASS"] = float(plan.airmass)
    h["RA"] = (float(plan.ra), "pointing RA [deg]")
    h["DEC"] = (float(plan.dec), "pointing Dec [deg]")
    h["PIXSCAL"] = (PIXEL_SCALE, "arcsec per pixel")
    h["NEXTEND"] = (geometry.n_ccd, "number of image extensions")
    h["SIMCLASS"] = (plan.label, "simulation truth: image-quality class")
    h["SIMSEED"] = (plan.seed, "simulation seed")
    h["SIMSEEIN"] = (round(plan.seeing, 4), "truth: FWHM at field centre [arcsec]")
    h["SIMBETA"] = (round(plan.beta, 4), "truth: Moffat beta")
    h["SIMPSF"] = (plan.psf_model, "truth: PSF model")
    h["SIMAMP"] = (round(plan.amp_offset, 3), "truth: amplifier offset scale [ADU]")
    h["SIMTRMOD"] = (plan.trail_mode, "truth: tracking error model")
    h["SIMJUMP"] = (round(plan.trail_jump, 3), "truth: exposure fraction after a jump")
    h["SIMASTIG"] = (round(plan.psf_astig, 4), "truth: PSF ellipticity at r=1 (astig)")
    h["SIMTRAIL"] = (round(plan.trail_length, 3), "truth: trail / walk length [px]")
    h["SIMTRANG"] = (round(plan.trail_angle, 3), "truth: trail direction [deg]")
    h["SIMROT"] = (round(plan.rotation, 3), "truth: rotation trail at r=1 [px]")
    h["SIMSKY"] = (round(plan.sky_factor, 4), "truth: sky factor vs dark sky")
    h["SIMGRAD"] = (round(plan.sky_gradient, 4), "truth: ln sky gradient across field")
    h["SIMSCAT"] = (round(plan.scatter, 4), "truth: scattered light amplitude")
    h["SIMCLOUD"] = (round(plan.cloud_min, 4), "truth: min cloud transmission")
    h["SIMCOVER"] = (round(plan.cloud_cover, 4), "truth: cloud cover fraction")
    h["SIMTRANS"] = (round(plan.transparency, 4), "truth: transparency")
    return h


def _isot(when: datetime) -> str:
    when = when.astimezone(UTC) if when.tzinfo else when
    tenths = round(when.microsecond / 100_000)
    base = when.replace(microsecond=0) + timedelta(seconds=tenths // 10)
    return f"{base:%Y-%m-%dT%H:%M:%S}.{tenths % 10}"


def render_exposure(plan: ExposurePlan, geometry: Geometry) -> fits.HDUList:
    """Render one exposure as a MegaCam-like multi-extension FITS in memory.

    Parameters
    ----------
    plan : ExposurePlan
        What to render (see :func:`plan_night`).
    geometry : Geometry
        Number and shape of the CCDs.

    Returns
    -------
    astropy.io.fits.HDUList
        An empty PRIMARY HDU (exposure and truth headers) and ``geometry.n_ccd`` uint16 image
        extensions ``ccd00``, ``ccd01``... (written as int16 with ``BZERO = 32768``).

    Examples
    --------
    >>> from skygrade.streamer.sky_plan import Geometry, plan_night
    >>> plan = plan_night("2024-03-01", 1, seed=1, class_mix={"GOOD": 1.0})[0]
    >>> hdul = render_exposure(plan, Geometry(2, 256, 256))
    >>> len(hdul), hdul[1].data.dtype
    (3, dtype('uint16'))
    """
    t0 = time.perf_counter()
    ctx = _context(plan, geometry)
    hdus: list[fits.PrimaryHDU | fits.ImageHDU] = [
        fits.PrimaryHDU(header=_primary_header(plan, geometry))
    ]
    for ccd in range(geometry.n_ccd):
        data, meta = _render_ccd(ctx, ccd)
        name = f"ccd{ccd:02d}"
        hdr = fits.Header()
        hdr["EXTNAME"] = name
        hdr["CCDNAME"] = name
        hdr["IMAGEID"] = (ccd, "CCD index")
        hdr["EXPNUM"] = plan.expnum
        hdr["GAIN"] = (meta.gain, "e-/ADU")
        hdr["RDNOISE"] = (meta.rdnoise, "read noise [e-]")
        hdr["SATURATE"] = (meta.saturate, "saturation level [ADU]")
        hdr["BIASLVL"] = (meta.bias, "bias pedestal [ADU]")
        hdr["SIMDEAD"] = (meta.dead, "truth: dead CCD")
        hdus.append(fits.ImageHDU(data=data, header=hdr))
    log.debug(
        "rendered exposure %d (%s, %d CCDs) in %.2f s",
        plan.expnum,
        plan.label,
        geometry.n_ccd,
        time.perf_counter() - t0,
    )
    return fits.HDUList(hdus)


def exposure_bytes(plan: ExposurePlan, geometry: Geometry) -> bytes:
    """The exact bytes of the exposure's FITS file (deterministic for a given plan).

    Parameters
    ----------
    plan : ExposurePlan
    geometry : Geometry

    Returns
    -------
    bytes
        The complete FITS file, a multiple of 2880 bytes.

    Examples
    --------
    >>> from skygrade.streamer.sky_plan import Geometry, plan_night
    >>> plan = plan_night("2024-03-01", 1, seed=1, class_mix={"GOOD": 1.0})[0]
    >>> len(exposure_bytes(plan, Geometry(1, 128, 128))) % 2880
    0
    """
    buf = io.BytesIO()
    render_exposure(plan, geometry).writeto(buf)
    return buf.getvalue()


def write_exposure(plan: ExposurePlan, geometry: Geometry, path: str | os.PathLike) -> Path:
    """Render an exposure and write it atomically (temporary name, then ``os.replace``).

    Parameters
    ----------
    plan : ExposurePlan
    geometry : Geometry
    path : path-like
        Destination file; its directory is created if needed.

    Returns
    -------
    pathlib.Path
        The path written.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from skygrade.streamer.sky_plan import Geometry, plan_night
    >>> plan = plan_night("2024-03-01", 1, seed=1, class_mix={"GOOD": 1.0})[0]
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> write_exposure(plan, Geometry(1, 128, 128), d / plan.filename).exists()
    True
    """
    path = Path(path)
    atomic_write_bytes(path, exposure_bytes(plan, geometry))
    return path
