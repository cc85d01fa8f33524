"""Open and validate a CFHT MegaCam exposure; read its metadata and one CCD at a time.

A MegaCam raw exposure is a multi-extension FITS file (MEF): an empty PRIMARY HDU followed by one
image extension per CCD (36 science CCDs, 40 in products that carry the guide CCDs), each
2048 x 4612 pixels of uint16 stored as int16 with ``BZERO = 32768``. The CADC archive also serves
tile-compressed ``.fits.fz`` files (fpack): the same layout with each image stored as a BINTABLE
with ``ZIMAGE = T``.

This module has no Beam in it. It offers, from cheapest to dearest:

:func:`check_integrity`
    The header walk. Reads only the header blocks (never a pixel) and proves that every HDU the
    headers announce is wholly present, that nothing follows the last one and that the number of
    extensions matches ``NEXTEND``. Milliseconds per exposure, whatever the file size
    (benchmarks/README.md).
:func:`read_meta`
    The walk plus header validation: the exposure id, night, EXPTIME, filter, CCD names, and the
    rule that every extension is a 2-D image of one common shape.
:func:`read_ccd` / :func:`iter_ccds`
    The pixels of one CCD as native float32 with ``BZERO`` / ``BSCALE`` applied, in bounded memory.
:func:`ccd_problem`
    Why a CCD should be quarantined (NaN, dead, saturated, wrong shape), or ``None``.

Errors
------
Every failure is an :class:`ExposureError` that names the file, the HDU and what is wrong, with a
short machine-friendly ``reason`` slug for the ledger and metrics. Its two subclasses tell the
watcher what to do:

:class:`IncompleteFileError` -- more bytes could make the file valid, so wait and retry:

- ``empty``: the file has zero bytes.
- ``truncated``: the file ends inside a header (before its ``END`` card), inside a data unit,
  inside the padding of the last 2880-byte block, or exactly at an HDU boundary while ``NEXTEND``
  in the PRIMARY header promises more extensions. The HDU named is the one that is cut (or the
  first one missing).
- ``zero_filled``: where a header must start (or continue) there are only NUL bytes while more
  HDUs are expected: the signature of a copy into a preallocated file. From
  :func:`check_data` also: a data unit ends in NUL bytes and its ``DATASUM`` does not match.
- ``zero_tail`` (:func:`check_data` only): a data unit ends in NUL bytes and has no
  ``DATASUM`` to tell a copy still filling preallocated space from data that really end in
  zeros. The file is structurally complete: the watcher grades it once it has stayed
  unchanged for its whole ``incomplete_timeout_s``.

:class:`CorruptFileError` -- structurally wrong in a way more bytes cannot fix:

- ``not_fits``: the first card is not ``SIMPLE = T``.
- ``bad_header``: a header holds non-ASCII bytes, lacks or garbles a structural keyword
  (BITPIX, NAXIS, NAXISn, PCOUNT, GCOUNT, the ZIMAGE keywords), has no END card within
  :data:`MAX_HEADER_BLOCKS` blocks, or an extension does not start with ``XTENSION``.
- ``bad_nextend``: ``NEXTEND`` is not a non-negative integer, or the file holds *more* complete
  extensions than it says.
- ``trailing_data``: bytes follow the last HDU once every extension that ``NEXTEND`` promises is
  present (or, without ``NEXTEND``, bytes that are not the start of another extension header).
  FITS allows "special records" there, but no MegaCam product writes them and a grading
  pipeline should not guess what they are.
- ``bad_shape`` / ``bad_extension`` / ``no_ccds`` (from :func:`read_meta` / :func:`read_ccd`): an
  extension is not an image, is not 2-D, or the CCDs differ in shape; or there is no CCD at all.

Plain :class:`ExposureError` -- a structurally sound FITS file whose metadata breaks the
exposure contract: ``missing_exptime``, ``bad_exptime``, ``bad_expnum``, ``bad_date_obs``.

What a header walk cannot see:

- A file cut exactly at an HDU boundary is indistinguishable from a complete file with fewer
  extensions unless ``NEXTEND`` is present: every MegaCam product carries it, and it is the only
  defence there.
- Pixel bytes are never read, so a copy into a preallocated file that is still filling the last
  data unit passes: :func:`check_data` (which the watcher runs after the walk) reads the end of
  every data unit for that.
- A file that stays "incomplete" forever (e.g. ``NEXTEND`` larger than the real count) is the
  watcher's to time out and quarantine.

Confined reads
--------------
A file named in the drop directory can change between the watcher's check and the grade (a
night folder swapped for a symlink to somewhere else: before, the grader then read a file
outside the drop). :func:`pinned` opens the file once, component by component with
``O_NOFOLLOW`` beneath the drop directory (:func:`ops.files.open_beneath`), and while it is
held every read this module makes of that path goes to the open file, never the name again:
:func:`read_meta` records in the metadata the file's ``(st_dev, st_ino)`` and, on Linux, a
``/proc/<pid>/fd/<n>`` name of the open descriptor, through which the CCD workers (other
processes) read the same open file. A path it refuses raises ``ExposureError`` with reason
``outside_drop`` when read; a worker that finds another file than the one pinned raises
``file_changed``.

Separation of duties: :func:`check_integrity` is purely structural (sizes, blocks, card syntax
of structural keywords, NEXTEND); it does not care what the HDUs hold. :func:`read_meta` decides
whether the structure is a gradable exposure.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import re
import stat
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

from ops.files import OutsideRootError, open_beneath

__all__ = [
    "BLOCK",
    "HST_OFFSET",
    "MAX_HEADER_BLOCKS",
    "MAX_NAN_FRACTION",
    "MAX_SATURATED_FRACTION",
    "MIN_CCD_SIDE",
    "NIGHT_ROLLOVER",
    "CcdPixels",
    "CcdRef",
    "CorruptFileError",
    "ExposureError",
    "ExposureMeta",
    "FileLayout",
    "HduInfo",
    "IncompleteFileError",
    "ccd_problem",
    "ccd_refs",
    "check_data",
    "check_integrity",
    "iter_ccds",
    "observing_night",
    "pinned",
    "read_ccd",
    "read_meta",
]

log = logging.getLogger(__name__)

#: FITS logical record length: headers and data units are padded to multiples of this.
BLOCK = 2880
#: Card length.
CARD = 80
#: A header longer than this many blocks without an END card is refused as corrupt (MegaCam
#: headers are a few blocks; the cap keeps the walk bounded on garbage that happens to be ASCII).
MAX_HEADER_BLOCKS = 1000

#: A CCD with more than this fraction of non-finite (NaN / inf) pixels is quarantined.
MAX_NAN_FRACTION = 0.5
#: A CCD with more than this fraction of its finite pixels at or above SATURATE is quarantined.
MAX_SATURATED_FRACTION = 0.5
#: A CCD whose shorter side is below this many pixels is quarantined as ``bad_shape``.
MIN_CCD_SIDE = 32

#: A night folder's name (``YYYY-MM-DD``): archives and the grades dataset are laid out by night.
NIGHT_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")

#: Offset of CFHT local time (HST) from UTC, and the local hour at which the night rolls over.
HST_OFFSET = timedelta(hours=-10)
NIGHT_ROLLOVER = timedelta(hours=12)

_VALID_BITPIX = frozenset({8, 16, 32, 64, -32, -64})
# EXTNAME astropy gives a CompImageHDU written without a name: not a CCD name.
_DEFAULT_EXTNAMES = frozenset({"COMPRESSED_IMAGE", "PRIMARY", ""})
_SIMPLE_START = b"SIMPLE  =                    T"
_XTENSION = b"XTENSION"
_END_CARD = b"END" + b" " * 77
_PRINTABLE = bytes(range(0x20, 0x7F))
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


# --------------------------------------------------------------------------------------- errors
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


# ---------------------------------------------------------------------------------- the layout
@dataclass(frozen=True)
class HduInfo:
    """Where one HDU lies in the file, as its header says.

    Attributes
    ----------
    index : int
        0-based HDU index (0 = PRIMARY).
    header_offset, data_offset : int
        Byte offsets of the header and of the data unit.
    data_size : int
        Bytes of the data unit on disk, padded to a multiple of 2880 (0 when there is none).
    extname : str or None
        ``EXTNAME``, stripped, if present.
    naxis : tuple of int
        ``(NAXIS1, NAXIS2, ...)`` in FITS order; for a tile-compressed image the image's
        ``(ZNAXIS1, ZNAXIS2, ...)``, not the BINTABLE's.
    bitpix : int
        ``BITPIX``; for a tile-compressed image ``ZBITPIX``.
    compressed : bool
        True for a tile-compressed image (``XTENSION = 'BINTABLE'`` with ``ZIMAGE = T``).
    xtension : str or None
        ``XTENSION`` (``None`` for the PRIMARY HDU).
    data_bytes : int
        Bytes of the data unit without its padding.
    """

    index: int
    header_offset: int
    data_offset: int
    data_size: int
    extname: str | None
    naxis: tuple[int, ...]
    bitpix: int
    compressed: bool
    xtension: str | None = None
    data_bytes: int = 0

    @property
    def is_image(self) -> bool:
        """True for an image extension, plain or tile-compressed."""
        return self.compressed or self.xtension == "IMAGE"

    @property
    def shape(self) -> tuple[int, ...]:
        """The image shape in numpy order (``naxis`` reversed)."""
        return tuple(reversed(self.naxis))


@dataclass(frozen=True)
class FileLayout:
    """The result of the header walk: the file's size and every HDU in it.

    Attributes
    ----------
    path : str
    size : int
        File size in bytes; equals the end of the last HDU.
    hdus : list of HduInfo
        PRIMARY first.
    nextend : int or None
        ``NEXTEND`` from the PRIMARY header, when present.
    """

    path: str
    size: int
    hdus: list[HduInfo]
    nextend: int | None = None

    @property
    def n_extensions(self) -> int:
        """Number of HDUs after the PRIMARY."""
        return len(self.hdus) - 1


# ----------------------------------------------------------------------------- card parsing
_STRING = re.compile(rb" *'((?:[^']|'')*)")


def _string_value(field: bytes | None) -> str | None:
    """A FITS string value (``'IMAGE   '`` -> ``IMAGE``; ``''`` escapes a quote), else None."""
    match = None if field is None else _STRING.match(field)
    if match is None:
        return None
    return match.group(1).replace(b"''", b"'").decode("ascii").strip()


def _bare_value(field: bytes | None) -> bytes | None:
    """A non-string value with its comment and blanks removed (``b"16"``, ``b"T"``)."""
    return None if field is None else field.split(b"/", 1)[0].strip()


class _Cards:
    """Keyword lookup in raw header bytes: one C-level ``find`` per keyword asked for.

    Only cards that start on an 80-byte boundary count, so a keyword quoted inside another
    card's value or comment is never mistaken for the card itself; the first occurrence wins.
    """

    __slots__ = ("header",)

    def __init__(self, header: bytes):
        self.header = header

    def get(self, key: str, card: int | None = None) -> bytes | None:
        """The value field (columns 11-80) of ``key``'s card, or None when absent.

        ``card`` is where the FITS standard puts the keyword (0-based card number): looked at
        first, then the whole header is searched. A card without the ``"= "`` value indicator
        counts as absent.
        """
        header = self.header
        key8 = _key8(key)
        if card is not None:
            start = card * CARD
            if header[start : start + 8] == key8:
                return (
                    header[start + 10 : start + CARD]
                    if header[start + 8 : start + 10] == b"= "
                    else None
                )
        # Search without the padding blanks: find() is slow on patterns that end in blanks.
        pattern = key8.rstrip()
        i = header.find(pattern)
        while i != -1:
            if i % CARD == 0 and header[i : i + 8] == key8:
                return header[i + 10 : i + CARD] if header[i + 8 : i + 10] == b"= " else None
            i = header.find(pattern, i + 1)
        return None


@functools.cache
def _key8(key: str) -> bytes:
    return key.ljust(8).encode("ascii")


# -------------------------------------------------------------------------------- the walk
# Whether the walk expects another HDU where it stands: PRIMARY or an extension NEXTEND promises
# (YES), one beyond NEXTEND (NO), or there is no NEXTEND to tell (MAYBE).
_YES, _NO, _MAYBE = "yes", "no", "maybe"


def _find_end(block: bytes) -> bool:
    """True if the block holds the END card (at a card boundary)."""
    i = block.find(b"END")
    while i != -1:
        if i % CARD == 0 and block[i : i + CARD] == _END_CARD:
            return True
        i = block.find(b"END", i + 1)
    return False


def _check_primary_start(path: str, block: bytes) -> None:
    head = block[: len(_SIMPLE_START)]
    if head == _SIMPLE_START:
        return
    if block[:10] == b"SIMPLE  = " and len(block) >= CARD:
        if _bare_value(block[10:CARD]) == b"T":
            return  # free-format T
        raise CorruptFileError(path, 0, "not_fits", "first card is SIMPLE but its value is not T")
    if len(head) < len(_SIMPLE_START) and _SIMPLE_START.startswith(head):
        return  # a prefix of a valid first card: the caller reports the truncation
    if not block.strip(b"\0"):
        raise IncompleteFileError(
            path, 0, "zero_filled", "file starts with NUL bytes (preallocated copy in progress?)"
        )
    # Never quote the bytes: any file linked into the drop would show them in the reason.
    raise CorruptFileError(path, 0, "not_fits", "first card is not SIMPLE = T: not a FITS file")


def _check_extension_start(
    path: str, index: int, offset: int, size: int, block: bytes, expect: str, nextend: int | None
) -> None:
    head = block[: len(_XTENSION)]
    starts = head == _XTENSION or (len(head) < len(_XTENSION) and _XTENSION.startswith(head))
    if starts and expect == _NO:
        raise CorruptFileError(
            path,
            index,
            "bad_nextend",
            f"NEXTEND = {nextend} but another extension header starts at byte {offset}",
        )
    if starts:
        return
    if expect == _YES:
        if not block.strip(b"\0"):
            raise IncompleteFileError(
                path,
                index,
                "zero_filled",
                f"NUL bytes at byte {offset} where extension {index} of NEXTEND = {nextend} "
                "should start (preallocated copy in progress?)",
            )
        # Say what was expected and where, never which bytes are there: a hard link to any
        # file the daemon can read would copy them into the reason, the log and the page.
        raise CorruptFileError(
            path,
            index,
            "bad_header",
            f"expected an extension header (an XTENSION card) at byte {offset}; "
            "something else is there",
        )
    raise CorruptFileError(
        path,
        index,
        "trailing_data",
        f"{size - offset} bytes follow the last HDU (from byte {offset}) and are not an "
        "extension header (no XTENSION card there)",
    )


def _read_header(
    path: str, fh, size: int, index: int, offset: int, expect: str, nextend: int | None
) -> bytes:
    """Header bytes (whole blocks, through the one holding END) of HDU ``index`` at ``offset``."""
    blocks: list[bytes] = []
    pos = offset
    while True:
        fh.seek(pos)
        block = fh.read(BLOCK)
        if not blocks:
            if index == 0:
                _check_primary_start(path, block)
            else:
                _check_extension_start(path, index, offset, size, block, expect, nextend)
        if block.translate(None, _PRINTABLE):
            nul = block.find(b"\0")
            if nul != -1 and not block[nul:].strip(b"\0"):
                raise IncompleteFileError(
                    path,
                    index,
                    "zero_filled",
                    f"header runs into NUL bytes at byte {pos + nul} "
                    "(preallocated copy in progress?)",
                )
            bad = next(i for i, b in enumerate(block) if not 0x20 <= b < 0x7F)
            raise CorruptFileError(
                path,
                index,
                "bad_header",
                f"non-printable byte {block[bad]:#04x} in the header at byte {pos + bad}",
            )
        found = _find_end(block)
        if len(block) < BLOCK:
            where = "in the last header block" if found else "before the END card"
            raise IncompleteFileError(
                path,
                index,
                "truncated",
                f"file ends {where} of the header that starts at byte {offset} ({size} bytes)",
            )
        blocks.append(block)
        if found:
            return b"".join(blocks)
        pos += BLOCK
        if len(blocks) >= MAX_HEADER_BLOCKS:
            raise CorruptFileError(
                path,
                index,
                "bad_header",
                f"no END card within {MAX_HEADER_BLOCKS} header blocks from byte {offset}",
            )


def _as_int(
    path: str,
    index: int,
    cards: _Cards,
    key: str,
    default: int | None = None,
    card: int | None = None,
) -> int:
    field = cards.get(key, card)
    if field is None:
        if default is not None:
            return default
        raise CorruptFileError(path, index, "bad_header", f"missing structural keyword {key}")
    try:
        return int(field.split(b"/", 1)[0])
    except ValueError:
        raise CorruptFileError(
            path, index, "bad_header", f"{key} is not an integer: {_bare_value(field)!r}"
        ) from None


_NAXIS_CARDS = tuple(f"NAXIS{i}".ljust(8).encode("ascii") + b"= " for i in range(1000))


def _fixed_format(header: bytes, index: int) -> tuple[int, tuple[int, ...], int, int] | None:
    """BITPIX, NAXISn, PCOUNT, GCOUNT of a header written the way the FITS standard asks.

    Mandatory keywords sit in cards 2, 3, 4... with fixed-format values (columns 11-30), so
    they can be read by position without searching. Returns None on any deviation, and the
    caller then looks each keyword up wherever it is.
    """
    if header[80:90] != b"BITPIX  = " or header[160:170] != b"NAXIS   = ":
        return None
    try:
        bitpix = int(header[90:110])
        naxis = int(header[170:190])
        if not 0 <= naxis <= 999:
            return None
        dims = []
        for i in range(1, naxis + 1):
            start = (2 + i) * CARD
            if header[start : start + 10] != _NAXIS_CARDS[i]:
                return None
            dims.append(int(header[start + 10 : start + 30]))
        start = (3 + naxis) * CARD
        if index == 0:
            # PCOUNT / GCOUNT appear in a PRIMARY header only for random groups.
            if b"GROUPS" in header:
                return None
            return bitpix, tuple(dims), 0, 1
        if (
            header[start : start + 10] != b"PCOUNT  = "
            or header[start + CARD : start + CARD + 10] != b"GCOUNT  = "
        ):
            return None
        pcount = int(header[start + 10 : start + 30])
        gcount = int(header[start + CARD + 10 : start + CARD + 30])
    except ValueError:
        return None
    return bitpix, tuple(dims), pcount, gcount


def _hdu_info(path: str, index: int, header: bytes, header_offset: int) -> HduInfo:
    """Parse the structural keywords of one header and size its data unit."""
    cards = _Cards(header)
    fixed = _fixed_format(header, index)
    if fixed is not None:
        bitpix, dims, pcount, gcount = fixed
        naxis = len(dims)
    else:
        # Mandatory keywords out of place or free-format: look each one up.
        bitpix = _as_int(path, index, cards, "BITPIX", card=1)
        naxis = _as_int(path, index, cards, "NAXIS", card=2)
        if not 0 <= naxis <= 999:
            raise CorruptFileError(
                path, index, "bad_header", f"NAXIS = {naxis} out of range 0..999"
            )
        dims = tuple(
            _as_int(path, index, cards, f"NAXIS{i}", card=2 + i) for i in range(1, naxis + 1)
        )
        pcount = _as_int(path, index, cards, "PCOUNT", 0, card=3 + naxis)
        gcount = _as_int(path, index, cards, "GCOUNT", 1, card=4 + naxis)
    if bitpix not in _VALID_BITPIX:
        raise CorruptFileError(path, index, "bad_header", f"BITPIX = {bitpix} is not valid FITS")
    if any(d < 0 for d in dims):
        raise CorruptFileError(path, index, "bad_header", f"negative axis length in {dims}")
    xtension = _string_value(header[10:CARD]) if index else None
    if pcount < 0 or gcount < 0:
        raise CorruptFileError(
            path, index, "bad_header", f"PCOUNT = {pcount}, GCOUNT = {gcount} must be >= 0"
        )
    if naxis == 0:
        n_bytes = 0
    else:
        axes = dims
        if index == 0 and _bare_value(cards.get("GROUPS")) == b"T" and dims[0] == 0:
            axes = dims[1:]  # random groups: NAXIS1 = 0 is not a dimension
        n_bytes = abs(bitpix) // 8 * gcount * (pcount + math.prod(axes))
    data_size = -(-n_bytes // BLOCK) * BLOCK

    compressed = xtension == "BINTABLE" and _bare_value(cards.get("ZIMAGE")) == b"T"
    if compressed:
        bitpix = _as_int(path, index, cards, "ZBITPIX")
        znaxis = _as_int(path, index, cards, "ZNAXIS")
        if not 0 <= znaxis <= 999 or bitpix not in _VALID_BITPIX:
            raise CorruptFileError(
                path, index, "bad_header", f"ZNAXIS = {znaxis}, ZBITPIX = {bitpix} not valid"
            )
        dims = tuple(_as_int(path, index, cards, f"ZNAXIS{i}") for i in range(1, znaxis + 1))
    header_size = len(header)
    return HduInfo(
        index=index,
        header_offset=header_offset,
        data_offset=header_offset + header_size,
        data_size=data_size,
        extname=_string_value(cards.get("EXTNAME")),
        naxis=dims,
        bitpix=bitpix,
        compressed=compressed,
        xtension=xtension,
        data_bytes=n_bytes,
    )


@dataclass(frozen=True)
class _Pin:
    """A path held open by :func:`pinned`: its descriptor, or why it was refused."""

    fd: int | None
    file_id: tuple[int, int] | None
    error: ExposureError | None = None


_PINS: dict[str, list[_Pin]] = {}  # path -> its pins, innermost last
_PINS_LOCK = threading.Lock()


@contextlib.contextmanager
def pinned(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> Iterator[None]:
    """Open ``path`` once, beneath ``root``; inside the block this module reads only that file.

    ``path`` is opened with :func:`ops.files.open_beneath` (no symlink followed anywhere below
    ``root``, the open file's real path checked to be inside it). While the block runs, every
    read of ``path`` in this process (:func:`check_integrity`, :func:`read_meta`,
    :func:`read_ccd`...) reads that open file whatever the name now points to, and the
    metadata :func:`read_meta` returns carries what CCD workers in other processes need to
    read it too (see "Confined reads" in the module docstring). If ``path`` cannot be opened
    so, those reads raise ``ExposureError`` instead: ``outside_drop`` (a symlink on the way,
    or outside ``root``, or not a regular file) or ``unreadable``. The descriptor is closed
    when the block ends.

    Parameters
    ----------
    path : path-like
        The exposure, as it will be passed to the readers (the same string).
    root : path-like
        The drop directory.

    Examples
    --------
    >>> with pinned("/drop/2026-11-24/2817001o.fits", "/drop"):  # doctest: +SKIP
    ...     meta = read_meta("/drop/2026-11-24/2817001o.fits")
    """
    spath = os.fspath(path)
    try:
        fd = open_beneath(root, spath)
    except OutsideRootError as exc:
        pin = _Pin(None, None, ExposureError(spath, None, "outside_drop", _refusal(exc, root)))
    except OSError as exc:
        pin = _Pin(None, None, ExposureError(spath, None, "unreadable", f"cannot open: {exc}"))
    else:
        st = os.fstat(fd)
        pin = _Pin(fd, (st.st_dev, st.st_ino))
    with _PINS_LOCK:
        _PINS.setdefault(spath, []).append(pin)
    try:
        yield
    finally:
        with _PINS_LOCK:
            pins = _PINS[spath]
            pins.remove(pin)
            if not pins:
                del _PINS[spath]
        if pin.fd is not None:
            os.close(pin.fd)


def _refusal(exc: OSError, root) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    return (
        f"not opened: {exc.strerror}{where}; only regular files inside {os.fspath(root)} are read"
    )


def _pin_of(spath: str) -> _Pin | None:
    with _PINS_LOCK:
        pins = _PINS.get(spath)
        return pins[-1] if pins else None


def _pinned_source(pin: _Pin) -> str | None:
    """A name of the pinned descriptor that another process can open (Linux), or None."""
    name = f"/proc/{os.getpid()}/fd/{pin.fd}"
    return name if pin.fd is not None and os.path.exists(name) else None


def _open_exposure(spath: str, source: str | None = None, file_id=None):
    """The file to read for ``spath``: the pinned one (see :func:`pinned`), the one named by
    ``source`` (a worker reading a file pinned in another process), else ``spath`` itself;
    checked to be file ``file_id`` (``(st_dev, st_ino)``) when that is given."""
    pin = _pin_of(spath)
    try:
        if pin is not None:
            if pin.error is not None:
                raise pin.error
            file_id = pin.file_id
            try:  # a file description of its own (its own offset) on the same open file
                fh = open(f"/proc/self/fd/{pin.fd}", "rb")  # noqa: SIM115 -- the caller's
            except OSError:
                fh = os.fdopen(os.dup(pin.fd), "rb")
        elif source is not None:
            fh = open(source, "rb")  # noqa: SIM115 -- the caller closes it
        else:
            fh = open(spath, "rb", opener=_open_nonblocking)  # noqa: SIM115 -- the caller's
    except (FileNotFoundError, IsADirectoryError, ExposureError):
        raise
    except OSError as exc:
        raise ExposureError(spath, None, "unreadable", f"cannot open: {exc}") from exc
    if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
        # A FIFO (or device) put in the place of a file after its stat: never read from it.
        fh.close()
        raise ExposureError(spath, None, "unreadable", "not a regular file")
    os.set_blocking(fh.fileno(), True)
    if file_id is not None:
        st = os.fstat(fh.fileno())
        if (st.st_dev, st.st_ino) != tuple(file_id):
            fh.close()
            raise ExposureError(
                spath,
                None,
                "file_changed",
                "not the file opened for grading any more (replaced or moved meanwhile)",
            )
    return fh


def _open_nonblocking(path: str, flags: int) -> int:
    """``open``'s opener: O_NONBLOCK, so that opening a FIFO cannot wait for a writer."""
    return os.open(path, flags | os.O_NONBLOCK)


def _walk(
    path: str | os.PathLike[str],
    keep_headers: bool = False,
    source: str | None = None,
    file_id=None,
) -> tuple[FileLayout, list[bytes]]:
    """The header walk behind :func:`check_integrity`; optionally keeps the raw headers."""
    spath = os.fspath(path)
    with _open_exposure(spath, source, file_id) as fh:
        return _walk_open(spath, fh, keep_headers)


def _walk_open(spath: str, fh, keep_headers: bool) -> tuple[FileLayout, list[bytes]]:
    """:func:`_walk` on a file already open."""
    size = os.fstat(fh.fileno()).st_size
    if size == 0:
        raise IncompleteFileError(spath, 0, "empty", "file is empty (0 bytes)")
    hdus: list[HduInfo] = []
    headers: list[bytes] = []
    nextend: int | None = None
    offset = 0
    while offset < size:
        index = len(hdus)
        if index == 0 or (nextend is not None and index <= nextend):
            expect = _YES
        else:
            expect = _MAYBE if nextend is None else _NO
        header = _read_header(spath, fh, size, index, offset, expect, nextend)
        info = _hdu_info(spath, index, header, offset)
        if index == 0:
            nextend = _nextend(spath, header)
        end = info.data_offset + info.data_size
        if end > size:
            have = max(size - info.data_offset, 0)
            raise IncompleteFileError(
                spath,
                index,
                "truncated",
                f"file ends {end - size} bytes short of the end of this HDU: data unit of "
                f"{info.data_size} bytes (padded) at byte {info.data_offset}, {have} present",
            )
        hdus.append(info)
        if keep_headers:
            headers.append(header)
        offset = end
    if nextend is not None and len(hdus) - 1 < nextend:
        raise IncompleteFileError(
            spath,
            len(hdus),
            "truncated",
            f"file ends after {len(hdus) - 1} of NEXTEND = {nextend} extensions ({size} bytes)",
        )
    return FileLayout(path=spath, size=size, hdus=hdus, nextend=nextend), headers


def _nextend(path: str, header: bytes) -> int | None:
    field = _Cards(header).get("NEXTEND")
    if field is None:
        return None
    raw = _bare_value(field)
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise CorruptFileError(
            path, 0, "bad_nextend", f"NEXTEND = {raw.decode()} is not a non-negative integer"
        )
    return value


def check_integrity(path: str | os.PathLike[str]) -> FileLayout:
    """Prove that a FITS file is complete by walking its headers; read no pixel.

    Reads each header's 2880-byte blocks up to its END card, computes the data extent
    ``|BITPIX|/8 * GCOUNT * (PCOUNT + NAXIS1 * ... * NAXISn)`` rounded up to 2880 bytes, and checks
    that it fits in the file, that the file ends exactly where the last HDU does and that the
    number of extensions equals ``NEXTEND`` when the PRIMARY header has it.

    Parameters
    ----------
    path : str or os.PathLike
        A FITS or tile-compressed ``.fits.fz`` file.

    Returns
    -------
    FileLayout
        The size of the file and the offsets, sizes, names and image geometry of every HDU.

    Raises
    ------
    IncompleteFileError
        The file could still become valid: empty, cut inside a header or data unit, or fewer
        extensions than ``NEXTEND`` (see the module docstring for every case).
    CorruptFileError
        Not FITS, a malformed header, more extensions than ``NEXTEND``, or trailing bytes.
    FileNotFoundError
        The path does not exist (the watcher may see a file vanish mid-move).

    Examples
    --------
    >>> layout = check_integrity("2345678o.fits")  # doctest: +SKIP
    >>> layout.n_extensions, layout.hdus[1].naxis
    (36, (2048, 4612))
    """
    return _walk(path)[0]


#: Bytes read at the end of each data unit by :func:`check_data` (one FITS block).
TAIL_PROBE = BLOCK
#: NUL bytes at the very end of a data unit that make :func:`check_data` take it for a copy
#: in progress. Not the whole probe: a copy that paused with fewer than TAIL_PROBE bytes left
#: had data in the probe and was graded early, then again once complete (the fault suite's
#: preallocated copy, stopped 10 bytes short). A paused copy leaves at least a write's worth
#: (KiBs). Real data rarely end in 8 NUL bytes (2 float pixels exactly 0.0, 4 16-bit pixels
#: stored as 0; an integer-valued float ends in at most 2 of a float32's, 5 of a float64's)
#: and are then only waited for (``zero_tail``) or proved by their DATASUM.
ZERO_RUN = 8
_CHUNK = 8 << 20  # bytes per read when a data checksum is computed


def data_checksum(fh, offset: int, size: int) -> int:
    """The FITS checksum (32-bit ones' complement sum of big-endian words) of ``size`` bytes at
    ``offset`` (a data unit with its padding: a multiple of 4), as ``DATASUM`` holds it."""
    total = 0
    pos, end = offset, offset + size
    while pos < end:
        fh.seek(pos)
        chunk = fh.read(min(_CHUNK, end - pos))
        if not chunk:
            break
        if len(chunk) % 4:
            chunk += bytes(4 - len(chunk) % 4)
        total += int(np.frombuffer(chunk, dtype=">u4").sum(dtype=np.uint64))
        pos += len(chunk)
    while total >> 32:
        total = (total & 0xFFFFFFFF) + (total >> 32)
    return total


def check_data(path: str | os.PathLike[str], layout: FileLayout | None = None) -> str:
    """Check the end of every data unit; return a fingerprint of the file's content.

    The header walk (:func:`check_integrity`) cannot see a copy into preallocated space (``truncate
    -s SIZE`` then filled, as ``rsync --preallocate`` and ``fallocate`` do) that is still filling
    its data: the file has its final size from the start, and NUL bytes where the pixels will
    be. This reads the last :data:`TAIL_PROBE` bytes of each data unit (without its padding): a
    data unit whose last :data:`ZERO_RUN` bytes (or more) are NUL is a copy in progress, unless
    its ``DATASUM`` (when the header has one) proves those zeros are the data. ~1 ms for 36
    CCDs; the whole data unit is read only for a checksum to verify.

    Parameters
    ----------
    path : str or os.PathLike
        A file :func:`check_integrity` accepted.
    layout : FileLayout, optional
        Its layout, when the caller has it already.

    Returns
    -------
    str
        A hex digest of the headers and of the first and last :data:`TAIL_PROBE` bytes of every
        data unit: equal for a file touched, or copied again, with the same content (the
        watcher grades a file again only when it differs).

    Raises
    ------
    IncompleteFileError
        ``zero_filled``: a data unit ends in NUL bytes and its ``DATASUM`` does not match;
        ``zero_tail``: it ends in NUL bytes and has no ``DATASUM`` (see the module docstring).
    """
    import hashlib

    spath = os.fspath(path)
    if layout is None:
        layout = check_integrity(spath)
    digest = hashlib.blake2b(str(layout.size).encode(), digest_size=16)
    with _open_exposure(spath) as fh:
        for hdu in layout.hdus:
            fh.seek(hdu.header_offset)
            header = fh.read(hdu.data_offset - hdu.header_offset)
            digest.update(header)
            n = hdu.data_bytes
            if n == 0:
                continue
            fh.seek(hdu.data_offset)
            digest.update(fh.read(min(TAIL_PROBE, n)))
            start = hdu.data_offset + max(n - TAIL_PROBE, 0)
            fh.seek(start)
            tail = fh.read(hdu.data_offset + n - start)
            digest.update(tail)
            zeros = len(tail) - len(tail.rstrip(b"\0"))
            if zeros < min(ZERO_RUN, len(tail)):
                continue
            start += len(tail) - zeros
            datasum = _string_value(_Cards(header).get("DATASUM"))
            if datasum:
                got = data_checksum(fh, hdu.data_offset, hdu.data_size)
                if datasum.isdigit() and int(datasum) == got:
                    continue  # the zeros are the data
                raise IncompleteFileError(
                    spath,
                    hdu.index,
                    "zero_filled",
                    f"the data unit ends in NUL bytes (from byte {start}) and its checksum "
                    f"{got} is not DATASUM = {datasum} (preallocated copy in progress?)",
                )
            raise IncompleteFileError(
                spath,
                hdu.index,
                "zero_tail",
                f"the data unit ends in {zeros} NUL bytes (from byte {start}) and has no "
                "DATASUM to check (preallocated copy in progress?)",
            )
    return digest.hexdigest()


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


def _parse_header(raw: bytes) -> fits.Header:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)
        return fits.Header.fromstring(raw.decode("ascii"))


def header_value(header: fits.Header, key: str):
    """Header value, or None when absent, undefined or unparsable (quietly: callers validate).

    Shared by the image reader here and the catalog reader (transforms.sextractor)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)
        try:
            value = header.get(key)
        except (ValueError, fits.VerifyError):
            return None
    if value is None or isinstance(value, fits.card.Undefined):
        return None
    return value


def header_float(header: fits.Header, key: str) -> float | None:
    value = header_value(header, key)
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def header_str(header: fits.Header, key: str) -> str | None:
    value = header_value(header, key)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


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


def _ccd_hdus(path: str, layout: FileLayout) -> list[HduInfo]:
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


def _ccd_name(hdu: HduInfo, header: bytes) -> str:
    if hdu.extname and hdu.extname.upper() not in _DEFAULT_EXTNAMES:
        return hdu.extname
    name = _string_value(_Cards(header).get("CCDNAME"))
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
    layout, headers = _walk(path, keep_headers=True)
    spath = layout.path
    ccds = _ccd_hdus(spath, layout)
    primary = _parse_header(headers[0])
    pin = _pin_of(spath)
    file_id = pin.file_id if pin is not None else None
    source = _pinned_source(pin) if pin is not None else None

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
        ccd_names=tuple(_ccd_name(h, headers[h.index]) for h in ccds),
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


# ----------------------------------------------------------------------------------- pixels
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
    with _open_exposure(spath, source, file_id) as fh:  # one open: walk and pixels
        layout, headers = _walk_open(spath, fh, keep_headers=True)
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
    header = _parse_header(raw_header)
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
        name=_ccd_name(hdu, raw_header),
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
    with _open_exposure(spath) as fh:
        layout, headers = _walk_open(spath, fh, keep_headers=True)
        st = os.fstat(fh.fileno())
    file_id = (st.st_dev, st.st_ino)  # each later open must find this same file
    ccds = _ccd_hdus(layout.path, layout)
    for i in range(len(ccds)):
        with _open_exposure(spath, file_id=file_id) as fh:
            ccd = _read_ccd(fh, layout, headers, i)
        yield ccd


# ------------------------------------------------------------------------------- quarantine
def ccd_problem(ccd: CcdPixels) -> str | None:
    """Why a CCD should not be graded, or ``None`` when it looks like a working detector.

    Checks, in order (thresholds are the module constants):

    - ``bad_shape``: not 2-D, or a side shorter than :data:`MIN_CCD_SIDE`.
    - ``all_nan``: no finite pixel; ``nan_fraction>X``: more than :data:`MAX_NAN_FRACTION`
      of the pixels are NaN or infinite.
    - ``all_zero`` / ``constant``: every finite pixel holds one value (a dead CCD), unless
      that value is at or above ``ccd.saturate``: then ``saturated``.
    - ``saturated``: more than :data:`MAX_SATURATED_FRACTION` of the finite pixels are at or
      above ``ccd.saturate`` (skipped when ``saturate`` is ``None``). A sky bright enough to
      saturate a whole CCD (twilight, a 600 s exposure near the Moon) looks like this;
      :func:`transforms.grade.grade_exposure` grades an exposure with half or more of its
      CCDs saturated as BGP.

    Parameters
    ----------
    ccd : CcdPixels

    Returns
    -------
    str or None
        ``"<slug>: <human text>"``, e.g. ``"constant: every pixel is 1000.0 (dead CCD?)"``; the
        slug is the text before the first colon.

    Examples
    --------
    >>> ccd_problem(read_ccd("2345678o.fits", 0)) is None  # doctest: +SKIP
    True
    """
    data = np.asarray(ccd.data)
    if data.ndim != 2 or min(data.shape) < MIN_CCD_SIDE:
        return f"bad_shape: CCD data has shape {data.shape}; need 2-D with sides >= {MIN_CCD_SIDE}"
    n = data.size
    with np.errstate(invalid="ignore"):
        lo, hi = float(data.min()), float(data.max())
    values = data
    if not (math.isfinite(lo) and math.isfinite(hi)):
        # min/max propagate NaN and show infinities: only then pay for a finite mask.
        finite = np.isfinite(data)
        n_finite = int(np.count_nonzero(finite))
        if n_finite == 0:
            return f"all_nan: none of the {n} pixels is finite"
        bad_fraction = 1.0 - n_finite / n
        if bad_fraction > MAX_NAN_FRACTION:
            return (
                f"nan_fraction>{MAX_NAN_FRACTION:g}: {bad_fraction:.1%} of the pixels are NaN "
                "or infinite"
            )
        values = data[finite]
        lo, hi = float(values.min()), float(values.max())
    if lo == hi:
        if lo == 0.0:
            return "all_zero: every pixel is 0 (dead CCD or no readout?)"
        if ccd.saturate is not None and lo >= ccd.saturate:
            return (
                f"saturated: every pixel is {lo!r}, at or above SATURATE = {ccd.saturate:g} "
                "(sky saturated?)"
            )
        return f"constant: every pixel is {lo!r} (dead CCD?)"
    if ccd.saturate is not None and hi >= ccd.saturate:
        n_sat = int(np.count_nonzero(values >= ccd.saturate))
        sat_fraction = n_sat / values.size
        if sat_fraction > MAX_SATURATED_FRACTION:
            return (
                f"saturated: {sat_fraction:.1%} of the pixels are at or above "
                f"SATURATE = {ccd.saturate:g}"
            )
    return None
