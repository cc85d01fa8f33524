"""``skygrade watch``: the daemon, grading every exposure that lands in the drop directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from skygrade.ops.config import Config
from skygrade.ops.config_values import ConfigError
from skygrade.streamer.cli_common import EXIT_OK, UsageError, add_bundle_option, bundle_from_args
from skygrade.streamer.daemon import Daemon

EXAMPLES = (
    "examples:\n"
    "  skygrade watch --drop /data/drop --out /data/grades\n"
    "  skygrade --config /etc/skygrade/skygrade.yaml watch --drop /data/drop --out /data/grades"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare ``skygrade watch``'s arguments."""
    p.add_argument("--drop", type=Path, required=True, help="the data-drop directory to watch")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="grades dataset + ledger (exposures/, ccds/, ledger.sqlite)",
    )
    add_bundle_option(p)


def command(args: argparse.Namespace, cfg: Config) -> int:
    """Run the daemon until it is stopped; returns the exit code."""
    if not args.drop.is_dir():
        raise UsageError(f"--drop {args.drop} is not a directory")
    try:
        Daemon(args.drop, args.out, bundle_from_args(args), cfg).run_forever()
    except ConfigError as exc:  # a setting refused at start (metrics.port in use): name the file
        if exc.source is None and args.config is not None:
            raise ConfigError(exc.problems, str(args.config)) from exc
        raise
    return EXIT_OK
