"""``skygrade inspect``: an exposure's representative images and SOM hit counts in a PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

from skygrade.models.bundle import DEFAULT_BUNDLE
from skygrade.ops.config import Config
from skygrade.streamer.cli_common import UsageError, add_bundle_option
from skygrade.streamer.inspect import STRETCHES, InspectError, inspect_exposure

EXAMPLES = (
    "examples:\n"
    "  skygrade inspect archive/2026-11-24/2817001o.fits --png 2817001.png\n"
    "  skygrade inspect 2817001o.fits --ccd 12 --png ccd12.png --bundle bundles/2026-11"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``skygrade inspect`` on ``parser``."""
    parser.add_argument("file", type=Path, help="a MegaCam exposure (.fits or .fits.fz)")
    parser.add_argument(
        "--ccd",
        type=int,
        default=None,
        metavar="N",
        help="draw only CCD N (0-based index); default: every CCD, in a focal-plane grid",
    )
    parser.add_argument("--png", type=Path, required=True, help="the PNG file to write")
    add_bundle_option(parser)
    parser.add_argument(
        "--stretch",
        choices=STRETCHES,
        default="asinh",
        help="grey scale of the tiles over the fixed range -0.2..1.5 (default: asinh)",
    )


def command(args: argparse.Namespace, cfg: Config) -> int:
    """Run ``skygrade inspect``; returns the exit code (0, or 2 for a bad request)."""
    if not args.file.exists():
        raise UsageError(f"no such file: {args.file}")
    bundle = args.bundle or DEFAULT_BUNDLE
    try:
        out = inspect_exposure(args.file, bundle, args.png, args.ccd, cfg, args.stretch)
    except InspectError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {out}")
    return 0
