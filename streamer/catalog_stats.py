"""Per-class statistics of labelled SExtractor catalogs, to set real archives beside emulated ones.

The calibration table of docs/model.md: for each labelled catalog archive (real catalogs, or
``python -m skygrade.streamer.archive_catalogs`` on simulated exposures), per class, medians over
the exposures of each exposure's median over its CCDs of: detections per CCD (scaled to a full
2048x4612 MegaCam CCD when the catalog keeps NAXIS1/2), the FLAGS == 0 fraction, the median
ELONGATION of the FLAGS == 0 sources and of all unsaturated ones, the median ISO0 of both, and
the median BACKGROUND::

    python -m skygrade.streamer.catalog_stats ../shared/real-catalogs build/calib-cats-archive

``--interior`` keeps only the detections the network's statistics read, those at least the edge
margin from a CCD's edges (:func:`skygrade.models.som.interior_mask`; the CCD's size from
NAXIS1/2, else MegaCam's 2048x4612), and scales the counts by the interior's area.

Reads the catalogs with astropy alone (the raw columns, no skygrade feature mapping), so it
shows what the files hold.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from astropy.io import fits

from skygrade.models.classes import CLASSES
from skygrade.models.som import interior_area_mpx, interior_mask
from skygrade.models.summary import bright_mask, sky_spread_adu
from skygrade.transforms.exposure import exposure_id_from_path

FULL_CCD_PIXELS = 2048 * 4612
MEGACAM_CCD = (2048, 4612)
"""(width, height) of a CCD whose catalog keeps no image header."""
STATS = (
    "sources/CCD",
    "FLAGS==0",
    "elong clean",
    "elong bright",
    "elong all",
    "ISO0 clean",
    "ISO0 all",
    "BKG",
    "BKG spread",
)
"""Per CCD: detections (scaled to a full CCD), the FLAGS == 0 fraction, median ELONGATION of
the FLAGS == 0 sources, of their brightest quarter by ISO0
(:func:`skygrade.models.summary.bright_mask`, what the network's shape statistics read), and of all
unsaturated ones; median ISO0 of the clean and the unsaturated; median BACKGROUND; and
log10(1 + p90 - p10) of BACKGROUND in ADU, the sky's structure over the CCD, which a sky level
subtracted before extraction leaves as it was (docs/model.md item 22)."""


def _labels(root: Path) -> dict[str, str]:
    with open(root / "labels.csv", newline="") as fh:
        return {r["exposure_id"].strip(): r["label"].strip() for r in csv.DictReader(fh)}


def ccd_stats(table, pixels: int | None) -> np.ndarray | None:
    """The :data:`STATS` of one CCD's OBJECTS table (None for an empty table)."""
    if table is None or len(table) == 0:
        return None
    flags = np.asarray(table["FLAGS"]).astype(int)
    elong = np.asarray(table["ELONGATION"], dtype=float)
    iso = np.asarray(table["ISO0"], dtype=float)
    sky = np.asarray(table["BACKGROUND"], dtype=float)
    clean, unsat = flags == 0, (flags & 4) == 0
    scale = FULL_CCD_PIXELS / pixels if pixels else 1.0
    bright = np.zeros_like(clean)
    if clean.any():
        bright[np.flatnonzero(clean)[bright_mask(iso[clean])]] = True
    return np.array(
        [
            len(flags) * scale,
            clean.mean(),
            np.median(elong[clean]) if clean.any() else np.nan,
            np.median(elong[bright]) if bright.any() else np.nan,
            np.median(elong[unsat]) if unsat.any() else np.nan,
            np.median(iso[clean]) if clean.any() else np.nan,
            np.median(iso[unsat]) if unsat.any() else np.nan,
            np.median(sky),
            sky_spread_adu(sky),
        ]
    )


def exposure_stats(path: Path, interior: bool = False) -> np.ndarray:
    """Median over the CCDs of an exposure's catalog of :func:`ccd_stats` (of the interior
    detections alone with ``interior``)."""
    rows = []
    with fits.open(path, memmap=False) as hdul:
        shape = None
        for hdu in hdul[1:]:
            if hdu.name == "LDAC_IMHEAD":
                text = "".join(str(c).ljust(80)[:80] for c in np.ravel(hdu.data.field(0)[0]))
                head = fits.Header.fromstring(text)
                nx, ny = int(head.get("NAXIS1", 0)), int(head.get("NAXIS2", 0))
                shape = (nx, ny) if nx > 0 and ny > 0 else None
                continue
            if not isinstance(hdu, fits.BinTableHDU):
                continue
            table, pixels = hdu.data, shape[0] * shape[1] if shape else None
            if interior and table is not None and len(table):
                width, height = shape or MEGACAM_CCD
                table = table[interior_mask(table, width, height)]
                pixels = round(interior_area_mpx(width, height) * 1e6)
            row = ccd_stats(table, pixels)
            if row is not None:
                rows.append(row)
    return np.nanmedian(np.array(rows), axis=0) if rows else np.full(len(STATS), np.nan)


def archive_table(root: str | Path, interior: bool = False) -> dict[str, np.ndarray]:
    """{class: (n_exposures, len(STATS)) array} of one labelled catalog archive."""
    root = Path(root)
    labels = _labels(root)
    out: dict[str, list] = {}
    patterns = ("*.ldac", "*.ldac.gz", "*.cat", "*.cat.gz", "*.fits")
    for path in sorted({p for pat in patterns for p in root.rglob(pat)}):
        label = labels.get(exposure_id_from_path(path))
        if label is not None:
            out.setdefault(label, []).append(exposure_stats(path, interior))
    return {k: np.array(v) for k, v in out.items()}


def format_table(tables: dict[str, dict[str, np.ndarray]]) -> str:
    """A Markdown table: one row per archive and class, median (min-max over exposures)."""
    lines = [
        "| archive | class | n | " + " | ".join(STATS) + " |",
        "|---|---|---:|" + "---:|" * len(STATS),
    ]
    for name, table in tables.items():
        for cls in CLASSES:
            if cls not in table:
                continue
            rows = table[cls]
            cells = []
            for j in range(len(STATS)):
                col = rows[:, j][np.isfinite(rows[:, j])]
                if not len(col):
                    cells.append("-")
                    continue
                med, lo, hi = np.median(col), col.min(), col.max()
                cells.append(f"{med:.3g} ({lo:.3g}-{hi:.3g})" if len(col) > 1 else f"{med:.3g}")
            lines.append(f"| {name} | {cls} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m skygrade.streamer.catalog_stats",
        description="Print per-class statistics of labelled SExtractor catalog archives side by "
        "side (the calibration table of docs/model.md).",
    )
    parser.add_argument("archives", nargs="+", help="directories of catalogs + labels.csv")
    parser.add_argument(
        "--interior",
        action="store_true",
        help="only the detections the network reads: those at least the edge margin (128 px) "
        "from a CCD's edges; counts scaled by the interior's area",
    )
    args = parser.parse_args(argv)
    tables = {}
    for root in args.archives:
        try:
            tables[Path(root).name] = archive_table(root, args.interior)
        except (OSError, ValueError, KeyError) as exc:
            print(f"catalog_stats: error: {root}: {exc}", file=sys.stderr)
            return 2
    print(format_table(tables))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
