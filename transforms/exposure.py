"""Open and validate a CFHT MegaCam exposure; read its metadata and one CCD at a time.

A MegaCam raw exposure is a multi-extension FITS file (MEF): an empty PRIMARY HDU followed by one
image extension per CCD (36 science CCDs, 40 in products that carry the guide CCDs), each
2048 x 4612 pixels of uint16 stored as int16 with ``BZERO = 32768``. The CADC archive also serves
tile-compressed ``.fits.fz`` files (fpack): the same layout with each image stored as a BINTABLE
with ``ZIMAGE = T``.

No Beam in any of it. From cheapest to dearest:

:func:`~skygrade.transforms.fits_walk.check_integrity` (:mod:`skygrade.transforms.fits_walk`)
    The header walk. Reads only the header blocks (never a pixel) and proves that every HDU the
    headers announce is wholly present, that nothing follows the last one and that the number of
    extensions matches ``NEXTEND``. Milliseconds per exposure, whatever the file size
    (benchmarks/README.md).
:func:`read_meta` (here)
    The walk plus header validation: the exposure id, night, EXPTIME, filter, CCD names, and the
    rule that every extension is a 2-D image of one common shape.
:func:`~skygrade.transforms.ccd_pixels.read_ccd` / :func:`~skygrade.transforms.ccd_pixels.iter_ccds`
    The pixels of one CCD (:mod:`skygrade.transforms.ccd_pixels`) as native float32 with ``BZERO`` /
    ``BSCALE`` applied, in bounded memory.
:func:`~skygrade.transforms.ccd_checks.ccd_problem` (:mod:`skygrade.transforms.ccd_checks`)
    Why a CCD should be quarantined (NaN, dead, saturated, wrong shape), or ``None``.

Every failure is an :class:`~skygrade.transforms.exposure_errors.ExposureError` with a ``reason``
slug (:mod:`skygrade.transforms.exposure_errors` lists them all). One header's cards are parsed in
:mod:`skygrade.transforms.fits_header`; a file named in the drop is read through its open descriptor
while it is :func:`~skygrade.transforms.confined_reads.pinned`
(:mod:`skygrade.transforms.confined_reads`).

Separation of duties: :func:`~skygrade.transforms.fits_walk.check_integrity` is purely structural
(sizes, blocks, card syntax of structural keywords, NEXTEND); it does not care what the HDUs hold.
:func:`read_meta` decides whether the structure is a gradable exposure.

This module holds the metadata (:func:`read_meta`, :func:`observing_night`, the exposure id, and
what the catalog reader shares of them), and the validation of the CCD extensions
(:func:`ccd_hdus`, :func:`ccd_name`) that the pixel reader shares.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from astropy.io import fits

from skygrade.transforms.confined_reads import pin_of, pinned_source
from skygrade.transforms.exposure_errors import CorruptFileError, ExposureError
from skygrade.transforms.fits_header import (
    Cards,
    HduInfo,
    header_float,
    header_str,
    header_value,
    parse_header,
    string_value,
)
from skygrade.transforms.fits_walk import FileLayout, walk

__all__ = [
    "CATALOG_SUFFIXES",
    "HST_OFFSET",
    "NIGHT_PATTERN",
    "NIGHT_ROLLOVER",
    "CcdRef",
    "ExposureMeta",
    "ccd_hdus",
    "ccd_name",
    "ccd_refs",
    "exposure_id_from_path",
    "observing_night",
    "parse_date_obs",
    "parse_expnum",
    "read_meta",
]

log = logging.getLogger(__name__)

#: A night folder's name (``YYYY-MM-DD``): archives and the grades dataset are laid out by night.
NIGHT_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")

#: Offset of CFHT local time (HST) from UTC, and the local hour at which the night rolls over.
HST_OFFSET = timedelta(hours=-10)
NIGHT_ROLLOVER = timedelta(hours=12)

# EXTNAME astropy gives a CompImageHDU written without a name: not a CCD name.
_DEFAULT_EXTNAMES = frozenset({"COMPRESSED_IMAGE", "PRIMARY", ""})
#: Suffixes of SExtractor catalogs as pipelines name them (``1625583p.fits.ldac``), longest first.
CATALOG_SUFFIXES = (
    ".fits.ldac.gz",
    ".fits.ldac",
    ".fits.cat.gz",
    ".fits.cat",
    ".ldac.gz",
    ".ldac",
    ".cat.gz",
    ".cat",
)
_FITS_SUFFIXES = (*CATALOG_SUFFIXES, ".fits.fz", ".fit.fz", ".fits", ".fit", ".fts", ".fz")


# -------------------------------------------------------------------------------- metadata
@dataclass(frozen=True)
class ExposureMeta:
    """Header metadata of one MegaCam exposure.

    Attributes
    ----------
    path : str
    exposure_id : str
        ``EXPNUM`` as a string, else the file name without its FITS suffixes.
    expnum : int or None
    exptime : float
        Seconds, > 0.
    date_obs : datetime or None
        Start of the exposure, timezone-aware UTC.
    night : str or None
        Local observing night ``YYYY-MM-DD`` at CFHT (see :func:`observing_night`).
    filter, object : str or None
    airmass : float or None
    n_ccd : int
        Number of image extensions (CCDs).
    ccd_names : tuple of str
        ``EXTNAME`` of each CCD, else ``CCDNAME``, else ``ccdNN``.
    ccd_shape : tuple of int
        The common CCD shape in numpy order ``(rows, columns)``.
    compressed : bool
        True when the CCDs are tile-compressed (``.fits.fz``).
    file_id : tuple of int or None
        ``(st_dev, st_ino)`` of the file read, when it was :func:`pinned`: a CCD reader
        refuses any other file (``file_changed``).
    source : str or None
        A name of the pinned open descriptor that another process can open
        (``/proc/<pid>/fd/<n>``, Linux), so that CCD workers read the open file, not the name.
    photzp : float or None
        ``PHOTZP`` of the PRIMARY header (magnitude of 1 ADU/s, Elixir): the zero point of the
        sky brightness when present.
    """

    path: str
    exposure_id: str
    expnum: int | None
    exptime: float
    date_obs: datetime | None
    night: str | None
    filter: str | None
    object: str | None
    airmass: float | None
    n_ccd: int
    ccd_names: tuple[str, ...]
    ccd_shape: tuple[int, ...] = ()
    compressed: bool = False
    file_id: tuple[int, int] | None = None
    source: str | None = None
    photzp: float | None = None


def observing_night(utc: datetime) -> str:
    """The CFHT observing night a UTC instant belongs to.

    CFHT keeps Hawaii Standard Time (UTC-10, no daylight saving); a night is named after the local
    date on which it starts and rolls over at local noon, so the night is
    ``(utc - 10 h - 12 h).date()``.

    Parameters
    ----------
    utc : datetime
        The instant. A naive datetime is taken as UTC; an aware one is converted.

    Returns
    -------
    str
        ``YYYY-MM-DD``.

    Raises
    ------
    TypeError
        ``utc`` is not a datetime.

    Examples
    --------
    >>> observing_night(datetime(2026, 11, 25, 6, 0))  # 20:00 HST on the 24th
    '2026-11-24'
    >>> observing_night(datetime(2026, 11, 25, 22, 0))  # local noon on the 25th
    '2026-11-25'
    """
    if not isinstance(utc, datetime):
        raise TypeError(f"utc must be a datetime, got {type(utc).__name__}")
    if utc.tzinfo is not None:
        utc = utc.astimezone(UTC).replace(tzinfo=None)
    return (utc + HST_OFFSET - NIGHT_ROLLOVER).date().isoformat()


def parse_expnum(path: str, raw, hdu: int | None = None) -> int | None:
    """EXPNUM as an int (None when absent); a non-integer value is an ``ExposureError``."""
    if raw is None:
        return None
    try:
        as_float = float(raw)
        if isinstance(raw, bool) or not as_float.is_integer():
            raise ValueError
        return int(as_float)
    except (TypeError, ValueError):
        raise ExposureError(path, hdu, "bad_expnum", f"EXPNUM {raw!r} is not an integer") from None


def exposure_id_from_path(path: str | os.PathLike[str]) -> str:
    """The exposure id a file name implies, for files whose header cannot be read.

    CFHT names raw MegaCam files ``<EXPNUM><type>.fits`` (``1234567o.fits``: o = object,
    p = processed...), so a digits-plus-one-letter stem gives the EXPNUM, the same id as a
    readable file's header; any other stem is used as it is.

    Examples
    --------
    >>> exposure_id_from_path("/drop/2026-11-24/2817001o.fits.fz")
    '2817001'
    >>> exposure_id_from_path("catalogs/1625583p.fits.ldac.gz")
    '1625583'
    """
    name = Path(path).name
    lower = name.lower()
    for suffix in _FITS_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    if len(name) > 1 and name[:-1].isdigit() and name[-1].isalpha():
        return name[:-1]
    return name


def parse_date_obs(path: str, header: fits.Header) -> datetime | None:
    """DATE-OBS as aware UTC; a date-only value takes its time from UTC-OBS or TIME-OBS.

    A date-only DATE-OBS with neither is taken as 00:00 UTC of that date: its night is the
    previous local date, which is right for every exposure taken between local 14:00 and 12:00.
    """
    raw = header_value(header, "DATE-OBS")
    if raw is None or not str(raw).strip():
        log.warning("%s: no DATE-OBS in the PRIMARY header: date_obs and night are None", path)
        return None
    text = str(raw).strip()
    if "T" not in text:
        clock = header_value(header, "UTC-OBS") or header_value(header, "TIME-OBS")
        if clock is not None and str(clock).strip():
            text = f"{text}T{str(clock).strip()}"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ExposureError(
            path, 0, "bad_date_obs", f"DATE-OBS {raw!r} is not an ISO date/time"
        ) from None
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def ccd_hdus(path: str, layout: FileLayout) -> list[HduInfo]:
    """The CCD extensions, validated: every extension a 2-D image, all of one shape."""
    primary = layout.hdus[0]
    if primary.naxis and math.prod(primary.naxis) > 0:
        raise CorruptFileError(
            path, 0, "bad_shape", f"PRIMARY holds data {primary.naxis}; expected an empty PRIMARY"
        )
    ccds = layout.hdus[1:]
    if not ccds:
        raise CorruptFileError(path, None, "no_ccds", "no image extension (CCD) in the file")
    first = None
    for hdu in ccds:
        if not hdu.is_image:
            raise CorruptFileError(
                path,
                hdu.index,
                "bad_extension",
                f"extension is a {hdu.xtension}, not an image (EXTNAME={hdu.extname})",
            )
        if len(hdu.naxis) != 2 or min(hdu.naxis) == 0:
            raise CorruptFileError(
                path, hdu.index, "bad_shape", f"CCD image must be 2-D, NAXISn = {hdu.naxis}"
            )
        if first is None:
            first = hdu
        elif hdu.naxis != first.naxis:
            raise CorruptFileError(
                path,
                hdu.index,
                "bad_shape",
                f"CCD is {hdu.naxis[0]}x{hdu.naxis[1]} (NAXIS1 x NAXIS2) but HDU {first.index} "
                f"is {first.naxis[0]}x{first.naxis[1]}",
            )
    return ccds


def ccd_name(hdu: HduInfo, header: bytes) -> str:
    """A CCD's name: ``EXTNAME``, else ``CCDNAME``, else ``ccdNN`` (``NN`` its 0-based number)."""
    if hdu.extname and hdu.extname.upper() not in _DEFAULT_EXTNAMES:
        return hdu.extname
    name = string_value(Cards(header).get("CCDNAME"))
    if name:
        return name
    return f"ccd{hdu.index - 1:02d}"


def read_meta(path: str | os.PathLike[str]) -> ExposureMeta:
    """Walk, validate and summarise the headers of a MegaCam exposure.

    Runs :func:`check_integrity`, then checks that the file is a gradable exposure: an empty
    PRIMARY, at least one CCD, every extension a 2-D image (plain or tile-compressed), all CCDs
    of one shape, and ``EXPTIME > 0``. Any number of CCDs >= 1 is accepted (36, or 40 with the
    guide CCDs). Reads no pixel.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.fits`` or ``.fits.fz`` MegaCam exposure.

    Returns
    -------
    ExposureMeta

    Raises
    ------
    IncompleteFileError, CorruptFileError
        As :func:`check_integrity`; plus ``CorruptFileError`` with reason ``bad_shape``,
        ``bad_extension`` or ``no_ccds`` for a file that is not a MEF of 2-D CCD images.
    ExposureError
        ``missing_exptime`` / ``bad_exptime`` (EXPTIME absent, not a number, or <= 0),
        ``bad_expnum`` (EXPNUM present but not an integer), ``bad_date_obs`` (unparsable).

    Examples
    --------
    >>> meta = read_meta("2345678o.fits.fz")  # doctest: +SKIP
    >>> meta.exposure_id, meta.night, meta.n_ccd
    ('2345678', '2026-11-24', 36)
    """
    layout, headers = walk(path, keep_headers=True)
    spath = layout.path
    ccds = ccd_hdus(spath, layout)
    primary = parse_header(headers[0])
    pin = pin_of(spath)
    file_id = pin.file_id if pin is not None else None
    source = pinned_source(pin) if pin is not None else None

    expnum = parse_expnum(spath, header_value(primary, "EXPNUM"), hdu=0)

    raw_exptime = header_value(primary, "EXPTIME")
    if raw_exptime is None:
        raise ExposureError(spath, 0, "missing_exptime", "PRIMARY header has no EXPTIME")
    exptime = header_float(primary, "EXPTIME")
    if exptime is None or exptime <= 0:
        raise ExposureError(
            spath, 0, "bad_exptime", f"EXPTIME must be a number > 0, got {raw_exptime!r}"
        )

    date_obs = parse_date_obs(spath, primary)
    return ExposureMeta(
        path=spath,
        exposure_id=str(expnum) if expnum is not None else exposure_id_from_path(spath),
        expnum=expnum,
        exptime=exptime,
        date_obs=date_obs,
        night=observing_night(date_obs) if date_obs is not None else None,
        filter=header_str(primary, "FILTER"),
        object=header_str(primary, "OBJECT"),
        airmass=header_float(primary, "AIRMASS"),
        n_ccd=len(ccds),
        ccd_names=tuple(ccd_name(h, headers[h.index]) for h in ccds),
        ccd_shape=ccds[0].shape,
        compressed=ccds[0].compressed,
        photzp=header_float(primary, "PHOTZP"),
        file_id=file_id,
        source=source,
    )


class CcdRef(NamedTuple):
    """The light record that flows through Beam: which CCD of which file (never pixels)."""

    exposure_id: str
    path: str
    ccd: int
    n_ccd: int


def ccd_refs(meta: ExposureMeta) -> list[CcdRef]:
    """One :class:`CcdRef` per CCD of an exposure, for ``beam.Create`` / ``FlatMap``.

    Parameters
    ----------
    meta : ExposureMeta
        From :func:`read_meta`.

    Returns
    -------
    list of CcdRef
        In CCD order, ``ccd`` 0-based.

    Examples
    --------
    >>> [r.ccd for r in ccd_refs(read_meta("2345678o.fits"))][:3]  # doctest: +SKIP
    [0, 1, 2]
    """
    return [CcdRef(meta.exposure_id, meta.path, i, meta.n_ccd) for i in range(meta.n_ccd)]
