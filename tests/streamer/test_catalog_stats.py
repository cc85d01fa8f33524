import numpy as np
from astropy.io import fits

from skygrade.streamer.catalog_stats import STATS, ccd_stats


def _table(elong, iso, flags):
    cols = {
        "ELONGATION": np.asarray(elong, float),
        "ISO0": np.asarray(iso, float),
        "FLAGS": np.asarray(flags, np.int16),
        "BACKGROUND": np.full(len(elong), 80.0),
    }
    return fits.BinTableHDU.from_columns(
        [
            fits.Column(name=k, format="E" if v.dtype.kind == "f" else "I", array=v)
            for k, v in cols.items()
        ]
    ).data


def test_bright_elongation_reads_the_brightest_quarter_of_the_isolated_sources():
    # 120 isolated noise blobs (ISO0 6, elongation 1.8) and 40 round, large stars (ISO0 60):
    # the median over FLAGS == 0 is the blobs', the brightest quarter is the stars'.
    elong = [1.8] * 120 + [1.05] * 40 + [3.0] * 10
    iso = [6] * 120 + [60] * 40 + [200] * 10
    flags = [0] * 160 + [2] * 10  # the deblended pieces are not isolated
    stats = dict(zip(STATS, ccd_stats(_table(elong, iso, flags), None), strict=True))
    assert stats["elong clean"] == np.float32(1.8)
    assert stats["elong bright"] == np.float32(1.05)
    assert stats["FLAGS==0"] == 160 / 170
