"""The ``skygrade`` command line: the parser and the registry of commands.

Each command is a module of :mod:`skygrade.streamer.commands` named after it, imported by name only
when that command is parsed or run (Beam and torch take seconds to import), so ``skygrade --help``
stays fast. A command module has ``EXAMPLES`` (its ``--help`` epilog), ``add_arguments(parser)``
and ``command(args, cfg) -> int``; its one-line help is in :data:`COMMANDS` here.

Exit codes: 0 success, 1 failure while running, 2 usage or configuration error. They, the
usage error and the options the command modules share are in :mod:`skygrade.streamer.cli_common`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path
from types import ModuleType

from skygrade.ops.config import Config, load_config
from skygrade.ops.config_values import ConfigError
from skygrade.streamer.cli_common import EXIT_FAILURE, EXIT_USAGE, UsageError, not_beam_noise

log = logging.getLogger("skygrade")

COMMANDS: dict[str, str] = {
    "simulate": "render labelled MegaCam-like exposures: an archive, or a live telescope at a "
    "drop dir",
    "extract": "measure the sources of exposures into parquet feature tables (one per exposure)",
    "grade": "grade exposures once with a model bundle and print a table (rows go to parquet)",
    "watch": "the daemon: grade every exposure that lands in the drop directory, serve metrics",
    "train": "fit the SOM and the CNN on a labelled archive and write a versioned model bundle",
    "evaluate": "score a model bundle on a labelled archive (held-out split or independent "
    "archive) beside a threshold baseline; writes a markdown + JSON + PNG report",
    "backfill": "grade an archive of exposures as a Beam batch job (idempotent, resumable)",
    "report": "summarise a night of grades: grade counts, usable fraction, timeline (text and PNG)",
    "inspect": "draw an exposure's representative images and SOM hit counts (per CCD) into a PNG",
    "config": "show or check the configuration",
}
"""Every command, in the order of ``skygrade --help``, with its one-line help; the command
``NAME`` is the module ``skygrade.streamer.commands.NAME``."""


def command_module(name: str) -> ModuleType:
    """The module of the command ``name`` (imported now, on first use)."""
    if name not in COMMANDS:
        raise KeyError(f"no skygrade command {name!r}")
    return importlib.import_module(f"skygrade.streamer.commands.{name}")


def _setup_logging(args: argparse.Namespace, cfg: Config | None) -> None:
    level = cfg.logging.level if cfg is not None else "INFO"
    if args.verbose:
        level = "DEBUG"
    elif args.quiet:
        level = "WARNING"
    # apache_beam configures the root logger on import: force our format and level.
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    # Beam logs every worker start and bundle at INFO, relays worker start-up warnings and
    # warns about Google Cloud clients we do not use: keep all of it for -v.
    if not args.verbose:
        logging.getLogger("apache_beam").setLevel("WARNING")
        logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel("ERROR")
        for handler in logging.getLogger().handlers:
            handler.addFilter(not_beam_noise)


def _command_name(argv: list[str]) -> str:
    """The subcommand in ``argv`` (the first word after the global options), or ""."""
    words = iter(argv)
    for word in words:
        if word == "--config":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return ""


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The top-level parser with every implemented subcommand.

    Only the subcommand named in ``argv`` gets its arguments (all of them when ``argv`` is
    None), so ``skygrade --help`` and light commands do not import Beam and torch.
    """
    chosen = None if argv is None else _command_name(argv)
    parser = argparse.ArgumentParser(
        prog="skygrade",
        description="Grade the image quality of CFHT MegaCam exposures (SOM + CNN).",
        epilog="Run 'skygrade COMMAND --help' for a command's options and an example.",
    )
    parser.add_argument("--config", type=Path, default=None, help="YAML configuration file")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if chosen is None or name == chosen:
            module = command_module(name)
            p.epilog = module.EXAMPLES
            module.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``skygrade`` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    logging.getLogger().addFilter(not_beam_noise)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        _setup_logging(args, None)
        print(f"skygrade: configuration error:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    _setup_logging(args, cfg)
    try:
        return command_module(args.command).command(args, cfg)
    except (UsageError, ConfigError) as exc:
        print(f"skygrade {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:  # the command failed: say what, keep the traceback for -v
        bundle = sys.modules.get("skygrade.models.bundle")  # a bad model bundle is a usage error
        if bundle is not None and isinstance(exc, bundle.BundleError):
            print(f"skygrade {args.command}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        log.debug("traceback", exc_info=True)
        print(f"skygrade {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
