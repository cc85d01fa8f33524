"""SExtractor catalogs as input: the catalog format, reading it, and the ``catalog`` backend.

The feature table is the one of :mod:`skygrade.transforms.extract` (SExtractor's names and
semantics,
:data:`~skygrade.transforms.extract.FEATURE_COLUMNS`). :func:`catalog_columns_to_features` maps a
catalog's columns onto it, for archived catalogs here and for the catalogs
:mod:`skygrade.transforms.sextractor` has SExtractor write.

:class:`CatalogBackend` (``"catalog"``)
    Reads archived SExtractor catalogs, for nights whose pixels are gone: FITS_1.0 (an empty
    PRIMARY + one ``OBJECTS`` table per CCD) or FITS_LDAC (``LDAC_IMHEAD`` + ``LDAC_OBJECTS``
    pairs, the image header kept as a character array). :func:`read_catalog` reads a whole file.

Catalog columns
---------------
Required: ``X_IMAGE Y_IMAGE ISO0 ELONGATION ELLIPTICITY CLASS_STAR BACKGROUND FLAGS`` (the
method's features); ``ELONGATION`` / ``ELLIPTICITY`` may instead be derived from ``A_IMAGE`` and
``B_IMAGE``. Optional, NaN when absent: ``FLUX_ISO`` (-> ``FLUX``), ``FLUX_MAX``, ``FLUX_RADIUS``,
``A_IMAGE``, ``B_IMAGE``, ``THETA_IMAGE``.

``CLASS_STAR`` in real archived catalogs is ~3e-4 for every source (SExtractor was run with a wrong
``SEEING_FWHM``; docs/model.md, "Real SExtractor catalogs"). When the median ``CLASS_STAR`` of a
CCD is below :data:`CLASS_STAR_FLOOR` and ``FLUX_RADIUS`` and ``FLUX_ISO`` are present, it is
recomputed with :func:`skygrade.transforms.extract.stellarity`, as the sep backend does.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

from skygrade.transforms.exposure import (
    NIGHT_PATTERN,
    ExposureMeta,
    exposure_id_from_path,
    observing_night,
    parse_date_obs,
    parse_expnum,
)
from skygrade.transforms.exposure_errors import ExposureError
from skygrade.transforms.extract import (
    CcdFeatures,
    CcdRejected,
    SepParams,
    as_feature_table,
    empty_sources,
    stellarity,
)
from skygrade.transforms.fits_header import header_float, header_str, header_value

__all__ = [
    "CLASS_STAR_FLOOR",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "Catalog",
    "CatalogBackend",
    "catalog_columns_to_features",
    "read_catalog",
]

log = logging.getLogger(__name__)

#: (width, height) of a MegaCam CCD: the size of a catalog's CCDs when no header gives it.
MEGACAM_CCD_SHAPE = (2048, 4612)
#: A CCD whose median CLASS_STAR is below this has a meaningless CLASS_STAR (recomputed). A
#: SExtractor run with a correct SEEING_FWHM gives faint sources ~0.5 and stars ~1; one with a
#: wrong SEEING_FWHM gives ~3e-4 to almost every source, and ~1 to a few saturated stars.
CLASS_STAR_FLOOR = 0.01

#: Columns a catalog must have (ELONGATION / ELLIPTICITY may come from A_IMAGE / B_IMAGE).
REQUIRED_COLUMNS: tuple[str, ...] = (
    "X_IMAGE",
    "Y_IMAGE",
    "ISO0",
    "ELONGATION",
    "ELLIPTICITY",
    "CLASS_STAR",
    "BACKGROUND",
    "FLAGS",
)
#: Optional SExtractor column -> feature column; NaN when the catalog lacks it.
OPTIONAL_COLUMNS: dict[str, str] = {
    "FLUX_ISO": "FLUX",
    "FLUX_MAX": "FLUX_MAX",
    "FLUX_RADIUS": "FLUX_RADIUS",
    "A_IMAGE": "A_IMAGE",
    "B_IMAGE": "B_IMAGE",
    "THETA_IMAGE": "THETA_IMAGE",
}


# --------------------------------------------------------------------------- column mapping


def catalog_columns_to_features(table, *, where: str = "catalog") -> dict[str, np.ndarray]:
    """Map SExtractor catalog columns onto the feature table.

    Parameters
    ----------
    table : mapping or numpy structured array or astropy table / FITS_rec
        Columns by SExtractor name (``table[name]`` and ``name in columns``).
    where : str, optional
        Where the table comes from (``"path: HDU n"``), used in error messages.

    Returns
    -------
    dict of np.ndarray
        The columns of :data:`~skygrade.transforms.extract.FEATURE_COLUMNS`, cast by
        :func:`~skygrade.transforms.extract.as_feature_table`.

    Raises
    ------
    KeyError
        A required column is missing; the message names it and ``where``.

    Examples
    --------
    >>> cols = {c: np.ones(3) for c in REQUIRED_COLUMNS}
    >>> catalog_columns_to_features(cols)["FLUX"]
    array([nan, nan, nan], dtype=float32)
    """
    names = _column_names(table)
    n = len(table[next(iter(names))]) if names else 0
    has_axes = "A_IMAGE" in names and "B_IMAGE" in names
    for name in REQUIRED_COLUMNS:
        if name in names:
            continue
        if name in ("ELONGATION", "ELLIPTICITY") and has_axes:
            continue
        raise KeyError(f"{where}: required column {name} is missing (has: {', '.join(names)})")

    def col(name: str) -> np.ndarray:
        # Native byte order float64 (FITS tables are big-endian).
        return np.asarray(table[name], dtype=np.float64).reshape(n)

    out = {c: col(c) for c in ("X_IMAGE", "Y_IMAGE", "ISO0", "CLASS_STAR", "BACKGROUND")}
    out["FLAGS"] = np.asarray(table["FLAGS"]).astype(np.int32).reshape(n)
    for src, dst in OPTIONAL_COLUMNS.items():
        out[dst] = col(src) if src in names else np.full(n, np.nan)
    if has_axes:
        a = np.maximum(out["A_IMAGE"], 1e-3)
        b = np.maximum(out["B_IMAGE"], 1e-3)
    out["ELONGATION"] = col("ELONGATION") if "ELONGATION" in names else a / b
    out["ELLIPTICITY"] = col("ELLIPTICITY") if "ELLIPTICITY" in names else 1.0 - b / a
    return as_feature_table(out)


def _column_names(table) -> list[str]:
    if isinstance(table, dict):
        return list(table)
    dtype_names = getattr(getattr(table, "dtype", None), "names", None)
    if dtype_names is not None:
        return list(dtype_names)
    return list(table.colnames)


def _recompute_class_star(
    features: dict[str, np.ndarray], fluxerr: np.ndarray | None
) -> dict[str, np.ndarray] | None:
    """CLASS_STAR from the stellar locus when the catalog's is meaningless, else ``None``.

    Meaningless: the median below :data:`CLASS_STAR_FLOOR`. Needs FLUX_RADIUS and FLUX; the
    signal-to-noise is FLUX / FLUXERR_ISO when the catalog has it, else a proxy: FLUX over
    ``sigma * sqrt(ISO0)`` with the pixel noise ``sigma`` estimated from the faintest detections,
    whose mean isophotal surface brightness sits just above the detection threshold (~1.5 sigma
    at SExtractor's default DETECT_THRESH): ``sigma ~ 5th percentile of FLUX / ISO0 / 2``.
    """
    cs = features["CLASS_STAR"]
    if len(cs) == 0 or not np.nanmedian(cs) < CLASS_STAR_FLOOR:
        return None
    radius, flux = features["FLUX_RADIUS"], features["FLUX"].astype(np.float64)
    if not np.isfinite(radius).any() or not np.isfinite(flux).any():
        return None
    iso = np.maximum(features["ISO0"], 1).astype(np.float64)
    if fluxerr is not None and np.isfinite(fluxerr).any():
        snr = flux / np.where(fluxerr > 0, fluxerr, np.inf)
    else:
        sb = flux / iso
        sb = sb[np.isfinite(sb) & (sb > 0)]
        sigma = 0.5 * float(np.percentile(sb, 5)) if len(sb) else 1.0
        snr = flux / (max(sigma, 1e-12) * np.sqrt(iso))
    snr = np.nan_to_num(snr, nan=0.0, posinf=0.0, neginf=0.0)
    return features | {"CLASS_STAR": stellarity(radius, snr, features["FLAGS"])}


# --------------------------------------------------------------------------- catalog files


@dataclass(frozen=True)
class _CcdTable:
    """Where one CCD lives in a catalog file."""

    objects_hdu: int
    imhead_hdu: int | None


@dataclass(frozen=True)
class Catalog:
    """A whole SExtractor catalog file read by :func:`read_catalog`.

    Attributes
    ----------
    meta : ExposureMeta
        As :meth:`CatalogBackend.open` returns it.
    format : str
        ``"FITS_1.0"`` or ``"FITS_LDAC"``.
    sources : list of dict of np.ndarray
        One feature table per CCD, in CCD order.
    shapes : list of tuple of int
        ``(height, width)`` of each CCD (see :meth:`CatalogBackend.features`).
    """

    meta: ExposureMeta
    format: str
    sources: list[dict[str, np.ndarray]]
    shapes: list[tuple[int, int]]


def _layout(path: str, hdul: fits.HDUList) -> tuple[str, list[_CcdTable]]:
    """Catalog format and the HDUs of each CCD."""
    names = [(h.name or "").upper() for h in hdul]
    if "LDAC_OBJECTS" in names:
        ccds = []
        for i, name in enumerate(names):
            if name != "LDAC_OBJECTS":
                continue
            imhead = i - 1 if i > 0 and names[i - 1] == "LDAC_IMHEAD" else None
            ccds.append(_CcdTable(i, imhead))
        return "FITS_LDAC", ccds
    tables = [i for i, h in enumerate(hdul) if i > 0 and isinstance(h, fits.BinTableHDU)]
    if not tables:
        raise ExposureError(
            path, None, "no_ccds", "no OBJECTS or LDAC_OBJECTS table: not a SExtractor catalog"
        )
    return "FITS_1.0", [_CcdTable(i, None) for i in tables]


def _image_header(hdul: fits.HDUList, hdu: int | None) -> fits.Header | None:
    """The image header kept in an LDAC_IMHEAD table, or ``None``."""
    if hdu is None:
        return None
    data = hdul[hdu].data
    if data is None or len(data) == 0:
        return None
    cards = np.asarray(data.field(0)[0]).ravel()
    text = "".join(str(c).ljust(80)[:80] for c in cards)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)
        return fits.Header.fromstring(text)


def _first(headers: list[fits.Header], key: str):
    for header in headers:
        if header_value(header, key) is not None:
            return header
    return None


def _catalog_meta(
    path: str,
    hdul: fits.HDUList,
    layout: list[_CcdTable],
    exptime: float | None,
    night: str | None = None,
) -> ExposureMeta:
    """Exposure metadata from the image headers (LDAC), the catalog's PRIMARY, the fallbacks.

    No EXPTIME anywhere and no fallback ``exptime``: the exposure time is NaN (the grade is
    made without it). No DATE-OBS: the night is the file's ``YYYY-MM-DD`` folder, else
    ``night``, else ``"unknown"`` (never the night the catalog was graded).
    """
    image_headers = [h for t in layout if (h := _image_header(hdul, t.imhead_hdu)) is not None]
    headers = [*image_headers, hdul[0].header]

    def lookup(key: str):
        header = _first(headers, key)
        return header, (None if header is None else header_value(header, key))

    header, raw_exptime = lookup("EXPTIME")
    if raw_exptime is not None:
        value = header_float(header, "EXPTIME")
        if value is None or value <= 0:
            raise ExposureError(
                path, None, "bad_exptime", f"EXPTIME must be a number > 0, got {raw_exptime!r}"
            )
    elif exptime is not None:
        value = float(exptime)
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"exptime must be a number > 0, got {exptime!r}")
    else:
        value = math.nan

    expnum = parse_expnum(path, lookup("EXPNUM")[1])

    date_header, _ = lookup("DATE-OBS")
    date_obs = parse_date_obs(path, date_header) if date_header is not None else None
    filter_header, object_header = _first(headers, "FILTER"), _first(headers, "OBJECT")
    airmass_header = _first(headers, "AIRMASS")
    photzp_header = _first(headers, "PHOTZP")
    names = []
    for i, table in enumerate(layout):
        head = _image_header(hdul, table.imhead_hdu)
        name = None
        if head is not None:
            name = header_str(head, "EXTNAME") or header_str(head, "CCDNAME")
        names.append(name or f"ccd{i:02d}")
    shape: tuple[int, ...] = ()
    if image_headers:
        nx, ny = header_value(image_headers[0], "NAXIS1"), header_value(image_headers[0], "NAXIS2")
        if isinstance(nx, int) and isinstance(ny, int):
            shape = (ny, nx)
    if date_obs is not None:
        night_of = observing_night(date_obs)
    else:
        folder = Path(path).parent.name
        night_of = folder if NIGHT_PATTERN.match(folder) else (night or "unknown")
    return ExposureMeta(
        path=path,
        exposure_id=str(expnum) if expnum is not None else exposure_id_from_path(path),
        expnum=expnum,
        exptime=value,
        date_obs=date_obs,
        night=night_of,
        filter=header_str(filter_header, "FILTER") if filter_header is not None else None,
        object=header_str(object_header, "OBJECT") if object_header is not None else None,
        airmass=header_float(airmass_header, "AIRMASS") if airmass_header is not None else None,
        n_ccd=len(layout),
        ccd_names=tuple(names),
        ccd_shape=shape,
        photzp=header_float(photzp_header, "PHOTZP") if photzp_header is not None else None,
    )


def _check_columns(path: str, hdul: fits.HDUList, table: _CcdTable) -> None:
    """Raise ``missing_column`` naming the column, file and HDU (reads the header only)."""
    names = set(hdul[table.objects_hdu].columns.names)
    for name in REQUIRED_COLUMNS:
        if name in names:
            continue
        if name in ("ELONGATION", "ELLIPTICITY") and {"A_IMAGE", "B_IMAGE"} <= names:
            continue
        raise ExposureError(
            path,
            table.objects_hdu,
            "missing_column",
            f"required column {name} is missing from the {hdul[table.objects_hdu].name} table",
        )


def _ccd_features(
    path: str,
    hdul: fits.HDUList,
    table: _CcdTable,
    default_shape: tuple[int, int] = MEGACAM_CCD_SHAPE,
) -> tuple[dict[str, np.ndarray], tuple[int, int], bool]:
    """Feature table, ``(height, width)`` and whether CLASS_STAR was recomputed, for one CCD.

    The size is the image header's NAXIS1/2 when the catalog keeps one (FITS_LDAC), else
    ``default_shape`` (``(width, height)``, the configured ``extract.catalog_ccd_shape``), never
    the extent of the sources (a CCD without sources would be 0x0)."""
    _check_columns(path, hdul, table)
    data = hdul[table.objects_hdu].data
    if data is None or len(data) == 0:
        features = empty_sources()
        fluxerr = None
    else:
        features = catalog_columns_to_features(data, where=f"{path}: HDU {table.objects_hdu}")
        names = data.dtype.names
        fluxerr = np.asarray(data["FLUXERR_ISO"], np.float64) if "FLUXERR_ISO" in names else None
    recomputed = _recompute_class_star(features, fluxerr)
    if recomputed is not None:
        features = recomputed
    head = _image_header(hdul, table.imhead_hdu)
    nx = header_value(head, "NAXIS1") if head is not None else None
    ny = header_value(head, "NAXIS2") if head is not None else None
    if not (isinstance(nx, int) and isinstance(ny, int) and nx > 0 and ny > 0):
        nx, ny = default_shape
    return features, (int(ny), int(nx)), recomputed is not None


def _open_catalog(path: str | os.PathLike[str]) -> fits.HDUList:
    spath = os.fspath(path)
    try:
        return fits.open(spath, memmap=False)
    except OSError as exc:
        raise ExposureError(spath, None, "unreadable", f"cannot read catalog: {exc}") from exc


def read_catalog(
    path: str | os.PathLike[str],
    exptime: float | None = None,
    ccd_shape: tuple[int, int] = MEGACAM_CCD_SHAPE,
) -> Catalog:
    """Read a whole SExtractor catalog (FITS_1.0 or FITS_LDAC) into feature tables.

    Parameters
    ----------
    path : str or os.PathLike
        The catalog: FITS_1.0 (PRIMARY + one ``OBJECTS`` table per CCD) or FITS_LDAC
        (``LDAC_IMHEAD`` + ``LDAC_OBJECTS`` per CCD). Any number of CCDs >= 1 (36 or 40 for
        MegaCam).
    exptime : float, optional
        EXPTIME (s) to use when no header of the catalog has one (else NaN).
    ccd_shape : tuple of int
        ``(width, height)`` of CCDs whose table keeps no image header.

    Returns
    -------
    Catalog

    Raises
    ------
    ExposureError
        ``bad_exptime``, ``bad_expnum``, ``bad_date_obs``, ``no_ccds`` (no object table),
        ``missing_column`` (names the column and the HDU), ``unreadable``.
        ``str(err)`` starts with the path.

    Examples
    --------
    >>> cat = read_catalog("2345678p.ldac")  # doctest: +SKIP
    >>> cat.meta.n_ccd, cat.sources[0]["ELONGATION"][:2]
    (36, array([1.12, 1.31], dtype=float32))
    """
    spath = os.fspath(path)
    with _open_catalog(spath) as hdul:
        fmt, layout = _layout(spath, hdul)
        meta = _catalog_meta(spath, hdul, layout, exptime)
        sources, shapes, recomputed = [], [], []
        for i, table in enumerate(layout):
            features, shape, redone = _ccd_features(spath, hdul, table, ccd_shape)
            sources.append(features)
            shapes.append(shape)
            if redone:
                recomputed.append(i)
    if recomputed:
        log.info(
            "%s: median CLASS_STAR < %g on %d CCD(s): recomputed from FLUX_RADIUS",
            spath,
            CLASS_STAR_FLOOR,
            len(recomputed),
        )
    return Catalog(meta=meta, format=fmt, sources=sources, shapes=shapes)


class CatalogBackend:
    """Features from archived SExtractor catalogs (no pixels): the ``catalog`` backend.

    Parameters
    ----------
    params : SepParams, optional
        Only the ``catalog_*`` settings are used: the EXPTIME of catalogs whose headers lack one
        (``catalog_exptime``; unset: graded without), the CCD size of catalogs without image
        headers (``catalog_ccd_shape``) and the night of catalogs without DATE-OBS outside a
        night folder (``catalog_night``).

    Notes
    -----
    CCD width and height come from the image header (``NAXIS1`` / ``NAXIS2`` in
    ``LDAC_IMHEAD``) when the catalog keeps it; FITS_1.0 catalogs do not, and then they are
    ``catalog_ccd_shape`` (MegaCam's 2048x4612 by default). A CCD table without rows (a dead or
    masked CCD) is rejected as ``empty_ccd``: it does not vote, and the reason says why.
    Catalogs may be gzip-compressed (``*.fits.ldac.gz``).
    """

    name = "catalog"

    def __init__(self, params: SepParams | None = None) -> None:
        self.params = params or SepParams()
        self._logged: set[str] = set()

    def open(self, path: str | os.PathLike[str]) -> ExposureMeta:
        """Read the catalog's metadata and check every table's columns (headers only).

        Raises
        ------
        ExposureError
            As :func:`read_catalog`.
        """
        spath = os.fspath(path)
        with _open_catalog(spath) as hdul:
            _, layout = _layout(spath, hdul)
            meta = _catalog_meta(
                spath, hdul, layout, self.params.catalog_exptime, self.params.catalog_night
            )
            for table in layout:
                _check_columns(spath, hdul, table)
        return meta

    def features(self, meta: ExposureMeta, ccd: int, keep_pixels: bool = False) -> CcdFeatures:
        """The feature table of CCD ``ccd`` (0-based) of the catalog ``meta.path``.

        ``keep_pixels`` is accepted for the pixel backends' signature: a catalog has no pixels,
        so the result never carries any.

        Raises
        ------
        CcdRejected
            The table cannot be read or lacks a required column.
        """
        try:
            with _open_catalog(meta.path) as hdul:
                _, layout = _layout(meta.path, hdul)
                if not 0 <= ccd < len(layout):
                    raise ExposureError(
                        meta.path, None, "bad_ccd", f"CCD {ccd} not in [0, {len(layout)})"
                    )
                table, (height, width), redone = _ccd_features(
                    meta.path, hdul, layout[ccd], tuple(self.params.catalog_ccd_shape)
                )
        except ExposureError as exc:
            raise CcdRejected(exc.reason, f"CCD {ccd}: {exc}") from exc
        if len(table["X_IMAGE"]) == 0:
            raise CcdRejected(
                "empty_ccd",
                f"CCD {ccd}: the catalog's table for this CCD has no rows (a dead or masked "
                "CCD): it does not vote",
            )
        if redone and meta.path not in self._logged:
            self._logged.add(meta.path)
            log.info(
                "%s: median CLASS_STAR < %g (CCD %d): recomputed from FLUX_RADIUS",
                meta.path,
                CLASS_STAR_FLOOR,
                ccd,
            )
        return CcdFeatures.of(meta, ccd, width, height, table, self.name)
