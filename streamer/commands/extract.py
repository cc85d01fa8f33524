"""``skygrade extract``: the sources of exposures into parquet feature tables."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from skygrade.ops.config import Config
from skygrade.streamer.cli_common import EXIT_OK, UsageError, add_backend_option, add_runner_options
from skygrade.streamer.pipelines import pipeline_options, run_extract

EXAMPLES = (
    "examples:\n"
    "  skygrade extract archive/2026-11-24/*.fits --out features\n"
    "  skygrade extract night/*.fits.fz --out features --backend sextractor --workers 2\n"
    "  skygrade extract exposure.fits --out features --ccd-workers 2\n"
    "  skygrade extract catalogs/*.ldac --out features --backend catalog"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare ``skygrade extract``'s arguments."""
    p.add_argument("files", nargs="+", type=Path, help="exposures (.fits, .fits.fz) or catalogs")
    p.add_argument("--out", type=Path, required=True, help="directory for <exposure>.parquet")
    add_backend_option(p, "extraction backend (default: extract.backend of the config, sep)")
    p.add_argument(
        "--ccd-workers",
        type=int,
        default=0,
        metavar="N",
        help="measure each exposure's CCDs in a pool of N processes started once for the run "
        "(cheaper than Beam worker processes for a few exposures; use with --workers 1); "
        "default 0: CCDs are spread by the Beam runner",
    )
    add_runner_options(p)


def command(args: argparse.Namespace, cfg: Config) -> int:
    """Run ``skygrade extract``; returns the exit code."""
    missing = [str(f) for f in args.files if not f.exists()]
    if missing:
        raise UsageError(f"no such file: {', '.join(missing)}")
    params = cfg.extract
    if args.backend:
        params = dataclasses.replace(params, backend=args.backend)
    if args.ccd_workers < 0:
        raise UsageError(f"--ccd-workers must be >= 0, got {args.ccd_workers}")
    options = pipeline_options(args.runner, args.workers)
    summary = run_extract(
        [str(f) for f in args.files],
        args.out,
        params.backend,
        params,
        options,
        ccd_workers=args.ccd_workers,
    )
    for q in summary["quarantined"]:
        print(
            f"quarantined {q.exposure_id}"
            + ("" if q.ccd is None else f" CCD {q.ccd}")
            + f": {q.reason}: {q.detail}"
        )
    print(
        f"features of {len(summary['written'])} exposure(s) in {args.out}/ "
        f"({len(summary['quarantined'])} quarantine record(s) in {args.out}/_quarantine/)"
    )
    return EXIT_OK
