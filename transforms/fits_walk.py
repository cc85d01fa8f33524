"""The header walk: prove a FITS file complete from its headers alone; check its data's ends.

:func:`check_integrity`
    Reads only the header blocks (never a pixel) and proves that every HDU the headers
    announce is wholly present, that nothing follows the last one and that the number of
    extensions matches ``NEXTEND``. Milliseconds per exposure, whatever the file size
    (benchmarks/README.md).
:func:`check_data`
    Reads the end of every data unit, for a copy into a preallocated file still filling it.

Both raise the errors of :mod:`skygrade.transforms.exposure_errors`, whose docstring lists every
reason. They read a :func:`~skygrade.transforms.confined_reads.pinned` file through its open
descriptor.

What a header walk cannot see:

- A file cut exactly at an HDU boundary is indistinguishable from a complete file with fewer
  extensions unless ``NEXTEND`` is present: every MegaCam product carries it, and it is the only
  defence there.
- Pixel bytes are never read, so a copy into a preallocated file that is still filling the last
  data unit passes: :func:`check_data` (which the watcher runs after the walk) reads the end of
  every data unit for that.
- A file that stays "incomplete" forever (e.g. ``NEXTEND`` larger than the real count) is the
  watcher's to time out and quarantine.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np

from skygrade.transforms.confined_reads import open_exposure
from skygrade.transforms.exposure_errors import CorruptFileError, IncompleteFileError
from skygrade.transforms.fits_header import (
    BLOCK,
    CARD,
    Cards,
    HduInfo,
    bare_value,
    hdu_info,
    string_value,
)

__all__ = [
    "MAX_HEADER_BLOCKS",
    "TAIL_PROBE",
    "FileLayout",
    "check_data",
    "check_integrity",
    "data_checksum",
    "walk",
    "walk_open",
]

#: A header longer than this many blocks without an END card is refused as corrupt (MegaCam
#: headers are a few blocks; the cap keeps the walk bounded on garbage that happens to be ASCII).
MAX_HEADER_BLOCKS = 1000

_SIMPLE_START = b"SIMPLE  =                    T"
_XTENSION = b"XTENSION"
_END_CARD = b"END" + b" " * 77
_PRINTABLE = bytes(range(0x20, 0x7F))


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
        if bare_value(block[10:CARD]) == b"T":
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


def walk(
    path: str | os.PathLike[str],
    keep_headers: bool = False,
    source: str | None = None,
    file_id=None,
) -> tuple[FileLayout, list[bytes]]:
    """The header walk behind :func:`check_integrity`; optionally keeps the raw headers."""
    spath = os.fspath(path)
    with open_exposure(spath, source, file_id) as fh:
        return walk_open(spath, fh, keep_headers)


def walk_open(spath: str, fh, keep_headers: bool) -> tuple[FileLayout, list[bytes]]:
    """:func:`walk` on a file already open."""
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
        info = hdu_info(spath, index, header, offset)
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
    field = Cards(header).get("NEXTEND")
    if field is None:
        return None
    raw = bare_value(field)
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
    return walk(path)[0]


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
    its ``DATASUM`` (when the header has one) proves those zeros are the data. The whole data
    unit is read only for a checksum to verify.

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
    spath = os.fspath(path)
    if layout is None:
        layout = check_integrity(spath)
    digest = hashlib.blake2b(str(layout.size).encode(), digest_size=16)
    with open_exposure(spath) as fh:
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
            datasum = string_value(Cards(header).get("DATASUM"))
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
