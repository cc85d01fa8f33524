"""SExtractor catalogs of a labelled archive, made the way an observatory archive makes them.

The grader meets real archived MegaCam catalogs (REFERENCE.md): SExtractor run on processed
images with its stock ``default.sex`` (PIXEL_SCALE 1, SEEING_FWHM 1.2, so CLASS_STAR ~3e-4 for
almost every source), the sky sometimes kept and sometimes subtracted. This module turns each
exposure of a labelled pixel archive into such a catalog, so that a bundle can be scored on
catalogs no part of skygrade's extraction measured (``make model-holdout``)::

    python -m streamer.archive_catalogs build/holdout-seed7 build/catalogs-seed7 --sky subtracted
    skygrade --config catalogs.yaml evaluate build/catalogs-seed7 --out report   # backend: catalog

Each exposure becomes ``<out>/<night>/<expnum>o.fits``: a FITS_LDAC catalog, one
``LDAC_IMHEAD`` + ``LDAC_OBJECTS`` pair per CCD, the image header carrying EXPTIME, FILTER and
DATE-OBS as a processed MegaCam extension does; ``labels.csv`` lists the catalogued exposures.
Processing: the bias pedestal (``BIASLVL``, when the header has one) is removed; with
``--sky subtracted`` the CCD's median is removed too.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from astropy.io import fits

from streamer.progress import Progress
from transforms.exposure import read_ccd
from transforms.sextractor import CATALOG_PARAMETERS

SHARE = Path("/usr/share/source-extractor")
"""Where Debian's ``source-extractor`` package keeps ``default.sex``, ``.conv`` and ``.nnw``."""

_KEPT_KEYS = ("EXTNAME", "CCDNAME", "IMAGEID", "EXPNUM", "GAIN", "RDNOISE")
_EXPOSURE_KEYS = ("EXPNUM", "EXPTIME", "FILTER", "DATE-OBS", "AIRMASS", "OBJECT")


def processed_exposure(path: str | os.PathLike, sky: str = "kept") -> fits.HDUList:
    """The exposure as a processed MEF: float32 CCDs, bias pedestal removed, optionally the sky.

    Parameters
    ----------
    path : str or os.PathLike
        A raw exposure (as the simulator writes, or any MEF :func:`read_ccd` reads).
    sky : {"kept", "subtracted"}
        ``subtracted`` removes each CCD's median, as sky-subtracted archive products do.
        (:func:`catalog_archive` also takes ``mixed``: half the exposures each way.)
    """
    if sky not in ("kept", "subtracted"):
        raise ValueError(f"sky must be 'kept' or 'subtracted', got {sky!r}")
    with fits.open(path) as hdul:
        primary = hdul[0].header.copy()
        heads = [h.header.copy() for h in hdul[1:]]
    out = [fits.PrimaryHDU(header=primary)]
    for i, head in enumerate(heads):
        data = read_ccd(path, i).data.astype(np.float32)
        bias = float(head.get("BIASLVL", 0.0))
        data -= np.float32(bias)
        if sky == "subtracted":
            data -= np.float32(np.nanmedian(data))
        h = fits.Header()
        for key in _KEPT_KEYS:
            if key in head:
                h[key] = head[key]
        for key in _EXPOSURE_KEYS:
            if key in primary:
                h[key] = primary[key]
        if "SATURATE" in head:
            h["SATURATE"] = float(head["SATURATE"]) - bias
        out.append(fits.ImageHDU(data, header=h))
    return fits.HDUList(out)


def sextract_exposure(
    path: str | os.PathLike, catalog: str | os.PathLike, sky: str = "kept", binary: str = ""
) -> Path:
    """Write the FITS_LDAC catalog of one exposure (atomically: a crash leaves no half file).

    SExtractor runs once on the whole processed MEF with ``default.sex`` as shipped; only the
    catalog name and type, the parameter list (:data:`CATALOG_PARAMETERS`), the paths of the
    filter and network, and the memory stacks (trailed CCDs overflow the stock ones) are set.
    """
    binary = binary or shutil.which("source-extractor") or "source-extractor"
    catalog = Path(catalog)
    catalog.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="skygrade-archive-") as tmp:
        work = Path(tmp)
        processed_exposure(path, sky).writeto(work / "image.fits")
        (work / "cat.param").write_text("\n".join(CATALOG_PARAMETERS) + "\n")
        cmd = [
            binary, "image.fits", "-c", str(SHARE / "default.sex"),
            "-CATALOG_NAME", "cat.ldac", "-CATALOG_TYPE", "FITS_LDAC",
            "-PARAMETERS_NAME", "cat.param", "-FILTER_NAME", str(SHARE / "default.conv"),
            "-STARNNW_NAME", str(SHARE / "default.nnw"),
            "-MEMORY_OBJSTACK", "50000", "-MEMORY_PIXSTACK", "5000000",
            "-MEMORY_BUFSIZE", "1024", "-VERBOSE_TYPE", "QUIET", "-WRITE_XML", "N",
        ]  # fmt: skip
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
        if proc.returncode != 0 or not (work / "cat.ldac").exists():
            raise RuntimeError(
                f"{path}: {binary} failed (status {proc.returncode}): {proc.stderr.strip()[-2000:]}"
            )
        part = catalog.with_name(catalog.name + ".part")
        shutil.move(work / "cat.ldac", part)
        part.replace(catalog)
    return catalog


def sky_choice(exposure_id: str, sky: str) -> str:
    """``kept`` / ``subtracted`` for one exposure; ``mixed`` picks one by the exposure number's
    parity (half the archive each way, the same choice on every run)."""
    if sky != "mixed":
        return sky
    digits = "".join(c for c in str(exposure_id) if c.isdigit())
    return "subtracted" if digits and int(digits) % 2 else "kept"


def _one(job: tuple[str, str, str]) -> str:
    path, catalog, sky = job
    if not Path(catalog).exists():
        sextract_exposure(path, catalog, sky)
    return catalog


def catalog_archive(
    archive: str | os.PathLike,
    out: str | os.PathLike,
    sky: str = "kept",
    workers: int = 1,
    every: int = 1,
) -> list[Path]:
    """Catalogs of the labelled exposures of ``archive`` under ``out`` (existing ones kept).

    ``every`` keeps one exposure in ``every`` (in exposure-number order: spread over all nights).
    Returns the catalog paths, in the archive's exposure order.
    """
    from transforms.dataset import find_archive  # imports Beam: not needed by the helpers above

    if every < 1:
        raise ValueError(f"every must be >= 1, got {every!r}")
    out = Path(out)
    items = find_archive(archive)[::every]
    if not items:
        raise ValueError(f"{archive}: no labelled exposure")
    out.mkdir(parents=True, exist_ok=True)
    labels = "".join(f"{it.exposure_id},{it.label}\n" for it in items)
    (out / "labels.csv").write_text("exposure_id,label\n" + labels)
    jobs = [
        (it.path, str(out / it.night / f"{it.exposure_id}o.fits"), sky_choice(it.exposure_id, sky))
        for it in items
    ]
    progress = Progress(len(jobs), "catalogs")
    done = []
    with ProcessPoolExecutor(max(1, workers)) as pool:
        for catalog in pool.map(_one, jobs):
            done.append(Path(catalog))
            progress.update()
    progress.close()
    return done


def main(argv: list[str] | None = None) -> int:
    from streamer.cli import _not_beam_noise

    logging.getLogger().addFilter(_not_beam_noise)  # Beam's import warns about Google Cloud
    parser = argparse.ArgumentParser(
        prog="python -m streamer.archive_catalogs",
        description=(
            "Turn a labelled pixel archive into SExtractor FITS_LDAC catalogs made the way an "
            "archive makes them (stock default.sex, wrong SEEING_FWHM), to score a bundle in "
            "catalog mode on catalogs skygrade did not measure."
        ),
    )
    parser.add_argument("archive", help="labelled archive (exposures + labels.csv)")
    parser.add_argument("out", help="output directory (catalogs + labels.csv)")
    parser.add_argument(
        "--sky",
        choices=("kept", "subtracted", "mixed"),
        default="kept",
        help="keep the sky in the processed images, subtract each CCD's median, or do each to "
        "half of the exposures (mixed; by exposure number parity); default kept",
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)"
    )
    parser.add_argument(
        "--every",
        type=int,
        default=1,
        help="catalog one exposure in N, in exposure-number order (default 1: all)",
    )
    args = parser.parse_args(argv)
    try:
        done = catalog_archive(args.archive, args.out, args.sky, args.workers, args.every)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"archive_catalogs: error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(done)} catalogs in {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
