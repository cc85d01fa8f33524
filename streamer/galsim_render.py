"""An evaluation-only MegaCam renderer built on GalSim (issue 20, item 2).

This module draws labelled raw exposures with code that shares nothing with the simulator
(:mod:`skygrade.streamer.sky_render` and the other ``sky_*`` modules): other PSF models (GalSim
``Moffat`` with beta 2-5 or ``Kolmogorov``, optionally convolved with an ``OpticalPSF`` whose
defocus, astigmatism and coma vary over the focal plane), other galaxy profiles
(``Exponential``, ``DeVaucouleurs``, ``Sersic`` and bulge + disk sums), other trails,
backgrounds and detector effects. Its exposures measure how the grader transfers to skies it
never saw; **never train on them or choose features with them.**

The file format is the one the grader reads (:mod:`skygrade.transforms.exposure`): an empty PRIMARY
HDU with ``EXPNUM``, ``EXPTIME``, ``DATE-OBS``, ``FILTER``, ``OBJECT``, ``AIRMASS``, ``NEXTEND`` and
one uint16 image extension per CCD (stored as int16 with ``BZERO = 32768``) with ``EXTNAME`` /
``CCDNAME``, ``GAIN``, ``RDNOISE`` and ``SATURATE``. An archive is
``<out>/<YYYY-MM-DD>/<EXPNUM>o.fits`` plus ``<out>/labels.csv`` (``exposure_id,label``), so
``skygrade evaluate <out>`` reads it unchanged. Truth parameters go to ``GS*`` header keywords.

What each exposure looks like is drawn first, as an
:class:`~skygrade.streamer.galsim_spec.ExposureSpec` (:mod:`skygrade.streamer.galsim_spec`); the
pixels of each CCD are drawn from it by :mod:`skygrade.streamer.galsim_ccd`. Every random step is
seeded from ``(seed, night, exposure, CCD, stream)``: the same arguments give the same pixels.
Usage::

    python -m skygrade.streamer.galsim_render --out /tmp/gs --exposures 2 --nights 2025-01-10 --seed
    7
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import galsim
from astropy.io import fits

from skygrade.models.classes import CLASSES
from skygrade.ops.files import atomic_write_bytes, atomic_write_text
from skygrade.streamer.galsim_ccd import render_ccd
from skygrade.streamer.galsim_spec import (
    FULL_N_CCD,
    PIXEL_SCALE,
    ExposureSpec,
    Mosaic,
    plan_archive,
)

log = logging.getLogger(__name__)

__all__ = ["main", "render_exposure", "write_archive"]


# --------------------------------------------------------------------------------------------
# Exposures and archives
# --------------------------------------------------------------------------------------------
def _isot(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 100_000}"


def _primary_header(spec: ExposureSpec, mosaic: Mosaic) -> fits.Header:
    h = fits.Header()
    h["INSTRUME"] = ("MegaPrime", "GalSim rendering (evaluation only)")
    h["TELESCOP"] = "CFHT 3.6m"
    h["OBSTYPE"] = "OBJECT"
    h["EXPNUM"] = (spec.expnum, "exposure number")
    h["OBJECT"] = spec.object
    h["FILTER"] = spec.filter
    h["EXPTIME"] = (spec.exptime, "exposure time [s]")
    h["DATE-OBS"] = (_isot(spec.date_obs), "start of exposure, UTC")
    h["AIRMASS"] = round(spec.airmass, 3)
    h["RA"] = round(spec.ra, 5)
    h["DEC"] = round(spec.dec, 5)
    h["PIXSCAL"] = (PIXEL_SCALE, "arcsec per pixel")
    h["NEXTEND"] = (mosaic.n_ccd, "number of image extensions")
    h["GSRENDER"] = (f"galsim {galsim.__version__}", "renderer")
    h["GSCLASS"] = (spec.label, "truth: image-quality class")
    h["GSSEED"] = (spec.seed, "truth: seed")
    h["GSPSF"] = (spec.psf_family, "truth: atmospheric PSF family")
    h["GSBETA"] = (round(spec.beta, 3), "truth: Moffat beta")
    h["GSFWHM"] = (round(spec.fwhm, 4), "truth: FWHM at field centre [arcsec]")
    h["GSOPTICS"] = (bool(spec.optics), "truth: OpticalPSF convolved")
    h["GSTRMODE"] = (spec.trail_mode, "truth: tracking error model")
    h["GSTRAIL"] = (round(spec.trail_length, 3), "truth: trail length [arcsec]")
    h["GSTRANG"] = (round(spec.trail_angle, 3), "truth: trail direction [deg, from +x]")
    h["GSSKY"] = (round(spec.sky_factor, 4), "truth: sky factor vs dark sky")
    h["GSBGP"] = (",".join(spec.bgp_modes) or "none", "truth: background problems")
    h["GSPART"] = (bool(spec.bgp_params.get("partial")), "truth: BGP on part of the field")
    h["GSSTARD"] = (round(spec.star_density, 3), "truth: stellar density factor")
    return h


def render_exposure(
    spec: ExposureSpec, mosaic: Mosaic, progress: Callable[[int], None] | None = None
) -> fits.HDUList:
    """Render an exposure as a MegaCam-like MEF (PRIMARY + one uint16 HDU per CCD)."""
    hdus: list = [fits.PrimaryHDU(header=_primary_header(spec, mosaic))]
    for ccd in range(mosaic.n_ccd):
        data, meta = render_ccd(spec, mosaic, ccd)
        name = f"ccd{ccd:02d}"
        hdr = fits.Header()
        hdr["EXTNAME"] = name
        hdr["CCDNAME"] = name
        hdr["EXPNUM"] = spec.expnum
        hdr["GAIN"] = (meta["gain"], "e-/ADU")
        hdr["RDNOISE"] = (meta["rdnoise"], "read noise [e-]")
        hdr["SATURATE"] = (meta["saturate"], "saturation level [ADU]")
        hdr["GSBIAS"] = (meta["bias"], "truth: bias [ADU]")
        hdr["GSNSTAR"] = (meta["n_star"], "truth: stars drawn")
        hdr["GSNGAL"] = (meta["n_gal"], "truth: galaxies drawn")
        hdr["GSMAGLIM"] = (meta["mag_lim"], "truth: faintest magnitude drawn")
        hdr["GSDEAD"] = (meta["dead"], "truth: dead CCD")
        hdus.append(fits.ImageHDU(data=data, header=hdr))
        if progress is not None:
            progress(ccd)
    return fits.HDUList(hdus)


def _merge_labels(path: Path, new: Mapping[str, str]) -> None:
    rows: dict[str, str] = {}
    if path.exists():
        with path.open(newline="") as fh:
            rows = {r["exposure_id"]: r["label"] for r in csv.DictReader(fh) if r["exposure_id"]}
    rows.update(new)
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(["exposure_id", "label"])
    for eid in sorted(rows, key=lambda e: (not e.isdigit(), int(e) if e.isdigit() else 0, e)):
        wr.writerow([eid, rows[eid]])
    atomic_write_text(path, buf.getvalue())


def write_archive(
    out: str | os.PathLike,
    nights: Sequence[str],
    per_class: int,
    mosaic: Mosaic,
    seed: int,
    classes: Sequence[str] = CLASSES,
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write ``<out>/<night>/<expnum>o.fits`` and merge ``<out>/labels.csv``."""
    out = Path(out)
    specs = plan_archive(nights, per_class, classes, seed, mosaic.n_ccd)
    paths = []
    for i, spec in enumerate(specs, start=1):
        t0 = time.perf_counter()
        hdul = render_exposure(spec, mosaic)
        buf = io.BytesIO()
        hdul.writeto(buf)
        path = out / spec.night / spec.filename
        atomic_write_bytes(path, buf.getvalue())
        _merge_labels(out / "labels.csv", {spec.exposure_id: spec.label})
        paths.append(path)
        dt = time.perf_counter() - t0
        line = (
            f"[{i}/{len(specs)}] {path} {spec.label} {spec.filter} {spec.exptime:.0f}s "
            f'fwhm={spec.fwhm:.2f}" trail={spec.trail_mode}:{spec.trail_length:.1f}" '
            f"bgp={','.join(spec.bgp_modes) or '-'} {mosaic.n_ccd} CCDs in {dt:.1f}s"
        )
        log.info("%s", line)
        if progress is not None:
            progress(line)
    return paths


def _parse_nights(text: str) -> list[str]:
    if text.isdigit():
        d0 = date(2025, 1, 10)
        return [(d0 + timedelta(days=i)).isoformat() for i in range(int(text))]
    nights = [s.strip() for s in text.split(",") if s.strip()]
    for n in nights:
        date.fromisoformat(n)
    return nights


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m skygrade.streamer.galsim_render --out DIR [options]``."""
    p = argparse.ArgumentParser(
        prog="python -m skygrade.streamer.galsim_render",
        description="Render an evaluation-only archive of MegaCam exposures with GalSim.",
    )
    p.add_argument("--out", required=True, type=Path, help="archive root")
    p.add_argument("--exposures", type=int, default=1, help="exposures per class per night")
    p.add_argument(
        "--nights", default="1", help="N nights from 2025-01-10, or YYYY-MM-DD[,YYYY-MM-DD...]"
    )
    p.add_argument("--classes", default=",".join(CLASSES), help="comma-separated classes")
    p.add_argument("--n-ccd", type=int, default=FULL_N_CCD, help="CCDs per exposure (36)")
    p.add_argument("--ccd-shape", default="2048x4612", help="CCD WIDTHxHEIGHT (2048x4612)")
    p.add_argument("--seed", type=int, default=2020, help="random seed")
    args = p.parse_args(argv)
    try:
        width, height = (int(s) for s in args.ccd_shape.lower().split("x"))
        mosaic = Mosaic(args.n_ccd, width, height)
        nights = _parse_nights(args.nights)
        classes = [c.strip() for c in args.classes.split(",") if c.strip()]
        bad = sorted(set(classes) - set(CLASSES))
        if bad or not classes:
            raise ValueError(f"unknown classes {bad}; valid: {', '.join(CLASSES)}")
        if args.exposures < 1:
            raise ValueError("--exposures must be >= 1")
    except ValueError as err:
        p.error(str(err))
    t0 = time.perf_counter()
    paths = write_archive(
        args.out,
        nights,
        args.exposures,
        mosaic,
        args.seed,
        classes,
        progress=lambda line: print(line, flush=True),
    )
    print(f"wrote {len(paths)} exposures to {args.out} in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
