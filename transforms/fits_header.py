"""One FITS header's structure: card lookup in raw header bytes, and where its HDU lies.

The header walk (:mod:`skygrade.transforms.fits_walk`) reads each header's blocks and hands them
here:
:func:`hdu_info` parses the structural keywords (BITPIX, NAXISn, PCOUNT, GCOUNT, the ZIMAGE
keywords of a tile-compressed image) into an :class:`HduInfo` with the size of the data unit.
Cards are read straight from the bytes (:class:`Cards`), never through astropy: the walk must
stay cheap and must not trust what it has not checked yet.

Once the walk has checked a header, :func:`parse_header` gives it to astropy, and
:func:`header_value` / :func:`header_float` / :func:`header_str` read its values quietly (None
when absent or unparsable: the callers validate), for the image reader and the catalog reader.
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from dataclasses import dataclass

from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

from skygrade.transforms.exposure_errors import CorruptFileError

__all__ = [
    "BLOCK",
    "CARD",
    "Cards",
    "HduInfo",
    "bare_value",
    "hdu_info",
    "header_float",
    "header_str",
    "header_value",
    "parse_header",
    "string_value",
]

#: FITS logical record length: headers and data units are padded to multiples of this.
BLOCK = 2880
#: Card length.
CARD = 80

_VALID_BITPIX = frozenset({8, 16, 32, 64, -32, -64})


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


# ----------------------------------------------------------------------------- card parsing
_STRING = re.compile(rb" *'((?:[^']|'')*)")


def string_value(field: bytes | None) -> str | None:
    """A FITS string value (``'IMAGE   '`` -> ``IMAGE``; ``''`` escapes a quote), else None."""
    match = None if field is None else _STRING.match(field)
    if match is None:
        return None
    return match.group(1).replace(b"''", b"'").decode("ascii").strip()


def bare_value(field: bytes | None) -> bytes | None:
    """A non-string value with its comment and blanks removed (``b"16"``, ``b"T"``)."""
    return None if field is None else field.split(b"/", 1)[0].strip()


class Cards:
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


# ---------------------------------------------------------------- structural keywords
def _as_int(
    path: str,
    index: int,
    cards: Cards,
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
            path, index, "bad_header", f"{key} is not an integer: {bare_value(field)!r}"
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


def hdu_info(path: str, index: int, header: bytes, header_offset: int) -> HduInfo:
    """Parse the structural keywords of one header and size its data unit."""
    cards = Cards(header)
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
    xtension = string_value(header[10:CARD]) if index else None
    if pcount < 0 or gcount < 0:
        raise CorruptFileError(
            path, index, "bad_header", f"PCOUNT = {pcount}, GCOUNT = {gcount} must be >= 0"
        )
    if naxis == 0:
        n_bytes = 0
    else:
        axes = dims
        if index == 0 and bare_value(cards.get("GROUPS")) == b"T" and dims[0] == 0:
            axes = dims[1:]  # random groups: NAXIS1 = 0 is not a dimension
        n_bytes = abs(bitpix) // 8 * gcount * (pcount + math.prod(axes))
    data_size = -(-n_bytes // BLOCK) * BLOCK

    compressed = xtension == "BINTABLE" and bare_value(cards.get("ZIMAGE")) == b"T"
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
        extname=string_value(cards.get("EXTNAME")),
        naxis=dims,
        bitpix=bitpix,
        compressed=compressed,
        xtension=xtension,
        data_bytes=n_bytes,
    )


# ------------------------------------------------------------------- header values
def parse_header(raw: bytes) -> fits.Header:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)
        return fits.Header.fromstring(raw.decode("ascii"))


def header_value(header: fits.Header, key: str):
    """Header value, or None when absent, undefined or unparsable (quietly: callers validate).

    Shared by the image reader (skygrade.transforms.exposure) and the catalog reader
    (skygrade.transforms.catalog_files)."""
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
