"""SExtractor as an extraction backend: running ``source-extractor`` on a CCD's pixels.

:class:`SextractorBackend` (``"sextractor"``) gives the same feature table as
:mod:`skygrade.transforms.extract` (SExtractor's names and semantics,
:data:`~skygrade.transforms.extract.FEATURE_COLUMNS`). It runs the ``source-extractor`` executable
on one CCD at a time: the CCD is written to a temporary FITS file with a generated configuration
(pixel scale, a seeing FWHM measured on the CCD, gain, saturation and the detection settings of
:class:`~skygrade.transforms.extract.SepParams`), and the FITS_1.0 catalog it writes is read back
and mapped by :func:`skygrade.transforms.catalog_files.catalog_columns_to_features`. The reference
implementation the sep backend is checked against; slower (a process, two files per CCD).

Archived SExtractor catalogs (the ``catalog`` backend) are read by
:mod:`skygrade.transforms.catalog_files`.
"""

from __future__ import annotations

import logging
import math
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import sep
from astropy.io import fits

from skygrade.transforms.catalog_files import (
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    catalog_columns_to_features,
)
from skygrade.transforms.extract import (
    SATURATION_MARGIN,
    PixelBackend,
    SepParams,
    empty_sources,
    stellar_locus,
)

__all__ = [
    "CATALOG_PARAMETERS",
    "PIXEL_SCALE",
    "SextractorBackend",
    "SextractorError",
    "estimate_seeing",
    "run_sextractor",
]

log = logging.getLogger(__name__)

#: MegaCam pixel scale (arcsec / pixel).
PIXEL_SCALE = 0.187
#: SEEING_FWHM (arcsec) given to SExtractor when the CCD has too few usable stars to measure it.
DEFAULT_SEEING = 0.8
#: Wall-clock limit of one SExtractor run on one CCD (seconds; a full CCD takes ~1 s).
SEXTRACTOR_TIMEOUT_S = 300.0
#: The parameter file of :class:`SextractorBackend` (FLUXERR_ISO feeds the S/N of stellarity).
CATALOG_PARAMETERS: tuple[str, ...] = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, "FLUXERR_ISO")

# The 3x3 "all-ground" pyramid of SExtractor's default.conv (FWHM = 2 pixels), normalised.
_DEFAULT_CONV = (
    "CONV NORM\n# 3x3 all-ground convolution mask with FWHM = 2 pixels.\n1 2 1\n2 4 2\n1 2 1\n"
)
_NNW = "/usr/share/source-extractor/default.nnw"


class SextractorError(RuntimeError):
    """SExtractor could not be run on a CCD, or failed on it (names binary, CCD and stderr)."""


def estimate_seeing(
    data: np.ndarray, saturate: float | None = None, *, size: int = 1024
) -> float | None:
    """Seeing FWHM (arcsec) of a CCD from its bright, unsaturated, isolated stars.

    A quick sep pass at 10 sigma on a central ``size`` x ``size`` sub-image; for each compact
    unflagged source peaking between 50 sigma and half the saturation level, the FWHM is
    ``2 sqrt(A / pi)`` with ``A`` the pixels above half the peak (SExtractor's FWHM_IMAGE
    definition, independent of the profile shape); the seeing is the stellar locus (robust mode)
    of those FWHMs.

    Parameters
    ----------
    data : np.ndarray
        2-D image (not modified).
    saturate : float, optional
        Saturation level (ADU).
    size : int, optional
        Side of the central sub-image.

    Returns
    -------
    float or None
        FWHM in arcsec, or ``None`` with fewer than 5 usable stars.

    Examples
    --------
    >>> estimate_seeing(np.zeros((64, 64), np.float32)) is None
    True
    """

    height, width = data.shape
    y0, x0 = max(0, (height - size) // 2), max(0, (width - size) // 2)
    sub = np.array(data[y0 : y0 + size, x0 : x0 + size], dtype=np.float32, order="C")
    finite = np.isfinite(sub)
    if min(sub.shape) < 64 or finite.mean() < 0.5:
        return None
    if not finite.all():
        sub[~finite] = np.median(sub[finite])
    bkg = sep.Background(sub, bw=64, bh=64)
    sub -= bkg.back()
    sigma = float(bkg.globalrms)
    if not sigma > 0:
        return None
    try:
        objects = sep.extract(sub, 10.0, err=sigma, minarea=5)
    except Exception as exc:  # sep raises plain Exception on buffer overflows
        log.debug("seeing estimate: sep failed: %s", exc)
        return None
    top = np.inf if saturate is None else 0.5 * (saturate - float(bkg.globalback))
    keep = (objects["flag"] == 0) & (objects["peak"] > 50 * sigma) & (objects["peak"] < top)
    keep &= objects["a"] / np.maximum(objects["b"], 1e-3) < 1.5
    fwhm = []
    for obj in objects[keep][:400]:
        iy, ix = int(round(obj["y"])), int(round(obj["x"]))
        cut = sub[max(0, iy - 12) : iy + 13, max(0, ix - 12) : ix + 13]
        peak = float(cut.max())
        area = int(np.count_nonzero(cut > 0.5 * peak))
        fwhm.append(2.0 * math.sqrt(area / math.pi))
    fwhm_px = np.asarray(fwhm)
    fwhm_px = fwhm_px[fwhm_px > 1.5]  # cosmic rays and hot pixels
    if len(fwhm_px) < 5:
        return None
    r0, _ = stellar_locus(fwhm_px)
    return float(r0 * PIXEL_SCALE)


def _config_text(
    params: SepParams, catalog: str, seeing: float, gain: float | None, saturate: float | None
) -> str:
    settings = {
        "CATALOG_NAME": catalog,
        "CATALOG_TYPE": "FITS_1.0",
        "PARAMETERS_NAME": "skygrade.param",
        "DETECT_TYPE": "CCD",
        "DETECT_MINAREA": str(int(params.minarea)),
        "THRESH_TYPE": "RELATIVE",
        "DETECT_THRESH": repr(float(params.thresh)),
        "ANALYSIS_THRESH": repr(float(params.thresh)),
        "FILTER": "Y",
        "FILTER_NAME": "skygrade.conv",
        "DEBLEND_NTHRESH": str(int(params.deblend_nthresh)),
        "DEBLEND_MINCONT": repr(float(params.deblend_cont)),
        "CLEAN": "Y",
        "CLEAN_PARAM": "1.0",
        "MASK_TYPE": "CORRECT",
        "PHOT_FLUXFRAC": "0.5",
        # Keep the default SATUR_KEY / GAIN_KEY (SATURATE / GAIN): SExtractor 2.25 takes a
        # garbage level (~4e88) when SATUR_KEY names a keyword the header lacks. The temporary
        # image carries the same values in its header.
        "SATUR_LEVEL": repr(SATURATION_MARGIN * saturate) if saturate is not None else "1e30",
        "SATUR_KEY": "SATURATE",
        "GAIN": repr(float(gain)) if gain else "0.0",
        "GAIN_KEY": "GAIN",
        "PIXEL_SCALE": repr(PIXEL_SCALE),
        "SEEING_FWHM": f"{seeing:.4f}",
        "STARNNW_NAME": _NNW,
        "BACK_TYPE": "AUTO",
        "BACK_SIZE": str(int(params.back_size)),
        "BACK_FILTERSIZE": str(int(params.back_filtersize)),
        "BACKPHOTO_TYPE": "GLOBAL",
        "CHECKIMAGE_TYPE": "NONE",
        # sep is configured the same way (extract._configure_sep): trailed CCDs need the room.
        "MEMORY_OBJSTACK": "50000",
        "MEMORY_PIXSTACK": "5000000",
        "MEMORY_BUFSIZE": "1024",
        "VERBOSE_TYPE": "QUIET",
        "WRITE_XML": "N",
        "NTHREADS": "1",
    }
    return "".join(f"{key:<18}{value}\n" for key, value in settings.items())


def run_sextractor(
    data: np.ndarray,
    *,
    params: SepParams | None = None,
    gain: float | None = None,
    saturate: float | None = None,
    seeing: float | None = None,
    label: str = "CCD",
    timeout: float = SEXTRACTOR_TIMEOUT_S,
) -> dict[str, np.ndarray]:
    """Run SExtractor on one 2-D image and return its FITS_1.0 catalog's columns.

    Parameters
    ----------
    data : np.ndarray
        The CCD (written as float32; not modified).
    params : SepParams, optional
        Detection settings and ``sextractor_binary``.
    gain, saturate : float, optional
        GAIN (e-/ADU; 0 or None = infinite) and the saturation level (ADU); SATUR_LEVEL is
        :data:`SATURATION_MARGIN` times it.
    seeing : float, optional
        SEEING_FWHM (arcsec); measured with :func:`estimate_seeing` when not given, else
        :data:`DEFAULT_SEEING`.
    label : str, optional
        What the image is, for error messages (``"path CCD 3 (ccd03)"``).
    timeout : float, optional
        Seconds before the run is killed.

    Returns
    -------
    dict of np.ndarray
        The columns of :data:`CATALOG_PARAMETERS` by name, native byte order.

    Raises
    ------
    SextractorError
        The binary is missing, exits non-zero, times out or writes no catalog; the message
        names the binary, ``label`` and SExtractor's stderr.

    Examples
    --------
    >>> cat = run_sextractor(img, saturate=65535.0)  # doctest: +SKIP
    >>> cat["ISO0"][:3]
    array([12, 40, 7], dtype=int32)
    """
    params = params or SepParams()
    binary = shutil.which(params.sextractor_binary)
    if binary is None:
        raise SextractorError(
            f"{label}: SExtractor binary {params.sextractor_binary!r} not found on PATH "
            "(apt-get install source-extractor, or set extract.sextractor_binary)"
        )
    if data.ndim != 2:
        raise ValueError(f"data must be a 2-D image, got shape {data.shape}")
    if seeing is None:
        seeing = estimate_seeing(data, saturate)
        if seeing is None:
            log.debug('%s: too few stars to measure the seeing, using %g"', label, DEFAULT_SEEING)
            seeing = DEFAULT_SEEING
    with tempfile.TemporaryDirectory(prefix="skygrade-sex-") as tmp:
        work = Path(tmp)
        image, catalog = work / "ccd.fits", work / "ccd.cat"
        header = fits.Header()
        if saturate is not None:
            header["SATURATE"] = SATURATION_MARGIN * float(saturate)
        if gain:
            header["GAIN"] = float(gain)
        fits.PrimaryHDU(np.asarray(data, dtype=np.float32), header=header).writeto(image)
        (work / "skygrade.param").write_text("\n".join(CATALOG_PARAMETERS) + "\n")
        (work / "skygrade.conv").write_text(_DEFAULT_CONV)
        (work / "skygrade.sex").write_text(
            _config_text(params, catalog.name, seeing, gain, saturate)
        )
        cmd = [binary, image.name, "-c", "skygrade.sex"]
        try:
            proc = subprocess.run(
                cmd, cwd=work, capture_output=True, text=True, timeout=timeout, check=True
            )
        except subprocess.CalledProcessError as exc:
            raise SextractorError(
                f"{label}: {binary} exited with status {exc.returncode}: "
                f"{(exc.stderr or '').strip()[-2000:]}"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise SextractorError(
                f"{label}: {binary} ran past {timeout:g} s: {_text(exc.stderr).strip()[-2000:]}"
            ) from exc
        if not catalog.exists():
            raise SextractorError(
                f"{label}: {binary} wrote no catalog: {proc.stderr.strip()[-2000:]}"
            )
        with fits.open(catalog, memmap=False) as hdul:
            table = hdul[-1].data
            if table is None or len(table) == 0:
                return _empty_catalog()
            return {
                name: np.array(table[name], dtype=table[name].dtype.newbyteorder("="))
                for name in table.dtype.names
            }


def _text(raw) -> str:
    if raw is None:
        return ""
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


def _empty_catalog() -> dict[str, np.ndarray]:
    return {
        c: np.zeros(0, np.int32 if c in ("ISO0", "FLAGS") else np.float32)
        for c in CATALOG_PARAMETERS
    }


class SextractorBackend(PixelBackend):
    """The ``sextractor`` backend: SExtractor itself, one process per CCD.

    Parameters
    ----------
    params : SepParams, optional
        The same detection settings as the sep backend, and ``sextractor_binary``.

    Notes
    -----
    The seeing FWHM passed to SExtractor (it drives CLASS_STAR) is measured on each CCD by
    :func:`estimate_seeing`, falling back to :data:`DEFAULT_SEEING`. FLAGS bit 4 (saturated)
    is set from ``pixels.saturate`` (SATUR_LEVEL = :data:`SATURATION_MARGIN` x it, as sep).
    """

    name = "sextractor"

    def __init__(self, params: SepParams | None = None) -> None:
        self.params = params or SepParams()

    def measure(self, pixels, meta) -> dict[str, np.ndarray]:
        """Run SExtractor on ``pixels.data`` and return the feature table.

        Raises
        ------
        SextractorError
            As :func:`run_sextractor`.
        """
        label = f"{meta.path}: CCD {pixels.index} ({pixels.name})"
        start = time.perf_counter()
        table = run_sextractor(
            pixels.data,
            params=self.params,
            gain=pixels.gain,
            saturate=pixels.saturate,
            label=label,
        )
        log.debug(
            "%s: SExtractor found %d sources in %.2f s", label, len(table["X_IMAGE"]), _since(start)
        )
        if len(table["X_IMAGE"]) == 0:
            log.info("%s: SExtractor found no source", label)
            return empty_sources()
        return catalog_columns_to_features(table, where=label)


def _since(start: float) -> float:
    return time.perf_counter() - start
