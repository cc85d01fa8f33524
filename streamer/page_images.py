"""Pictures the observer page and its previews share: the focal-plane layout of the CCDs, a
dependency-free 8-bit greyscale PNG encoder (:mod:`skygrade.streamer.observer_views` and
:mod:`skygrade.streamer.preview` both draw with them) and the thumbnails of the stored
representative images (the page and its static report)."""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np

from skygrade.transforms.grades_dataset import IMAGE_RANGE

MEGACAM_COLUMNS = 9
"""MegaCam's 36 science CCDs are 4 rows of 9 (``ccd00`` top left, as the simulator and
``skygrade inspect`` lay them out); 40-CCD products put the guide CCDs 36-39 on a fifth row."""
CCD_ASPECT = 2048 / 4612
"""Width / height of a MegaCam CCD: smaller geometries are laid out like the simulator does."""
THUMBNAIL_SOFTENING = 0.2
"""Display stretch of the thumbnails (as ``skygrade inspect``): asinh, softened at 0.2 of the
source peak, over the stored range."""


def focal_plane_layout(n_ccd: int) -> tuple[int, int, list[tuple[int, int]]]:
    """Rows, columns and the (row, column) of each CCD index on the page.

    36 CCDs (or 40) are MegaCam's 4 rows of 9, ``ccd00`` top left; smaller test geometries
    are laid out as :mod:`skygrade.streamer.sky_plan` arranges them (near-square rows of
    MegaCam-shaped CCDs).

    Examples
    --------
    >>> focal_plane_layout(36)[:2]
    (4, 9)
    >>> focal_plane_layout(4)
    (1, 4, [(0, 0), (0, 1), (0, 2), (0, 3)])
    """
    n = max(int(n_ccd), 1)
    if n >= 36:
        cols = MEGACAM_COLUMNS
    else:
        rows = min(max(1, round(math.sqrt(n * CCD_ASPECT))), n)
        cols = math.ceil(n / rows)
    cells = [divmod(k, cols) for k in range(n)]
    return cells[-1][0] + 1, cols, cells


def png_gray8(image: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG of a 2-D uint8 array (no dependency beyond zlib).

    Examples
    --------
    >>> png_gray8(np.zeros((2, 3), np.uint8))[:8]
    b'\\x89PNG\\r\\n\\x1a\\n'
    """
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 2 or 0 in image.shape:
        raise ValueError(f"image must be a non-empty 2-D array, got shape {image.shape}")
    h, w = image.shape
    raw = np.hstack([np.zeros((h, 1), np.uint8), image]).tobytes()  # filter type 0 per row

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def _stretch_lut() -> np.ndarray:

    lo, hi = IMAGE_RANGE
    values = lo + np.arange(256) * (hi - lo) / 255.0
    soft = THUMBNAIL_SOFTENING
    s = np.arcsinh((values - lo) / soft) / np.arcsinh((hi - lo) / soft)
    return np.clip(np.rint(255 * s), 0, 255).astype(np.uint8)


_LUT = _stretch_lut()


def thumbnail_png(stored: np.ndarray) -> bytes:
    """PNG of a stored (uint8, :func:`skygrade.transforms.grades_dataset.quantize_image`)
    representative image, with the display stretch applied."""
    return png_gray8(_LUT[np.asarray(stored, dtype=np.uint8)])
