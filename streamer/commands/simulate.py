"""``skygrade simulate``: labelled MegaCam-like exposures, as an archive or a live telescope."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
from pathlib import Path

from skygrade.ops.config import Config
from skygrade.streamer import telescope
from skygrade.streamer.cli_common import EXIT_OK, UsageError, parse_nights, parse_shape
from skygrade.streamer.progress import Progress
from skygrade.streamer.sky_plan import resolve_geometry
from skygrade.transforms.exposure import observing_night

log = logging.getLogger("skygrade")

EXAMPLES = (
    "examples:\n"
    "  skygrade simulate --out archive --nights 2026-11-01..2026-11-03 --exposures 20\n"
    "  skygrade simulate --out small --geometry small --exposures 5 --seed 7\n"
    "  skygrade simulate --drop /data/drop --cadence 60 --transfer 10"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare ``skygrade simulate``'s arguments."""
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="write an archive of labelled exposures here")
    where.add_argument(
        "--drop", type=Path, help="act as the telescope: write exposures into this drop directory"
    )
    p.add_argument(
        "--nights",
        default=None,
        help="archive mode: nights as YYYY-MM-DD, a range A..B or a comma list (default: tonight)",
    )
    p.add_argument(
        "--exposures",
        type=int,
        default=None,
        help="exposures per night (archive) or in total (drop mode; default: until interrupted)",
    )
    p.add_argument(
        "--geometry",
        choices=("full", "small"),
        default=None,
        help="CCD layout preset: full = 36 x 2048x4612, small = 4 x 512x1152",
    )
    p.add_argument("--n-ccd", type=int, default=None, help="override the number of CCDs")
    p.add_argument("--ccd-shape", default=None, help="override the CCD size, WIDTHxHEIGHT")
    p.add_argument("--seed", type=int, default=None, help="random seed (same seed, same bytes)")
    p.add_argument(
        "--cadence", type=float, default=None, help="drop mode: seconds between exposures"
    )
    p.add_argument(
        "--transfer",
        type=float,
        default=None,
        help="drop mode: seconds over which each file is written progressively",
    )


def command(args: argparse.Namespace, cfg: Config) -> int:
    """Run ``skygrade simulate``; returns the exit code."""
    tc = cfg.telescope
    shape = parse_shape(args.ccd_shape) if args.ccd_shape else tc.ccd_shape
    n_ccd = args.n_ccd if args.n_ccd is not None else tc.n_ccd
    if n_ccd is not None and n_ccd < 1:
        raise UsageError(f"--n-ccd: must be >= 1, got {n_ccd}")
    if args.exposures is not None and args.exposures < 1:
        raise UsageError(f"--exposures: must be >= 1, got {args.exposures}")
    geometry = resolve_geometry(args.geometry or tc.geometry, n_ccd, shape)
    seed = tc.seed if args.seed is None else args.seed
    mix = dict(tc.class_mix)
    tonight = observing_night(dt.datetime.now(dt.UTC))

    if args.out is not None:
        nights = parse_nights(args.nights) if args.nights else [tonight]
        per_night = args.exposures or tc.exposures_per_night
        bar = Progress(len(nights) * per_night, "exposures")
        paths = telescope.simulate_archive(
            args.out,
            nights,
            per_night,
            geometry,
            seed,
            mix,
            progress=lambda done, total, path: bar.update(note=path.name),
            narrow_band=tc.narrow_band,
        )
        bar.close()
        print(
            f"wrote {len(paths)} exposures ({geometry.n_ccd} CCDs of "
            f"{geometry.width}x{geometry.height}) for {len(nights)} night(s) under {args.out}/, "
            f"labels in {args.out / 'labels.csv'}"
        )
        return EXIT_OK

    if args.nights and len(parse_nights(args.nights)) != 1:
        raise UsageError("--nights: drop mode writes one night; give a single date")
    night = parse_nights(args.nights)[0] if args.nights else tonight
    cadence = tc.cadence_s if args.cadence is None else args.cadence
    transfer = tc.transfer_s if args.transfer is None else args.transfer
    if cadence <= 0 or transfer < 0:
        raise UsageError("--cadence must be > 0 and --transfer >= 0")
    log.info(
        "telescope: writing into %s every %.1f s (transfer %.1f s); Ctrl-C to stop",
        args.drop,
        cadence,
        transfer,
    )
    try:
        paths = telescope.run_telescope(
            args.drop,
            args.exposures,
            geometry,
            seed,
            mix,
            cadence,
            transfer,
            tc.transfer_chunks,
            night,
            progress=lambda done, total, path: log.info("exposure %d: %s", done, path),
            narrow_band=tc.narrow_band,
        )
    except KeyboardInterrupt:
        print("telescope stopped")
        return EXIT_OK
    print(f"wrote {len(paths)} exposures into {args.drop}/")
    return EXIT_OK
