"""Tests for skygrade.transforms.exposure (metadata), skygrade.transforms.ccd_pixels (CCD reads),
the header walk and CCD quarantine."""

from __future__ import annotations

import ast
import os
import pickle
import shutil
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from skygrade.transforms import ccd_checks, confined_reads, exposure_errors, fits_header, fits_walk
from skygrade.transforms import ccd_pixels as px
from skygrade.transforms import exposure as ex
from skygrade.transforms.ccd_checks import ccd_problem
from skygrade.transforms.ccd_pixels import CcdPixels, iter_ccds, read_ccd
from skygrade.transforms.confined_reads import pinned
from skygrade.transforms.exposure import CcdRef, ccd_refs, observing_night, read_meta
from skygrade.transforms.exposure_errors import CorruptFileError, ExposureError, IncompleteFileError
from skygrade.transforms.fits_header import BLOCK
from skygrade.transforms.fits_walk import check_integrity

SHAPE = (96, 64)  # numpy order: NAXIS2 = 96 rows, NAXIS1 = 64 columns


# ------------------------------------------------------------------------------- fixtures
def ccd_pixels(i: int, shape=SHAPE) -> np.ndarray:
    """Distinct uint16 data per CCD, with the extreme values 0, 32768 and 65535 in it."""
    rng = np.random.default_rng(i)
    data = rng.integers(500, 3000, size=shape, dtype=np.uint16)
    data[0, :3] = (0, 32768, 65535)
    return data


def make_mef(
    path,
    n_ccd: int = 3,
    *,
    compressed: bool = False,
    nextend: int | str | None = "auto",
    primary: dict | None = None,
    shape=SHAPE,
    ccd_cards: dict | None = None,
    extensions: list | None = None,
):
    """Write a small MegaCam-like MEF: empty PRIMARY + n_ccd uint16 CCDs (BZERO = 32768)."""
    hdr = fits.Header()
    cards = {
        "EXPNUM": 2345678,
        "EXPTIME": 120.0,
        "DATE-OBS": "2026-11-25T06:12:33.4",
        "FILTER": "r.MP9602",
        "OBJECT": "D3",
        "AIRMASS": 1.21,
    }
    cards.update(primary or {})
    for key, value in cards.items():
        if value is not None:
            hdr[key] = value
    for i in range(60):  # a PRIMARY header of several blocks, as MegaCam's is
        hdr.add_history(f"skygrade test fixture, line {i}: END of nothing / 'quoted'")
    if nextend == "auto":
        hdr["NEXTEND"] = n_ccd if extensions is None else len(extensions)
    elif nextend is not None:
        hdr["NEXTEND"] = nextend
    hdus = [fits.PrimaryHDU(header=hdr)]
    if extensions is not None:
        hdus.extend(extensions)
    else:
        for i in range(n_ccd):
            ext = fits.Header()
            ext["CCDNAME"] = f"8434-{i:02d}"
            ext["GAIN"] = 1.5 + i / 10
            ext["RDNOISE"] = 4.0
            ext["SATURATE"] = 65000.0
            for key, value in (ccd_cards or {}).items():
                if value is None:
                    del ext[key]
                else:
                    ext[key] = value
            cls = fits.CompImageHDU if compressed else fits.ImageHDU
            hdus.append(cls(ccd_pixels(i, shape), header=ext, name=f"ccd{i:02d}"))
    fits.HDUList(hdus).writeto(path)
    return path


@pytest.fixture(scope="module")
def mef(tmp_path_factory):
    return make_mef(tmp_path_factory.mktemp("mef") / "2345678o.fits")


@pytest.fixture(scope="module")
def mef_fz(tmp_path_factory):
    return make_mef(tmp_path_factory.mktemp("fz") / "2345678o.fits.fz", compressed=True)


def cut_copy(src, dst, n: int):
    shutil.copyfile(src, dst)
    os.truncate(dst, n)
    return dst


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")


# --------------------------------------------------------------------------------- errors
def test_error_str_names_file_hdu_and_problem_and_pickles():
    err = IncompleteFileError("/drop/1.fits", 3, "truncated", "file ends early")
    assert str(err) == "/drop/1.fits: HDU 3: file ends early"
    assert (err.path, err.hdu, err.reason) == ("/drop/1.fits", 3, "truncated")
    assert isinstance(err, ExposureError)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is IncompleteFileError and str(back) == str(err)
    assert back.reason == "truncated"
    assert str(ExposureError("/x.fits", None, "unreadable", "nope")) == "/x.fits: nope"


# -------------------------------------------------------------------------- the header walk
@pytest.mark.parametrize("kind", ["mef", "mef_fz"])
def test_check_integrity_layout_matches_astropy(kind, request):
    path = request.getfixturevalue(kind)
    layout = check_integrity(path)
    assert layout.size == os.path.getsize(path)
    assert layout.n_extensions == 3 and layout.nextend == 3
    with fits.open(path) as hdul:
        for info in layout.hdus:
            want = hdul.fileinfo(info.index)
            assert info.header_offset == want["hdrLoc"]
            assert info.data_offset == want["datLoc"]
            # astropy's datSpan is unpadded for the last HDU only.
            assert info.data_size == -(-want["datSpan"] // BLOCK) * BLOCK
    last = layout.hdus[-1]
    assert last.data_offset + last.data_size == layout.size
    ccd = layout.hdus[1]
    assert ccd.naxis == (64, 96) and ccd.shape == SHAPE and ccd.bitpix == 16
    assert ccd.compressed is (kind == "mef_fz") and ccd.is_image
    assert ccd.extname == "CCD00"
    assert layout.hdus[0].naxis == () and layout.hdus[0].data_size == 0


def expected_hdu(layout, n: int) -> int:
    """The HDU a file cut at byte n breaks: the one that starts at or before n and ends after."""
    for info in layout.hdus:
        if info.header_offset <= n < info.data_offset + info.data_size:
            return info.index
    raise AssertionError(n)


@pytest.mark.parametrize("kind", ["mef", "mef_fz"])
def test_truncated_anywhere_is_incomplete_and_names_the_hdu(kind, request, tmp_path):
    src = request.getfixturevalue(kind)
    layout = check_integrity(src)
    size = layout.size
    cuts = set(range(1, size, 80))  # inside headers, inside data, every card boundary
    for info in layout.hdus:
        for edge in (info.header_offset, info.data_offset, info.data_offset + info.data_size):
            cuts.update({edge - 1, edge, edge + 1})  # exactly at and around block boundaries
    cuts.update({size - 1, size - 100, size - BLOCK + 1})  # inside the last block's padding
    cuts = sorted(c for c in cuts if 0 < c < size)
    dst = cut_copy(src, tmp_path / "cut.fits", size)
    for n in reversed(cuts):  # truncate one copy ever shorter
        os.truncate(dst, n)
        with pytest.raises(IncompleteFileError) as info:
            check_integrity(dst)
        assert info.value.reason == "truncated", (n, str(info.value))
        assert info.value.hdu == expected_hdu(layout, n), (n, str(info.value))
        assert str(dst) in str(info.value) and f"HDU {info.value.hdu}:" in str(info.value)


def test_zero_byte_file_is_incomplete(tmp_path):
    path = tmp_path / "empty.fits"
    path.write_bytes(b"")
    with pytest.raises(IncompleteFileError, match=r"empty\.fits: HDU 0: file is empty") as info:
        check_integrity(path)
    assert info.value.reason == "empty"


def test_prefix_of_first_card_is_incomplete(tmp_path):
    path = tmp_path / "p.fits"
    path.write_bytes(b"SIMP")
    with pytest.raises(IncompleteFileError):
        check_integrity(path)


@pytest.mark.parametrize(
    "payload",
    [
        b"hello, world\n" * 500,
        b"\x89PNG\r\n\x1a\n" + bytes(4000),
        b"SIMPLE  =                    F" + b" " * 50 + b"END".ljust(80) * 35,
        b"\x00\x01garbage",
    ],
    ids=["text", "png", "simple-false", "binary"],
)
def test_not_fits_is_corrupt(tmp_path, payload):
    path = tmp_path / "x.fits"
    path.write_bytes(payload)
    with pytest.raises(CorruptFileError, match=r"x\.fits: HDU 0: ") as info:
        check_integrity(path)
    assert info.value.reason == "not_fits"


@pytest.mark.parametrize(
    "payload",
    [
        b"password=hunter2 token=s3cr3t\n" * 200,
        b"\x1b]0;owned\x07" + b"x" * 3000,
        b"\x00\x01garbage",
    ],
    ids=["secret", "terminal-escape", "binary"],
)
def test_not_fits_reason_never_echoes_the_files_content(tmp_path, payload):
    """The reason of a non-FITS file names the problem, never bytes of its content: a hard link
    to any file the daemon can read would otherwise copy 30 bytes of it into the reason, the
    log and the page (issue 21, item 10)."""
    secret = tmp_path / "elsewhere.txt"
    secret.write_bytes(payload)
    path = tmp_path / "2890001o.fits"
    os.link(secret, path)  # a hard link: the watcher's outside_drop check cannot see it
    with pytest.raises(CorruptFileError) as info:
        check_integrity(path)
    assert info.value.reason == "not_fits"
    message = str(info.value)
    assert message.startswith(f"{path}: HDU 0: ")
    detail = message[len(f"{path}: HDU 0: ") :]
    for start in range(min(len(payload), 64) - 3):  # no 4 bytes of its start, raw or repr'd
        chunk = payload[start : start + 4]
        assert chunk.decode("latin-1") not in detail and repr(chunk)[2:-1] not in detail, detail


@pytest.mark.parametrize("where", ["extension", "trailing"])
def test_bad_extension_or_trailing_data_reason_never_echoes_content(tmp_path, mef, where):
    """Where an extension header should start, or after the last HDU, the reason says what was
    expected and at which byte, never the bytes found there (issue 21, item 10): before, it
    quoted 16 of them."""
    payload = b"password=hunter2 token=s3cr3t\n" * 96  # one block's worth
    raw = mef.read_bytes()
    layout = check_integrity(mef)
    if where == "extension":
        start = layout.hdus[2].header_offset
        data = raw[:start] + payload[:BLOCK] + raw[start + BLOCK :]
        expected = ("bad_header", 2)
    else:
        start = len(raw)
        data = raw + payload
        expected = ("trailing_data", 4)
    path = tmp_path / "2890001o.fits"
    path.write_bytes(data)
    with pytest.raises(CorruptFileError) as info:
        check_integrity(path)
    assert (info.value.reason, info.value.hdu) == expected
    detail = info.value.message
    assert f"byte {start}" in detail
    for i in range(60):  # no 4 bytes of what is there, raw or repr'd
        chunk = payload[i : i + 4]
        assert chunk.decode("latin-1") not in detail and repr(chunk)[2:-1] not in detail, detail


def test_nextend_too_small_is_corrupt(tmp_path):
    path = make_mef(tmp_path / "a.fits", nextend=2)
    with pytest.raises(CorruptFileError, match="NEXTEND = 2") as info:
        check_integrity(path)
    assert (info.value.reason, info.value.hdu) == ("bad_nextend", 3)


def test_nextend_too_large_is_incomplete(tmp_path):
    # Looks like a copy cut exactly after extension 3: the watcher waits, then times out.
    path = make_mef(tmp_path / "a.fits", nextend=5)
    with pytest.raises(IncompleteFileError, match="after 3 of NEXTEND = 5") as info:
        check_integrity(path)
    assert (info.value.reason, info.value.hdu) == ("truncated", 4)


def test_nextend_not_an_integer_is_corrupt(tmp_path):
    path = make_mef(tmp_path / "a.fits", nextend="three")
    with pytest.raises(CorruptFileError) as info:
        check_integrity(path)
    assert (info.value.reason, info.value.hdu) == ("bad_nextend", 0)


def test_without_nextend_a_cut_at_an_hdu_boundary_passes(tmp_path):
    # Documented limitation: only NEXTEND tells a boundary cut from a shorter file.
    src = make_mef(tmp_path / "a.fits", nextend=None)
    layout = check_integrity(src)
    assert layout.nextend is None
    cut = cut_copy(src, tmp_path / "b.fits", layout.hdus[2].header_offset)
    assert check_integrity(cut).n_extensions == 1


@pytest.mark.parametrize(
    ("tail", "nextend"),
    [
        (b"junk", "auto"),
        (bytes(BLOCK), "auto"),
        (b"\x00" * 10, "auto"),
        (b"copied by rsync\n" * 180, "auto"),
        (b"junk", None),
        (bytes(BLOCK), None),
    ],
    ids=["junk", "zero-block", "few-nuls", "text-block", "junk-no-nextend", "zeros-no-nextend"],
)
def test_trailing_data_is_corrupt(tmp_path, mef, tail, nextend):
    src = mef if nextend == "auto" else make_mef(tmp_path / "n.fits", nextend=None)
    path = tmp_path / "t.fits"
    path.write_bytes(src.read_bytes() + tail)
    with pytest.raises(CorruptFileError, match="follow the last HDU") as info:
        check_integrity(path)
    assert (info.value.reason, info.value.hdu) == ("trailing_data", 4)


def test_extra_extension_beyond_nextend_is_corrupt(tmp_path, mef):
    path = tmp_path / "t.fits"
    path.write_bytes(mef.read_bytes() + b"XTENSION= 'IMAGE   '")
    with pytest.raises(CorruptFileError) as info:
        check_integrity(path)
    assert (info.value.reason, info.value.hdu) == ("bad_nextend", 4)


def test_partial_extension_header_without_nextend_is_incomplete(tmp_path):
    src = make_mef(tmp_path / "n.fits", nextend=None)
    path = tmp_path / "t.fits"
    path.write_bytes(src.read_bytes() + b"XTENSION= 'IMAGE   '")
    with pytest.raises(IncompleteFileError) as info:
        check_integrity(path)
    assert (info.value.reason, info.value.hdu) == ("truncated", 4)


def test_zero_filled_preallocated_copy_is_incomplete(tmp_path, mef):
    layout = check_integrity(mef)
    raw = bytearray(mef.read_bytes())
    for start, hdu in [(layout.hdus[2].header_offset, 2), (layout.hdus[2].header_offset + 400, 2)]:
        path = tmp_path / f"z{start}.fits"
        path.write_bytes(bytes(raw[:start]) + bytes(len(raw) - start))
        with pytest.raises(IncompleteFileError) as info:
            check_integrity(path)
        assert (info.value.reason, info.value.hdu) == ("zero_filled", hdu)
    path = tmp_path / "allzero.fits"
    path.write_bytes(bytes(len(raw)))
    with pytest.raises(IncompleteFileError) as info:
        check_integrity(path)
    assert (info.value.reason, info.value.hdu) == ("zero_filled", 0)


def _fill_into_preallocated(src, dst, upto: int) -> Path:
    """A copy into preallocated space stopped at byte ``upto``: the full size, zeros after."""
    raw = Path(src).read_bytes()
    dst.write_bytes(raw[:upto])
    os.truncate(dst, len(raw))  # as truncate -s / rsync --preallocate leave it
    return dst


@pytest.mark.parametrize("kind", ["mef", "mef_fz"])
def test_a_copy_still_filling_its_last_data_unit_passes_the_walk_not_check_data(
    tmp_path, kind, request
):
    """The walk alone passed a preallocated copy whose last CCD was still zeros (issue 21,
    item 4): check_data reads the end of every data unit and says the copy is not done."""
    src = request.getfixturevalue(kind)
    layout = check_integrity(src)
    last = layout.hdus[-1]
    end = last.data_offset + last.data_bytes
    # the last one: stopped with less than a probe's worth to go (graded early before)
    for upto in (last.data_offset + 1, last.data_offset + last.data_bytes // 2, end - 16):
        path = _fill_into_preallocated(src, tmp_path / f"{upto}-{src.name}", upto)
        assert check_integrity(path).size == layout.size  # structurally complete
        with pytest.raises(IncompleteFileError, match="NUL bytes") as info:
            fits_walk.check_data(path)
        assert (info.value.reason, info.value.hdu) == ("zero_tail", last.index)
    assert len(fits_walk.check_data(src)) == 32  # the complete file passes


def test_check_data_fingerprint_follows_the_content_not_the_mtime(tmp_path, mef):
    copy = tmp_path / "copy.fits"
    shutil.copyfile(mef, copy)
    os.utime(copy, ns=(1, 1))
    assert fits_walk.check_data(copy) == fits_walk.check_data(mef)
    layout = check_integrity(mef)
    raw = bytearray(mef.read_bytes())
    raw[layout.hdus[2].data_offset + 7] ^= 0xFF  # one pixel of CCD 1 changed
    changed = tmp_path / "changed.fits"
    changed.write_bytes(bytes(raw))
    assert fits_walk.check_data(changed) != fits_walk.check_data(mef)


def test_datasum_tells_real_zeros_from_a_copy_in_progress(tmp_path):
    """Data that really end in zeros, with a DATASUM that proves it, pass; the same file
    still being filled (its DATASUM says what the data will be) does not."""
    data = ccd_pixels(0).astype(np.int32)
    data[48:, :] = 0  # a CCD whose second half reads 0 (BITPIX 32, no BZERO: stored zeros)
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(data, name="ccd00")]
    hdus[0].header["NEXTEND"] = 1
    hdus[0].header["EXPTIME"] = 10.0
    path = tmp_path / "zeros.fits"
    fits.HDUList(hdus).writeto(path, checksum=True)
    layout = check_integrity(path)
    ccd = layout.hdus[1]
    with open(path, "rb") as fh:
        assert fits_walk.data_checksum(fh, ccd.data_offset, ccd.data_size) == int(
            fits.getheader(path, 1)["DATASUM"]
        )
    fits_walk.check_data(path)  # the zeros are the data
    partial = _fill_into_preallocated(path, tmp_path / "partial.fits", ccd.data_offset + 1000)
    with pytest.raises(IncompleteFileError, match="is not DATASUM") as info:
        fits_walk.check_data(partial)
    assert (info.value.reason, info.value.hdu) == ("zero_filled", 1)


def test_binary_garbage_in_a_header_is_corrupt(tmp_path, mef):
    layout = check_integrity(mef)
    raw = bytearray(mef.read_bytes())
    raw[layout.hdus[1].header_offset + 200] = 0xFF
    path = tmp_path / "g.fits"
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="non-printable byte 0xff") as info:
        check_integrity(path)
    assert (info.value.reason, info.value.hdu) == ("bad_header", 1)


def test_missing_structural_keyword_is_corrupt(tmp_path, mef):
    layout = check_integrity(mef)
    raw = bytearray(mef.read_bytes())
    start = layout.hdus[2].header_offset
    card = raw.find(b"BITPIX  =", start)
    raw[card : card + 8] = b"BITPOX  "
    path = tmp_path / "b.fits"
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="missing structural keyword BITPIX") as info:
        check_integrity(path)
    assert (info.value.reason, info.value.hdu) == ("bad_header", 2)


def card(key: str, value: str) -> bytes:
    return f"{key:<8}= {value}".ljust(80).encode("ascii")


def test_free_format_and_out_of_order_structural_cards(tmp_path):
    # Values outside columns 11-30 and PCOUNT before NAXIS2: the walk searches instead.
    primary = card("SIMPLE", "T") + card("BITPIX", "8") + card("NAXIS", "0")
    primary += card("NEXTEND", "1") + card("EXPTIME", "30.0") + b"END".ljust(80)
    ext = card("XTENSION", "'IMAGE   '") + card("BITPIX", "    16 / free format")
    ext += card("NAXIS", "2") + card("NAXIS1", "64") + card("PCOUNT", "0")
    ext += card("NAXIS2", "96") + card("GCOUNT", "1") + card("EXTNAME", "'ccd00'")
    ext += card("BZERO", "32768") + b"END".ljust(80)
    data = ccd_pixels(0)
    raw = (data.astype(np.int32) - 32768).astype(">i2").tobytes()
    path = tmp_path / "free.fits"
    path.write_bytes(
        primary.ljust(BLOCK) + ext.ljust(BLOCK) + raw.ljust(-(-len(raw) // BLOCK) * BLOCK, b"\0")
    )
    layout = check_integrity(path)
    assert layout.hdus[1].naxis == (64, 96) and layout.hdus[1].bitpix == 16
    assert layout.hdus[1].extname == "ccd00"
    np.testing.assert_array_equal(read_ccd(path, np.int64(0)).data, data.astype(np.float32))
    assert read_meta(path).ccd_names == ("ccd00",)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        check_integrity(tmp_path / "gone.fits")


def write_sparse_megacam(path, n_ccd: int = 36) -> int:
    """A full-size MegaCam geometry (2048 x 4612 uint16 CCDs, ~680 MB) whose data are holes."""
    primary = fits.Header()
    primary["SIMPLE"] = True
    primary["BITPIX"] = 8
    primary["NAXIS"] = 0
    primary["EXTEND"] = True
    primary["NEXTEND"] = n_ccd
    primary["EXPTIME"] = 60.0
    data_size = -(-2048 * 4612 * 2 // BLOCK) * BLOCK
    with open(path, "wb") as fh:
        fh.write(primary.tostring().encode("ascii"))
        for i in range(n_ccd):
            hdr = fits.ImageHDU(name=f"ccd{i:02d}").header
            hdr["BITPIX"] = 16
            hdr["NAXIS"] = 2
            hdr["NAXIS1"] = 2048
            hdr["NAXIS2"] = 4612
            hdr["BZERO"] = 32768
            hdr["BSCALE"] = 1
            fh.write(hdr.tostring().encode("ascii"))
            fh.seek(data_size, os.SEEK_CUR)
        fh.truncate()
        return fh.tell()


class ReadSpy:
    """Wraps ``open`` in skygrade.transforms.confined_reads and counts the bytes read through it."""

    def __init__(self):
        self.bytes_read = 0

    def __call__(self, *args, **kwargs):
        fh = open(*args, **kwargs)  # noqa: SIM115 -- the caller's with-block closes it
        spy = self
        real_read = fh.read

        def read(n=-1):
            out = real_read(n)
            spy.bytes_read += len(out)
            return out

        fh.read = read
        return fh


def test_integrity_walk_reads_headers_only_and_is_fast(tmp_path, monkeypatch):
    path = tmp_path / "sparse.fits"
    size = write_sparse_megacam(path)
    assert size > 680_000_000
    spy = ReadSpy()
    monkeypatch.setattr(confined_reads, "open", spy, raising=False)
    layout = check_integrity(path)
    assert layout.n_extensions == 36 and layout.size == size
    assert 37 * BLOCK <= spy.bytes_read <= 37 * 2 * BLOCK  # a header block or two per HDU
    monkeypatch.undo()
    best = min(_timed(check_integrity, path) for _ in range(5))
    assert best < 0.050, f"header walk took {best * 1e3:.1f} ms"


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------- metadata
def test_read_meta(mef):
    meta = read_meta(mef)
    assert meta.path == str(mef)
    assert meta.exposure_id == "2345678" and meta.expnum == 2345678
    assert meta.exptime == 120.0
    assert meta.date_obs == datetime(2026, 11, 25, 6, 12, 33, 400000, tzinfo=UTC)
    assert meta.night == "2026-11-24"
    assert (meta.filter, meta.object, meta.airmass) == ("r.MP9602", "D3", 1.21)
    assert meta.n_ccd == 3 and meta.ccd_names == ("CCD00", "CCD01", "CCD02")
    assert meta.ccd_shape == SHAPE and meta.compressed is False
    with pytest.raises(AttributeError):
        meta.exptime = 1.0  # frozen


def test_read_meta_fz(mef_fz):
    meta = read_meta(mef_fz)
    assert meta.exposure_id == "2345678" and meta.n_ccd == 3 and meta.compressed
    assert meta.ccd_shape == SHAPE


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        # CFHT raw names: EXPNUM + one type letter -> the EXPNUM, as the header would give.
        ("1234567p.fits", "1234567"),
        ("1234567o.fits.fz", "1234567"),
        ("1234567p.fz", "1234567"),
        ("night3.fits", "night3"),
        ("odd.name.FITS", "odd.name"),
    ],
)
def test_exposure_id_falls_back_to_stem(tmp_path, name, stem):
    path = make_mef(tmp_path / name, n_ccd=1, primary={"EXPNUM": None})
    meta = read_meta(path)
    assert (meta.exposure_id, meta.expnum) == (stem, None)


def test_bad_expnum_is_an_error(tmp_path):
    path = make_mef(tmp_path / "e.fits", n_ccd=1, primary={"EXPNUM": "abc"})
    with pytest.raises(ExposureError) as info:
        read_meta(path)
    assert info.value.reason == "bad_expnum"


@pytest.mark.parametrize(
    ("utc", "night"),
    [
        (datetime(2026, 11, 25, 6, 0), "2026-11-24"),  # 20:00 HST on the 24th
        (datetime(2026, 11, 25, 23, 0), "2026-11-25"),  # 13:00 HST on the 25th
        (datetime(2026, 11, 25, 22, 0), "2026-11-25"),  # exactly local noon: the new night
        (datetime(2026, 11, 25, 21, 59, 59, 999999), "2026-11-24"),  # just before noon
        (datetime(2026, 1, 1, 9, 0, tzinfo=UTC), "2025-12-31"),  # across the year
        (datetime(2026, 11, 25, 12, 0, tzinfo=timezone(timedelta(hours=-10))), "2026-11-25"),
    ],
)
def test_observing_night(utc, night):
    assert observing_night(utc) == night


def test_observing_night_rejects_non_datetime():
    with pytest.raises(TypeError, match="utc must be a datetime"):
        observing_night("2026-11-25")


@pytest.mark.parametrize(
    ("cards", "night", "utc"),
    [
        ({"DATE-OBS": "2026-11-25T23:00:00"}, "2026-11-25", datetime(2026, 11, 25, 23)),
        ({"DATE-OBS": "2026-11-25T22:00:00Z"}, "2026-11-25", datetime(2026, 11, 25, 22)),
        (
            {"DATE-OBS": "2026-11-25", "UTC-OBS": "06:12:33.4"},
            "2026-11-24",
            datetime(2026, 11, 25, 6, 12, 33, 400000),
        ),
        (
            {"DATE-OBS": "2026-11-25", "TIME-OBS": "21:00:00"},
            "2026-11-24",
            datetime(2026, 11, 25, 21),
        ),
        ({"DATE-OBS": None}, None, None),
    ],
)
def test_read_meta_night_from_headers(tmp_path, cards, night, utc):
    path = make_mef(tmp_path / "d.fits", n_ccd=1, primary=cards)
    meta = read_meta(path)
    assert meta.night == night
    assert meta.date_obs == (utc.replace(tzinfo=UTC) if utc else None)


def test_bad_date_obs_is_an_error(tmp_path):
    path = make_mef(tmp_path / "d.fits", n_ccd=1, primary={"DATE-OBS": "25/11/26"})
    with pytest.raises(ExposureError, match="DATE-OBS") as info:
        read_meta(path)
    assert info.value.reason == "bad_date_obs"


def test_missing_exptime_names_file_and_reason(tmp_path):
    path = make_mef(tmp_path / "noexp.fits", n_ccd=1, primary={"EXPTIME": None})
    with pytest.raises(ExposureError, match=r"noexp\.fits: HDU 0: .*EXPTIME") as info:
        read_meta(path)
    assert info.value.reason == "missing_exptime" and info.value.path == str(path)


@pytest.mark.parametrize("value", [0.0, -5.0, "fast"])
def test_bad_exptime(tmp_path, value):
    path = make_mef(tmp_path / "e.fits", n_ccd=1, primary={"EXPTIME": value})
    with pytest.raises(ExposureError) as info:
        read_meta(path)
    assert info.value.reason == "bad_exptime"


def test_forty_ccds_accepted(tmp_path):
    path = make_mef(tmp_path / "g.fits", n_ccd=40, shape=(40, 32))
    meta = read_meta(path)
    assert meta.n_ccd == 40 and len(meta.ccd_names) == 40 and meta.ccd_names[-1] == "CCD39"
    assert [r.ccd for r in ccd_refs(meta)] == list(range(40))


def test_ccd_names_fall_back_to_ccdname_then_index(tmp_path):
    exts = [
        fits.ImageHDU(ccd_pixels(0), name="ccd07"),
        fits.ImageHDU(ccd_pixels(1), header=fits.Header([("CCDNAME", "8434-13-5")])),
        fits.ImageHDU(ccd_pixels(2)),
    ]
    meta = read_meta(make_mef(tmp_path / "n.fits", extensions=exts))
    assert meta.ccd_names == ("CCD07", "8434-13-5", "ccd02")  # astropy upper-cases EXTNAME


@pytest.mark.parametrize(
    ("ext", "reason", "hdu"),
    [
        (fits.ImageHDU(np.zeros((2, 96, 64), np.uint16)), "bad_shape", 2),
        (fits.ImageHDU(np.zeros(64, np.uint16)), "bad_shape", 2),
        (fits.ImageHDU(np.zeros((90, 64), np.uint16)), "bad_shape", 2),
        (fits.BinTableHDU.from_columns([fits.Column("x", "E", array=[1.0])]), "bad_extension", 2),
    ],
    ids=["3d", "1d", "other-shape", "table"],
)
def test_read_meta_rejects_non_ccd_extensions(tmp_path, ext, reason, hdu):
    exts = [fits.ImageHDU(ccd_pixels(0)), ext, fits.ImageHDU(ccd_pixels(2))]
    path = make_mef(tmp_path / "s.fits", extensions=exts)
    check_integrity(path)  # structurally fine
    with pytest.raises(CorruptFileError, match=rf"s\.fits: HDU {hdu}: ") as info:
        read_meta(path)
    assert (info.value.reason, info.value.hdu) == (reason, hdu)


def test_read_meta_rejects_file_without_ccds(tmp_path):
    path = tmp_path / "single.fits"
    fits.PrimaryHDU(ccd_pixels(0)).writeto(path)
    with pytest.raises(CorruptFileError) as info:
        read_meta(path)
    assert info.value.reason == "bad_shape"
    path = make_mef(tmp_path / "none.fits", extensions=[])
    with pytest.raises(CorruptFileError) as info:
        read_meta(path)
    assert info.value.reason == "no_ccds"


def test_ccd_refs(mef):
    refs = ccd_refs(read_meta(mef))
    assert refs == [CcdRef("2345678", str(mef), i, 3) for i in range(3)]
    assert pickle.loads(pickle.dumps(refs)) == refs


# ---------------------------------------------------------------------------------- pixels
@pytest.mark.parametrize("kind", ["mef", "mef_fz"])
def test_read_ccd_is_exact_native_float32(kind, request):
    path = request.getfixturevalue(kind)
    with fits.open(path) as hdul:
        want = [np.array(hdul[i + 1].data, dtype=np.float32) for i in range(3)]
    for i in range(3):
        ccd = read_ccd(path, i)
        assert ccd.index == i and ccd.name == f"CCD{i:02d}"
        assert ccd.data.dtype == np.float32 and ccd.data.dtype.isnative
        assert ccd.data.flags.c_contiguous and ccd.shape == SHAPE
        assert ccd.data[0, :3].tolist() == [0.0, 32768.0, 65535.0]
        np.testing.assert_array_equal(ccd.data, want[i])
        np.testing.assert_array_equal(ccd.data, ccd_pixels(i).astype(np.float32))
        assert (ccd.gain, ccd.rdnoise, ccd.saturate) == (pytest.approx(1.5 + i / 10), 4.0, 65000.0)


def test_saturate_falls_back_to_uint16_max(tmp_path):
    path = make_mef(tmp_path / "s.fits", n_ccd=1, ccd_cards={"SATURATE": None, "GAIN": None})
    ccd = read_ccd(path, 0)
    assert ccd.saturate == 65535.0 and ccd.gain is None


def test_read_ccd_scaled_float_and_blank_match_astropy(tmp_path):
    ints = np.arange(96 * 64, dtype=np.int32).reshape(SHAPE) - 1000
    ints[5, 5] = -999999
    scaled = fits.ImageHDU(ints, name="scaled")
    scaled.header["BSCALE"] = 0.25
    scaled.header["BZERO"] = 100.5
    scaled.header["BLANK"] = -999999
    floats = fits.ImageHDU(np.linspace(-1, 1, 96 * 64, dtype=">f4").reshape(SHAPE))
    path = make_mef(tmp_path / "f.fits", extensions=[scaled, floats])
    with fits.open(path) as hdul:
        want = [np.asarray(hdul[i].data, dtype=np.float32) for i in (1, 2)]
    got = [read_ccd(path, 0).data, read_ccd(path, 1).data]
    assert np.isnan(got[0][5, 5]) and np.isnan(want[0][5, 5])
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert got[1].dtype.isnative
    assert read_ccd(path, 1).saturate is None


@pytest.mark.parametrize("index", [-1, 3, 99])
def test_read_ccd_index_out_of_range(mef, index):
    with pytest.raises(ValueError, match=rf"index must be in \[0, 3\).*got {index}"):
        read_ccd(mef, index)


def test_read_ccd_on_truncated_file_is_incomplete(tmp_path, mef):
    cut = cut_copy(mef, tmp_path / "c.fits", os.path.getsize(mef) - 5000)
    with pytest.raises(IncompleteFileError):
        read_ccd(cut, 0)


@pytest.mark.parametrize("kind", ["mef", "mef_fz"])
def test_iter_ccds(kind, request):
    path = request.getfixturevalue(kind)
    ccds = list(iter_ccds(path))
    assert [c.index for c in ccds] == [0, 1, 2]
    for c in ccds:
        np.testing.assert_array_equal(c.data, read_ccd(path, c.index).data)


@needs_proc
@pytest.mark.parametrize("kind", ["mef", "mef_fz"])
def test_no_file_left_open(kind, request, tmp_path):
    path = request.getfixturevalue(kind)
    before = open_fds()
    read_meta(path)
    read_ccd(path, 1)
    it = iter_ccds(path)
    next(it)
    assert open_fds() == before  # not held between CCDs
    del it
    bad = cut_copy(path, tmp_path / "bad.fits", 3000)
    with pytest.raises(IncompleteFileError):
        read_ccd(bad, 0)
    assert open_fds() == before


# ------------------------------------------------------------------------------ quarantine
def ccd(data, saturate=65535.0) -> CcdPixels:
    return CcdPixels(0, "ccd00", np.asarray(data, dtype=np.float32), 1.5, 4.0, saturate)


def noisy(seed=0):
    return np.random.default_rng(seed).normal(1000, 30, size=(128, 96))


def test_ccd_problem_normal_ccd_is_fine(mef):
    assert ccd_problem(ccd(noisy())) is None
    assert ccd_problem(read_ccd(mef, 0)) is None


def test_ccd_problem_nan():
    data = noisy()
    data[:] = np.nan
    assert ccd_problem(ccd(data)).startswith("all_nan:")
    data = noisy()
    data[:100] = np.nan
    assert ccd_problem(ccd(data)).startswith(f"nan_fraction>{ccd_checks.MAX_NAN_FRACTION:g}:")
    data = noisy()
    data[:10] = np.nan  # a few NaN rows are fine
    assert ccd_problem(ccd(data)) is None


def test_ccd_problem_dead():
    assert ccd_problem(ccd(np.zeros((128, 96)))).startswith("all_zero:")
    problem = ccd_problem(ccd(np.full((128, 96), 1000.0)))
    assert problem == "constant: every pixel is 1000.0 (dead CCD?)"
    # every pixel at the saturation level: a saturated sky, not a dead CCD
    problem = ccd_problem(ccd(np.full((128, 96), 62000.0), saturate=61000.0))
    assert problem.startswith("saturated: every pixel is 62000.0, at or above SATURATE = 61000")
    assert ccd_problem(ccd(np.full((128, 96), 62000.0), saturate=None)).startswith("constant:")


def test_ccd_problem_saturated():
    data = noisy()
    data[:100] = 65535
    assert ccd_problem(ccd(data)).startswith("saturated:")
    data[:100] = 60000  # below SATURATE
    assert ccd_problem(ccd(data)) is None
    data[:100] = 65535
    assert ccd_problem(ccd(data, saturate=None)) is None


@pytest.mark.parametrize("shape", [(4096,), (8, 4096), (2, 64, 64)])
def test_ccd_problem_bad_shape(shape):
    assert ccd_problem(ccd(np.ones(shape))).startswith("bad_shape:")


# -------------------------------------------------------------------------- confined reads
def _drop_with_a_swap(tmp_path):
    """A drop with night/2345678o.fits, and outside it another exposure of the same name."""
    drop = tmp_path / "drop"
    (drop / "night").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    inside = make_mef(drop / "night" / "2345678o.fits", primary={"EXPNUM": 1111111})
    outside = make_mef(tmp_path / "secret" / "2345678o.fits", primary={"EXPNUM": 9999999}, n_ccd=2)
    return drop, inside, outside


def _swap(drop, outside):
    """The night folder swapped for a symlink to a folder outside the drop."""
    (drop / "night").rename(drop / "night.old")
    (drop / "night").symlink_to(outside.parent)


def test_a_pinned_file_is_read_through_its_descriptor_whatever_the_name_becomes(tmp_path):
    """Issue 21, item 9: the grader reopened the path by name, so a night folder swapped for a
    symlink between the watcher's check and the grade made it read a file outside the drop.
    Pinned, the metadata and the pixels (here and in another process, as the CCD workers
    read them) come from the file opened, not from what the name points to afterwards."""
    import subprocess
    import sys

    drop, inside, outside = _drop_with_a_swap(tmp_path)
    path = str(inside)
    expected = read_ccd(inside, 1).data
    with pinned(path, drop):
        _swap(drop, outside)
        meta = read_meta(path)
        assert (meta.expnum, meta.n_ccd) == (1111111, 3)
        assert meta.file_id is not None
        assert check_integrity(path).n_extensions == 3
        np.testing.assert_array_equal(
            read_ccd(path, 1, source=meta.source, file_id=meta.file_id).data, expected
        )
        if meta.source is not None:  # Linux: a CCD worker opens the descriptor by /proc
            code = (
                "import sys, numpy as np; from skygrade.transforms.ccd_pixels import read_ccd; "
                "d = read_ccd(sys.argv[1], 1, source=sys.argv[2], "
                "file_id=(int(sys.argv[3]), int(sys.argv[4]))).data; "
                "print(float(d.sum()))"
            )
            out = subprocess.run(
                [sys.executable, "-c", code, path, meta.source, *map(str, meta.file_id)],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=Path(__file__).parents[2],
            )
            assert out.returncode == 0, out.stderr
            assert float(out.stdout) == float(expected.sum())
    # Not pinned, the same name now reads the file outside: what the pin protects against.
    assert read_meta(path).expnum == 9999999


@pytest.mark.parametrize("how", ["folder-swapped", "file-link"])
def test_a_path_through_a_symlink_is_refused_as_outside_drop_unread(tmp_path, how, monkeypatch):
    drop, inside, outside = _drop_with_a_swap(tmp_path)
    if how == "folder-swapped":
        _swap(drop, outside)
    else:
        inside.unlink()
        inside.symlink_to(outside)
    opened = []
    real_open = open

    def spy(file, *args, **kwargs):
        opened.append(os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(confined_reads, "open", spy, raising=False)
    with pinned(str(inside), drop):
        for read in (read_meta, check_integrity):
            with pytest.raises(ExposureError) as info:
                read(str(inside))
            assert info.value.reason == "outside_drop"
            assert "not opened" in info.value.message
    assert opened == []  # nothing was read, by name or otherwise


def test_a_fifo_in_place_of_a_file_is_refused_without_blocking(tmp_path):
    """The watcher stats a file, then walks it by name: a FIFO swapped in meanwhile blocked
    the open (and the watcher with it) until some writer came along. Opened non-blocking and
    checked to be a regular file, it is refused at once."""
    import threading

    path = tmp_path / "2345678o.fits"
    os.mkfifo(path)
    outcome = []

    def walk():
        try:
            check_integrity(path)
        except ExposureError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=walk, daemon=True)
    thread.start()
    thread.join(5.0)
    if thread.is_alive():  # blocked: let it go before failing
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join(5.0)
        pytest.fail("opening a FIFO blocked the header walk")
    ((exc,),) = [outcome]
    assert (exc.reason, exc.message) == ("unreadable", "not a regular file")


@pytest.mark.parametrize("nested", [False, True])
def test_pins_of_one_path_nest(tmp_path, nested):
    drop, inside, _ = _drop_with_a_swap(tmp_path)
    with pinned(str(inside), drop):
        if nested:
            with pinned(str(inside), drop):
                pass
        assert confined_reads.pin_of(str(inside)) is not None  # the outer pin still holds
        assert read_meta(str(inside)).file_id is not None
    assert confined_reads.pin_of(str(inside)) is None


def test_a_ccd_reader_refuses_another_file_than_the_one_pinned(tmp_path, mef):
    other = make_mef(tmp_path / "other.fits")
    st = os.stat(other)
    with pytest.raises(ExposureError) as info:
        read_ccd(mef, 0, file_id=(st.st_dev, st.st_ino))
    assert info.value.reason == "file_changed"


@pytest.mark.parametrize(
    "module", [ex, px, exposure_errors, confined_reads, fits_header, fits_walk, ccd_checks]
)
def test_module_imports_no_beam(module):
    tree = ast.parse(Path(module.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(name.startswith("apache_beam") for name in imported)
