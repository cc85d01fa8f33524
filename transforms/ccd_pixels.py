"""The pixels of one MegaCam CCD: read in bounded memory, as native float32.

:func:`read_ccd` reads one CCD of an exposure and :func:`iter_ccds` every CCD, one at a time,
each as a :class:`CcdPixels` (``BZERO`` / ``BSCALE`` applied, ``BLANK`` as NaN, with the header
values that measuring it needs: ``GAIN``, ``RDNOISE``, ``SATURATE``, ``BIASLVL``). A plain image
is read straight from its data offset; a tile-compressed one (``.fits.fz``) is decompressed by
astropy, that HDU only. The headers are walked first (:mod:`skygrade.transforms.fits_walk`), the CCD
extensions validated as :func:`skygrade.transforms.exposure.read_meta` does, and a pinned file is
read through its open descriptor (:mod:`skygrade.transforms.confined_reads`).

No Beam in any of it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

from skygrade.transforms.confined_reads import open_exposure
from skygrade.transforms.exposure import ccd_hdus, ccd_name
from skygrade.transforms.exposure_errors import CorruptFileError, IncompleteFileError
from skygrade.transforms.fits_header import HduInfo, header_float, header_value, parse_header
from skygrade.transforms.fits_walk import FileLayout, walk_open

__all__ = ["CcdPixels", "iter_ccds", "read_ccd"]


@dataclass(eq=False)
class CcdPixels:
    """The pixels of one CCD and the header values needed to measure them.

    Attributes
    ----------
    index : int
        0-based CCD number (HDU ``index + 1``).
    name : str
        ``EXTNAME``, else ``CCDNAME``, else ``ccdNN``.
    data : numpy.ndarray
        float32, native byte order, C-contiguous, ``BZERO`` / ``BSCALE`` applied, ``BLANK``
        pixels as NaN; shape ``(NAXIS2, NAXIS1)``.
    gain, rdnoise : float or None
        ``GAIN`` (e-/ADU) and ``RDNOISE`` (e-) from the CCD header.
    saturate : float or None
        ``SATURATE`` from the header, else the largest value the stored integer type can hold
        after scaling (65535 for uint16), else ``None`` (float data).
    bias : float or None
        ``BIASLVL``, the bias pedestal still in the pixels (the simulator writes it), else
        ``None`` (bias-subtracted data): taken off the sky level.
    """

    index: int
    name: str
    data: np.ndarray
    gain: float | None
    rdnoise: float | None
    saturate: float | None
    bias: float | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """``data.shape``."""
        return self.data.shape


def _scaling(header: fits.Header) -> tuple[float, float, int | None]:
    bscale = header_float(header, "BSCALE")
    bzero = header_float(header, "BZERO")
    blank = header_value(header, "BLANK")
    blank = blank if isinstance(blank, int) and not isinstance(blank, bool) else None
    return (1.0 if bscale is None else bscale), (0.0 if bzero is None else bzero), blank


def _default_saturate(bitpix: int, bscale: float, bzero: float) -> float | None:
    if bitpix < 0:
        return None
    top = 255 if bitpix == 8 else 2 ** (bitpix - 1) - 1
    return float(top * bscale + bzero)


def _read_plain(fh, path: str, hdu: HduInfo, bscale: float, bzero: float, blank: int | None):
    """One uncompressed image read straight from its data offset, scaled to float32."""
    shape = hdu.shape
    dtype = np.dtype({8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}[hdu.bitpix])
    raw = np.empty(shape, dtype=dtype)
    fh.seek(hdu.data_offset)
    got = fh.readinto(memoryview(raw).cast("B"))
    if got != raw.nbytes:
        raise IncompleteFileError(
            path, hdu.index, "truncated", f"data unit shrank: read {got} of {raw.nbytes} bytes"
        )
    if hdu.bitpix in (8, 16):
        # float32 holds every 8/16-bit integer (and +BZERO) exactly.
        out = raw.astype(np.float32)
        if bscale != 1.0:
            out *= np.float32(bscale)
        if bzero != 0.0:
            out += np.float32(bzero)
    elif bscale != 1.0 or bzero != 0.0:
        out = (raw * bscale + bzero).astype(np.float32)
    else:
        out = raw.astype(np.float32)
    if blank is not None and hdu.bitpix > 0:
        out[raw == blank] = np.nan
    return out


def _read_compressed(fh, path: str, hdu: HduInfo) -> np.ndarray:
    """One tile-compressed image: astropy decompresses just that HDU (from the open file)."""
    fh.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)
        with fits.open(fh, memmap=False, lazy_load_hdus=True) as hdul:
            comp = hdul[hdu.index]
            if not isinstance(comp, fits.CompImageHDU):
                raise CorruptFileError(
                    path, hdu.index, "bad_extension", "astropy does not see a compressed image"
                )
            data = comp.data
            out = np.array(data, dtype=np.float32, order="C", copy=True)
            del data, comp
    return out


def read_ccd(
    path: str | os.PathLike[str],
    index: int,
    *,
    source: str | None = None,
    file_id: tuple[int, int] | None = None,
) -> CcdPixels:
    """Read the pixels of one CCD, in bounded memory, without keeping the file open.

    Walks the headers (:func:`check_integrity`, < 1 ms), then reads only that CCD's data unit:
    for plain FITS straight from its byte offset into an array of the stored type, then scaled to
    float32 here (~2.5x the stored size at peak: ~57 MB for a 2048 x 4612 uint16 CCD); for
    ``.fits.fz`` astropy decompresses just that HDU.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.fits`` or ``.fits.fz`` MegaCam exposure.
    index : int
        0-based CCD number: HDU ``index + 1``.
    source, file_id : optional
        ``ExposureMeta.source`` / ``ExposureMeta.file_id`` of a :func:`pinned` file: read the
        open file they name (in any process), and refuse any other (``file_changed``).

    Returns
    -------
    CcdPixels

    Raises
    ------
    ValueError
        ``index`` is not in ``[0, number of extensions)``.
    IncompleteFileError, CorruptFileError
        As :func:`check_integrity`; ``CorruptFileError("bad_shape" | "bad_extension")`` when that
        extension is not a 2-D image.

    Examples
    --------
    >>> ccd = read_ccd("2345678o.fits", 0)  # doctest: +SKIP
    >>> ccd.data.dtype, ccd.shape
    (dtype('float32'), (4612, 2048))
    """
    spath = os.fspath(path)
    with open_exposure(spath, source, file_id) as fh:  # one open: walk and pixels
        layout, headers = walk_open(spath, fh, keep_headers=True)
        return _read_ccd(fh, layout, headers, index)


def _read_ccd(fh, layout: FileLayout, headers: list[bytes], index: int) -> CcdPixels:
    if isinstance(index, bool) or not isinstance(index, int | np.integer):
        raise TypeError(f"index must be an int, got {type(index).__name__}")
    index = int(index)
    n = layout.n_extensions
    if not 0 <= index < n:
        raise ValueError(f"index must be in [0, {n}) for {layout.path}, got {index!r}")
    path = layout.path
    hdu = layout.hdus[index + 1]
    if not hdu.is_image:
        raise CorruptFileError(
            path, hdu.index, "bad_extension", f"extension is a {hdu.xtension}, not an image"
        )
    if len(hdu.naxis) != 2:
        raise CorruptFileError(
            path, hdu.index, "bad_shape", f"CCD image must be 2-D, NAXISn = {hdu.naxis}"
        )
    raw_header = headers[hdu.index]
    header = parse_header(raw_header)
    bscale, bzero, blank = _scaling(header)
    if hdu.compressed:
        data = _read_compressed(fh, path, hdu)
    else:
        data = _read_plain(fh, path, hdu, bscale, bzero, blank)
    saturate = header_float(header, "SATURATE")
    if saturate is None:
        saturate = _default_saturate(hdu.bitpix, bscale, bzero)
    return CcdPixels(
        index=index,
        name=ccd_name(hdu, raw_header),
        data=data,
        gain=header_float(header, "GAIN"),
        rdnoise=header_float(header, "RDNOISE"),
        saturate=saturate,
        bias=header_float(header, "BIASLVL"),
    )


def iter_ccds(path: str | os.PathLike[str]) -> Iterator[CcdPixels]:
    """Yield every CCD of an exposure, one at a time.

    The headers are walked once; each CCD is then read as :func:`read_ccd` does, and the file is
    not held open between CCDs, so abandoning the iterator leaks nothing. Peak memory is one CCD
    (plus whatever the caller keeps).

    Parameters
    ----------
    path : str or os.PathLike

    Yields
    ------
    CcdPixels
        In CCD order.

    Raises
    ------
    IncompleteFileError, CorruptFileError, ExposureError
        As :func:`read_meta` (raised before the first CCD is yielded).

    Examples
    --------
    >>> [c.name for c in iter_ccds("2345678o.fits")][:2]  # doctest: +SKIP
    ['ccd00', 'ccd01']
    """
    spath = os.fspath(path)
    with open_exposure(spath) as fh:
        layout, headers = walk_open(spath, fh, keep_headers=True)
        st = os.fstat(fh.fileno())
    file_id = (st.st_dev, st.st_ino)  # each later open must find this same file
    ccds = ccd_hdus(layout.path, layout)
    for i in range(len(ccds)):
        with open_exposure(spath, file_id=file_id) as fh:
            ccd = _read_ccd(fh, layout, headers, i)
        yield ccd
