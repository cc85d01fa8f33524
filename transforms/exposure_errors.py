"""The errors of reading a MegaCam exposure, and every reason they give.

Every failure of the readers (:mod:`skygrade.transforms.fits_walk`,
:mod:`skygrade.transforms.confined_reads`,
:mod:`skygrade.transforms.exposure`, the catalog reader :mod:`skygrade.transforms.catalog_files`) is
an
:class:`ExposureError` that names the file, the HDU and what is wrong, with a short
machine-friendly ``reason`` slug for the ledger and metrics. Its two subclasses tell the watcher
what to do:

:class:`IncompleteFileError` -- more bytes could make the file valid, so wait and retry:

- ``empty``: the file has zero bytes.
- ``truncated``: the file ends inside a header (before its ``END`` card), inside a data unit,
  inside the padding of the last 2880-byte block, or exactly at an HDU boundary while ``NEXTEND``
  in the PRIMARY header promises more extensions. The HDU named is the one that is cut (or the
  first one missing).
- ``zero_filled``: where a header must start (or continue) there are only NUL bytes while more
  HDUs are expected: the signature of a copy into a preallocated file. From
  :func:`~skygrade.transforms.fits_walk.check_data` also: a data unit ends in NUL bytes and its
  ``DATASUM`` does not match.
- ``zero_tail`` (:func:`~skygrade.transforms.fits_walk.check_data` only): a data unit ends in NUL
  bytes and has no ``DATASUM`` to tell a copy still filling preallocated space from data that really
  end in zeros. The file is structurally complete: the watcher grades it once it has stayed
  unchanged for its whole ``incomplete_timeout_s``.

:class:`CorruptFileError` -- structurally wrong in a way more bytes cannot fix:

- ``not_fits``: the first card is not ``SIMPLE = T``.
- ``bad_header``: a header holds non-ASCII bytes, lacks or garbles a structural keyword
  (BITPIX, NAXIS, NAXISn, PCOUNT, GCOUNT, the ZIMAGE keywords), has no END card within
  :data:`~skygrade.transforms.fits_walk.MAX_HEADER_BLOCKS` blocks, or an extension does not start
  with ``XTENSION``.
- ``bad_nextend``: ``NEXTEND`` is not a non-negative integer, or the file holds *more* complete
  extensions than it says.
- ``trailing_data``: bytes follow the last HDU once every extension that ``NEXTEND`` promises is
  present (or, without ``NEXTEND``, bytes that are not the start of another extension header).
  FITS allows "special records" there, but no MegaCam product writes them and a grading
  pipeline should not guess what they are.
- ``bad_shape`` / ``bad_extension`` / ``no_ccds`` (from
  :func:`~skygrade.transforms.exposure.read_meta` /
  :func:`~skygrade.transforms.ccd_pixels.read_ccd`): an extension is not an image, is not 2-D, or
  the CCDs differ in shape; or there is no CCD at all.

Plain :class:`ExposureError` -- a structurally sound FITS file whose metadata breaks the
exposure contract: ``missing_exptime``, ``bad_exptime``, ``bad_expnum``, ``bad_date_obs``.

Reading through a pinned file adds ``outside_drop``, ``unreadable`` and ``file_changed``
(:mod:`skygrade.transforms.confined_reads`).
"""

from __future__ import annotations

import os

__all__ = ["CorruptFileError", "ExposureError", "IncompleteFileError"]


class ExposureError(Exception):
    """A MegaCam exposure file that cannot be graded.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    hdu : int or None
        0-based HDU index the problem lies in (0 = PRIMARY), or ``None`` for the whole file.
    reason : str
        Short machine-friendly slug (``"truncated"``, ``"not_fits"``, ``"missing_exptime"``...),
        fit for a ledger column or a metric label.
    message : str
        Human-readable detail.

    Notes
    -----
    ``str(err)`` is ``"{path}: HDU {hdu}: {message}"`` (``"{path}: {message}"`` when ``hdu`` is
    ``None``). Instances pickle (Beam ships them between workers).
    """

    def __init__(self, path: str | os.PathLike[str], hdu: int | None, reason: str, message: str):
        self.path = os.fspath(path)
        self.hdu = hdu
        self.reason = reason
        self.message = message
        super().__init__(self.path, hdu, reason, message)

    def __str__(self) -> str:
        where = self.path if self.hdu is None else f"{self.path}: HDU {self.hdu}"
        return f"{where}: {self.message}"

    def __reduce__(self):
        return (type(self), (self.path, self.hdu, self.reason, self.message))


class IncompleteFileError(ExposureError):
    """The file ends early (possibly still being copied): wait and check it again."""


class CorruptFileError(ExposureError):
    """The file is structurally wrong in a way that more bytes cannot fix: quarantine it."""
