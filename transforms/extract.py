"""Per-CCD source features of the method (Teimoorinia et al. 2020), from pixels or catalogs.

The feature table has SExtractor's names and semantics so that the SOM sees the same thing
whichever backend produced it:

===============  ==========================================================================
X_IMAGE, Y_IMAGE  barycentre, 1-based FITS pixels
ISO0              pixels above the detection threshold (SExtractor ISO0; sep ``tnpix``)
ELONGATION        A_IMAGE / B_IMAGE
ELLIPTICITY       1 - B_IMAGE / A_IMAGE
CLASS_STAR        stellarity in [0, 1] (sep: from the stellar locus, see :func:`stellarity`)
BACKGROUND        background map at the source's pixel (ADU)
FLAGS             SExtractor bits: 2 blended, 4 saturated, 8 truncated, 32 isophotal data
                  corrupted, 64 deblending overflow
FLUX, FLUX_MAX    isophotal flux and peak (ADU, background subtracted)
FLUX_RADIUS       half-light radius (pixels): as SExtractor, where the growth curve within
                  max(6 A_IMAGE, 3.5) reaches half of FLUX_AUTO (the flux in the Kron ellipse
                  2.5 r_kron, at least 3.5), capped at that radius (:func:`half_light_radius`)
A_IMAGE, B_IMAGE, THETA_IMAGE  second-moment ellipse (pixels, degrees)
===============  ==========================================================================

Backends are chosen by name from :data:`BACKENDS` (``sep`` default, ``sextractor``, ``catalog``).
"""

from __future__ import annotations

import importlib
import json
import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import sep

from skygrade.ops.config import ExtractConfig
from skygrade.transforms.ccd_checks import ccd_problem
from skygrade.transforms.ccd_pixels import read_ccd
from skygrade.transforms.exposure import read_meta
from skygrade.transforms.exposure_errors import ExposureError
from skygrade.transforms.fits_walk import check_integrity

log = logging.getLogger(__name__)

FEATURE_COLUMNS: tuple[str, ...] = (
    "X_IMAGE",
    "Y_IMAGE",
    "ISO0",
    "ELONGATION",
    "ELLIPTICITY",
    "CLASS_STAR",
    "BACKGROUND",
    "FLAGS",
    "FLUX",
    "FLUX_MAX",
    "FLUX_RADIUS",
    "A_IMAGE",
    "B_IMAGE",
    "THETA_IMAGE",
)
"""Columns of every feature table, in order."""

COLUMN_DTYPES: dict[str, type] = {c: np.float32 for c in FEATURE_COLUMNS} | {
    "ISO0": np.int32,
    "FLAGS": np.int32,
}

# SExtractor FLAGS bits.
FLAG_NEIGHBOURS, FLAG_BLENDED, FLAG_SATURATED, FLAG_TRUNCATED = 1, 2, 4, 8
FLAG_APER_CORRUPT, FLAG_ISO_CORRUPT, FLAG_DEBLEND_OVERFLOW, FLAG_EXTRACT_OVERFLOW = 16, 32, 64, 128
SATURATION_MARGIN = 0.98
"""A source is flagged saturated when its peak + background reaches this fraction of SATURATE
(pixels clipped exactly at SATURATE read a hair below it after background arithmetic)."""
BAD_FLAGS = ~(FLAG_NEIGHBOURS | FLAG_BLENDED)
"""Bits that make a detection unusable. Blended sources are kept: on trailed CCDs nearly all
sources are blended and the blended fraction is itself a signal."""


@dataclass(frozen=True)
class CcdFeatures:
    """The sources of one CCD and the context the SOM needs.

    ``sources`` maps each name of :data:`FEATURE_COLUMNS` to a 1-D array (all the same length).
    """

    exposure_id: str
    ccd: int
    n_ccd: int
    exptime: float
    width: int
    height: int
    sources: dict[str, np.ndarray] = field(repr=False)
    backend: str = "sep"
    extract_s: float = 0.0
    """Seconds spent reading and measuring this CCD."""
    pixels: np.ndarray | None = field(default=None, repr=False, compare=False)
    """The background-subtracted CCD image, kept only when asked (``keep_pixels``) so that the
    representative-image step cuts its stamps without reading the file again. Drop it before
    any shuffle: it is ~38 MB for a full CCD."""
    saturate: float | None = None
    """The CCD's SATURATE (ADU), for the choice of unsaturated PSF stars; None: unknown."""
    bias: float | None = None
    """The bias level still in the pixels (``BIASLVL``), taken off the sky; None: none."""
    physics: object | None = field(default=None, compare=False)
    """Seeing, PSF shape, sky and source counts
    (:class:`skygrade.transforms.psf_measure.CcdPhysics`), set by the per-CCD chain after extraction
    (:func:`skygrade.transforms.psf_measure.ccd_physics`); None when not measured."""

    @classmethod
    def of(
        cls,
        meta,
        ccd: int,
        width: int,
        height: int,
        sources,
        backend: str,
        pixels=None,
        saturate: float | None = None,
        bias: float | None = None,
    ):
        """The record of CCD ``ccd`` of the exposure described by ``meta`` (an ExposureMeta)."""
        return cls(
            exposure_id=meta.exposure_id,
            ccd=ccd,
            n_ccd=meta.n_ccd,
            exptime=float(meta.exptime),
            width=width,
            height=height,
            sources=sources,
            backend=backend,
            pixels=pixels,
            saturate=saturate,
            bias=bias,
        )

    @property
    def n_sources(self) -> int:
        return int(len(self.sources["X_IMAGE"]))

    def clean(self) -> np.ndarray:
        """Boolean mask of usable detections (not saturated, truncated or corrupted)."""
        return (self.sources["FLAGS"] & BAD_FLAGS) == 0


def empty_sources() -> dict[str, np.ndarray]:
    """A feature table with no rows."""
    return {c: np.zeros(0, dtype=COLUMN_DTYPES[c]) for c in FEATURE_COLUMNS}


def as_feature_table(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cast ``columns`` to :data:`COLUMN_DTYPES`, checking that all columns exist and agree."""
    missing = [c for c in FEATURE_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"feature table lacks column(s) {', '.join(missing)}")
    lengths = {len(columns[c]) for c in FEATURE_COLUMNS}
    if len(lengths) != 1:
        raise ValueError(f"feature columns differ in length: {sorted(lengths)}")
    return {c: np.ascontiguousarray(columns[c], dtype=COLUMN_DTYPES[c]) for c in FEATURE_COLUMNS}


# --------------------------------------------------------------------------- sep


SepParams = ExtractConfig
"""Extraction settings: the ``extract`` section of the configuration."""


_SEP_READY = False
PIXSTACK = 1_000_000
"""sep's active-pixel buffer for ordinary CCDs. Its cost is paid on every extract call
(5M cost ~0.1 s more per full CCD than 1M, measured), so it grows only when a CCD needs it."""
PIXSTACK_MAX = 20_000_000
"""The most a CCD may use (long trails, bright sky) before it is refused."""


def _configure_sep() -> None:
    """Set sep's buffers once per process (the sub-object limit of 1024 is too small for
    trailed CCDs, whose trails break into many pieces)."""
    global _SEP_READY
    if not _SEP_READY:
        sep.set_extract_pixstack(PIXSTACK)
        sep.set_sub_object_limit(4096)
        _SEP_READY = True


def _extract_growing(data, thresh, **kwargs):
    """``sep.extract``, retried with a larger pixel buffer when a CCD overflows it (trails
    and bright skies); the buffer goes back to :data:`PIXSTACK` afterwards."""
    stack = PIXSTACK
    try:
        while True:
            try:
                return sep.extract(data, thresh, **kwargs)
            except Exception as exc:
                if "pixel buffer full" not in str(exc) or stack >= PIXSTACK_MAX:
                    raise
                stack = min(stack * 4, PIXSTACK_MAX)
                log.debug("sep pixel buffer full; retrying with %d", stack)
                sep.set_extract_pixstack(stack)
    finally:
        if stack != PIXSTACK:
            sep.set_extract_pixstack(PIXSTACK)


def sep_features(
    data: np.ndarray, saturate: float | None = None, params: SepParams | None = None
) -> dict[str, np.ndarray]:
    """Extract sources from one CCD with sep and return the feature table.

    Parameters
    ----------
    data : np.ndarray
        2-D float32 image in native byte order (modified: the background is subtracted in place).
    saturate : float, optional
        Saturation level (ADU); sources reaching it get FLAGS bit 4.
    params : SepParams, optional
        Detection settings.

    Returns
    -------
    dict of np.ndarray
        The columns of :data:`FEATURE_COLUMNS`.

    Examples
    --------
    >>> img = np.random.default_rng(0).normal(100, 5, (256, 256)).astype(np.float32)
    >>> img[100:103, 100:103] += 500
    >>> table = sep_features(img)
    """
    if data.ndim != 2:
        raise ValueError(f"data must be a 2-D image, got shape {data.shape}")
    params = params or SepParams()
    _configure_sep()
    data = np.ascontiguousarray(data, dtype=np.float32)
    bkg = sep.Background(
        data,
        bw=params.back_size,
        bh=params.back_size,
        fw=params.back_filtersize,
        fh=params.back_filtersize,
    )
    back = bkg.back()
    rms = bkg.rms()
    data -= back
    objects = _extract_growing(
        data,
        params.thresh,
        err=rms,
        minarea=params.minarea,
        deblend_nthresh=params.deblend_nthresh,
        deblend_cont=params.deblend_cont,
        # SExtractor semantics: the threshold is DETECT_THRESH x the local RMS of the unfiltered
        # image, applied to the filtered image ('matched' with an RMS map was 30x slower here and
        # detected thousands of noise peaks).
        filter_type="conv",
    )
    # On bright, structured skies sep can return objects with zero flux whose moments are NaN
    # (seen on simulated BGP CCDs): they have no position, so they are not sources.
    finite = np.isfinite(objects["x"]) & np.isfinite(objects["y"])
    finite &= np.isfinite(objects["a"]) & np.isfinite(objects["b"])
    if not finite.all():
        log.debug("dropping %d detections with undefined moments", int((~finite).sum()))
        objects = objects[finite]
    if len(objects) == 0:
        warnings.warn("sep found no source on this CCD", RuntimeWarning, stacklevel=2)
        return empty_sources()

    x, y = objects["x"], objects["y"]
    a = np.maximum(objects["a"], 1e-3)
    b = np.maximum(objects["b"], 1e-3)
    flux = objects["flux"]
    iy = np.clip(np.rint(y).astype(np.intp), 0, data.shape[0] - 1)
    ix = np.clip(np.rint(x).astype(np.intp), 0, data.shape[1] - 1)
    background = back[iy, ix]

    radius, rflag = half_light_radius(data, x, y, a, b, objects["theta"])
    flags = _sextractor_flags(objects["flag"])
    if saturate is not None:
        flags[objects["peak"] + background >= SATURATION_MARGIN * saturate] |= FLAG_SATURATED
    # SExtractor's bit 16 (aperture data incomplete): the flux_radius aperture left the image.
    flags[(rflag & sep.APER_TRUNC) != 0] |= FLAG_APER_CORRUPT
    snr = flux / (rms[iy, ix] * np.sqrt(np.maximum(objects["tnpix"], 1)))
    columns = {
        "X_IMAGE": x + 1.0,
        "Y_IMAGE": y + 1.0,
        "ISO0": objects["tnpix"],
        "ELONGATION": a / b,
        "ELLIPTICITY": 1.0 - b / a,
        "CLASS_STAR": stellarity(radius, snr, flags),
        "BACKGROUND": background,
        "FLAGS": flags,
        "FLUX": flux,
        "FLUX_MAX": objects["peak"],
        "FLUX_RADIUS": radius,
        "A_IMAGE": a,
        "B_IMAGE": b,
        "THETA_IMAGE": np.degrees(objects["theta"]),
    }
    return as_feature_table(columns)


def half_light_radius(
    data: np.ndarray, x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray, theta
) -> tuple[np.ndarray, np.ndarray]:
    """SExtractor's FLUX_RADIUS (PHOT_FLUXFRAC 0.5) of sources on a background-subtracted image.

    SExtractor (``growth.c``) integrates the growth curve out to ``rlim = max(6 a, 3.5)`` and
    reads where it reaches half of FLUX_AUTO, the flux in the Kron ellipse of 2.5 Kron radii
    (at least 3.5, PHOT_AUTOPARAMS 2.5, 3.5), capping the radius at ``rlim``. Normalising by the
    isophotal flux instead, as this module once did, read radii 5-15% smaller than SExtractor's
    on the same CCD, enough to shift every CCD towards good seeing in a model trained on one and
    fed the other. The stellar sizes now agree within ~2% on simulated CCDs. The growth curve
    samples each pixel on a 3x3 grid (``subpix=3``): within 0.2% of 5x5 at 60% of its cost,
    where 1x1 reads 3% small.

    Returns
    -------
    radius, flags : np.ndarray
        Radii (pixels) and sep's aperture flags (``sep.APER_TRUNC``: the aperture left the
        image).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    a = np.asarray(a, np.float64)
    b = np.minimum(np.asarray(b, np.float64), a)
    theta = np.clip(np.asarray(theta, np.float64), -np.pi / 2, np.pi / 2)
    kron, _ = sep.kron_radius(data, x, y, a, b, theta, 6.0)
    kron = np.where(np.isfinite(kron) & (kron > 0), kron, 0.0)
    flux_auto, _, _ = sep.sum_ellipse(
        data, x, y, a, b, theta, np.maximum(2.5 * kron, 3.5), subpix=1
    )
    rlim = np.clip(6.0 * a, 3.5, 60.0)
    radius, rflag = sep.flux_radius(
        data, x, y, rlim, 0.5, normflux=np.where(flux_auto > 0, flux_auto, 1.0), subpix=3
    )
    return np.minimum(radius, rlim), rflag


def _sextractor_flags(sep_flags: np.ndarray) -> np.ndarray:
    """Map sep's object flags onto SExtractor's FLAGS bits."""
    out = np.zeros(len(sep_flags), dtype=np.int32)
    for sep_bit, sex_bit in (
        (sep.OBJ_MERGED, FLAG_BLENDED),
        (sep.OBJ_TRUNC, FLAG_TRUNCATED),
        (sep.OBJ_SINGU, FLAG_ISO_CORRUPT),
        (sep.OBJ_DOVERFLOW, FLAG_DEBLEND_OVERFLOW),
    ):
        out[(sep_flags & sep_bit) != 0] |= sex_bit
    return out


def stellarity(radius: np.ndarray, snr: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """A CLASS_STAR stand-in in [0, 1] from the stellar locus of half-light radius.

    Point sources share one half-light radius (the PSF's) at every flux; galaxies and trails lie
    above it. The locus radius ``r0`` is found among bright, unflagged sources (a robust mode),
    its width from their scatter; a source's stellarity is a Gaussian in its distance above the
    locus, with an allowance that grows at low signal-to-noise. Sources sharper than the PSF
    (cosmic rays, hot pixels) are penalised at half the rate.

    Parameters
    ----------
    radius : np.ndarray
        Half-light radius (pixels).
    snr : np.ndarray
        Signal-to-noise ratio of the detection.
    flags : np.ndarray
        SExtractor FLAGS; saturated and truncated sources are left out of the locus fit.

    Returns
    -------
    np.ndarray
        float32 stellarity, 1 on the locus, falling to 0 far above it.
    """
    radius = np.asarray(radius, dtype=np.float64)
    snr = np.asarray(snr, dtype=np.float64)
    out = np.full(len(radius), 0.5, dtype=np.float32)
    good = np.isfinite(radius) & (radius > 0) & ((flags & BAD_FLAGS) == 0)
    bright = good & (snr > 20)
    if bright.sum() < 5:
        bright = good & (snr > np.nanpercentile(snr[good], 50)) if good.sum() >= 5 else good
    if bright.sum() < 3:
        return out
    r0, spread = stellar_locus(radius[bright])
    sigma = np.sqrt(spread**2 + (r0 * 1.5 / np.maximum(snr, 1.0)) ** 2)
    dev = radius - r0
    z = np.where(dev > 0, dev / sigma, -dev / (2.0 * sigma))
    result = np.exp(-0.5 * z**2)
    result[~np.isfinite(result)] = 0.0
    return result.astype(np.float32)


def stellar_locus(r: np.ndarray) -> tuple[float, float]:
    """Robust mode and width of the densest low ridge of half-light radii."""
    logr = np.log(r)
    lo, hi = np.percentile(logr, [2, 80])
    if hi - lo < 1e-3:
        return float(np.exp(lo)), float(max(0.05 * np.exp(lo), 1e-3))
    hist, edges = np.histogram(logr, bins=30, range=(lo, hi))
    k = int(np.argmax(hist))
    center = 0.5 * (edges[k] + edges[k + 1])
    near = np.abs(logr - center) < 0.15
    r0 = float(np.exp(np.median(logr[near])))
    mad = float(np.median(np.abs(r[near] - r0))) * 1.4826
    return r0, max(mad, 0.03 * r0)


# --------------------------------------------------------------------------- backends


class CcdRejected(Exception):
    """A CCD that cannot yield features; becomes a per-CCD quarantine record."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class PixelBackend:
    """Base of the backends that measure sources on the CCD pixels (sep, sextractor).

    A backend is built once per worker process (``DoFn.setup``); :meth:`open` validates an
    exposure and reads its metadata, :meth:`features` measures one CCD.
    """

    name = "pixels"

    def open(self, path: str):
        """Integrity walk + metadata; raises ``ExposureError`` for a bad file."""
        check_integrity(path)
        return read_meta(path)

    def features(self, meta, ccd: int, keep_pixels: bool = False) -> CcdFeatures:
        """Read CCD ``ccd`` of ``meta.path`` and measure its sources.

        With ``keep_pixels`` the background-subtracted image rides along in the result.
        """
        try:
            # The file pinned when the exposure was opened, if it was (the daemon): its open
            # descriptor, never the name again (skygrade.transforms.confined_reads).
            pixels = read_ccd(
                meta.path,
                ccd,
                source=getattr(meta, "source", None),
                file_id=getattr(meta, "file_id", None),
            )
        except ExposureError as exc:
            raise CcdRejected(exc.reason, str(exc)) from exc
        problem = ccd_problem(pixels)
        if problem:
            raise CcdRejected(
                problem.split(":", 1)[0], f"{meta.path}: CCD {ccd} ({pixels.name}): {problem}"
            )
        height, width = pixels.data.shape
        table = self.measure(pixels, meta)
        pixels_kept = pixels.data if keep_pixels else None
        return CcdFeatures.of(
            meta,
            ccd,
            width,
            height,
            table,
            self.name,
            pixels_kept,
            saturate=pixels.saturate,
            bias=getattr(pixels, "bias", None),
        )

    def measure(self, pixels, meta) -> dict[str, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError


class SepBackend(PixelBackend):
    """sep (SExtractor's algorithms as a library), in process: the fast default."""

    name = "sep"

    def __init__(self, params: SepParams | None = None) -> None:
        self.params = params or SepParams()

    def measure(self, pixels, meta) -> dict[str, np.ndarray]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            table = sep_features(pixels.data, pixels.saturate, self.params)
        for w in caught:
            log.info("%s CCD %d: %s", meta.path, pixels.index, w.message)
        return table


BACKENDS: dict[str, str] = {
    "sep": "skygrade.transforms.extract:SepBackend",
    "sextractor": "skygrade.transforms.sextractor:SextractorBackend",
    "catalog": "skygrade.transforms.catalog_files:CatalogBackend",
}
"""Extraction backends by name (the ``extract.backend`` setting), as ``module:class`` so the
SExtractor module (which builds on this one) is imported only when chosen."""


def make_backend(name: str, params: SepParams | None = None):
    """Build the backend called ``name``.

    Raises
    ------
    ValueError
        For an unknown name; the message lists the valid ones.
    """
    try:
        module, _, cls = BACKENDS[name].partition(":")
    except KeyError:
        raise ValueError(
            f"unknown extraction backend {name!r}; valid backends: {', '.join(sorted(BACKENDS))}"
        ) from None
    return getattr(importlib.import_module(module), cls)(params)


# --------------------------------------------------------------------------- parquet


def features_to_arrow(ccds: list[CcdFeatures]):
    """One exposure's CCD feature records as an Arrow table (one row per source).

    Per-CCD context (exptime, CCD size, backend, source count, including CCDs with no source)
    is kept in the schema metadata under ``skygrade.ccds`` so :func:`features_from_arrow`
    restores the records exactly.
    """
    ccds = sorted(ccds, key=lambda c: c.ccd)
    n = [c.n_sources for c in ccds]
    columns = {
        "exposure_id": pa.array(
            np.repeat([c.exposure_id for c in ccds], n).astype(str), pa.string()
        ),
        "ccd": pa.array(np.repeat([c.ccd for c in ccds], n).astype(np.int16)),
    }
    for name in FEATURE_COLUMNS:
        parts = [c.sources[name] for c in ccds]
        columns[name] = pa.array(
            np.concatenate(parts) if parts else np.zeros(0, COLUMN_DTYPES[name])
        )
    context = [
        {
            "exposure_id": c.exposure_id,
            "ccd": c.ccd,
            "n_ccd": c.n_ccd,
            "exptime": c.exptime,
            "width": c.width,
            "height": c.height,
            "backend": c.backend,
            "n_sources": c.n_sources,
        }
        for c in ccds
    ]
    table = pa.table(columns)
    return table.replace_schema_metadata({"skygrade.ccds": json.dumps(context)})


def features_from_arrow(table) -> list[CcdFeatures]:
    """Inverse of :func:`features_to_arrow`."""
    meta = (table.schema.metadata or {}).get(b"skygrade.ccds")
    if meta is None:
        raise ValueError("not a skygrade feature table: schema metadata 'skygrade.ccds' missing")
    out, start = [], 0
    cols = {name: table.column(name).to_numpy() for name in FEATURE_COLUMNS}
    for ctx in json.loads(meta):
        stop = start + ctx["n_sources"]
        sources = {name: cols[name][start:stop].astype(COLUMN_DTYPES[name]) for name in cols}
        out.append(
            CcdFeatures(
                exposure_id=ctx["exposure_id"],
                ccd=ctx["ccd"],
                n_ccd=ctx["n_ccd"],
                exptime=ctx["exptime"],
                width=ctx["width"],
                height=ctx["height"],
                sources=sources,
                backend=ctx["backend"],
            )
        )
        start = stop
    return out
