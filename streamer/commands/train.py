"""``skygrade train``: fit the SOM and the CNN on a labelled archive into a model bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from skygrade.ops.config import Config
from skygrade.streamer.cli_common import EXIT_OK, UsageError, add_runner_options
from skygrade.streamer.pipelines import pipeline_options
from skygrade.streamer.training_job import run_train

EXAMPLES = (
    "examples:\n"
    "  skygrade simulate --out archive --nights 2026-10-01..2026-10-08 --exposures 30\n"
    "  skygrade train archive --out bundles/2026-11 --workers 2"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare ``skygrade train``'s arguments."""
    p.add_argument("archive", type=Path, help="labelled archive (exposures + labels.csv)")
    p.add_argument("--out", type=Path, required=True, help="model bundle directory to write")
    p.add_argument(
        "--work",
        type=Path,
        default=None,
        help="feature cache and shards (default: <out>.work; reused by a retrain)",
    )
    p.add_argument(
        "--catalogs",
        type=Path,
        default=None,
        help="a labelled archive of SExtractor catalogs of some of the same exposures (e.g. "
        "made by python -m skygrade.streamer.archive_catalogs): trained on beside the pixels, so "
        "that "
        "catalog mode knows SExtractor's measurements; each catalog follows its exposure's "
        "side of the split",
    )
    add_runner_options(p)


def command(args: argparse.Namespace, cfg: Config) -> int:
    """Run ``skygrade train``; returns the exit code."""
    if not args.archive.is_dir():
        raise UsageError(f"archive {args.archive} is not a directory")
    if args.catalogs is not None and not args.catalogs.is_dir():
        raise UsageError(f"--catalogs {args.catalogs} is not a directory")
    summary = run_train(
        args.archive,
        args.out,
        cfg,
        pipeline_options(args.runner, args.workers),
        args.work,
        progress=print,
        catalogs=args.catalogs,
    )
    print(f"model bundle: {summary['bundle']}")
    return EXIT_OK
