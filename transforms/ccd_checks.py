"""Whether a CCD's pixels look like a working detector: the checks that quarantine a CCD.

:func:`ccd_problem` runs on the pixels :func:`skygrade.transforms.ccd_pixels.read_ccd` returns,
before any source is measured; a CCD it names a problem for is quarantined, never graded.
"""

from __future__ import annotations

import math

import numpy as np

from skygrade.transforms.ccd_pixels import CcdPixels

__all__ = ["MAX_NAN_FRACTION", "MAX_SATURATED_FRACTION", "MIN_CCD_SIDE", "ccd_problem"]

#: A CCD with more than this fraction of non-finite (NaN / inf) pixels is quarantined.
MAX_NAN_FRACTION = 0.5
#: A CCD with more than this fraction of its finite pixels at or above SATURATE is quarantined.
MAX_SATURATED_FRACTION = 0.5
#: A CCD whose shorter side is below this many pixels is quarantined as ``bad_shape``.
MIN_CCD_SIDE = 32


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
      :func:`skygrade.transforms.grade.grade_exposure` grades an exposure with half or more of its
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
