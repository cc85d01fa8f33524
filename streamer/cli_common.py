"""What the ``skygrade`` commands share: exit codes, the usage error, option parsers and helpers.

:mod:`skygrade.streamer.cli` (the parser and the command registry) and the command modules it loads
when their command is used (:mod:`skygrade.streamer.commands`) import these from here, so no command
module imports the CLI that loads it. Nothing heavier than numpy (through the extraction
module's :data:`~skygrade.transforms.extract.BACKENDS`) is imported at module level: ``skygrade
--help`` imports this module.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
from pathlib import Path

from skygrade.transforms.extract import BACKENDS

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A command-line value that is wrong; reported with exit code 2."""


def parse_nights(text: str) -> list[str]:
    """Parse ``2026-11-01``, ``2026-11-01..2026-11-07`` or a comma list of either.

    Examples
    --------
    >>> parse_nights("2026-11-01..2026-11-03")
    ['2026-11-01', '2026-11-02', '2026-11-03']
    """
    nights: list[str] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, sep, last = part.partition("..")
        try:
            start = dt.date.fromisoformat(first)
            end = dt.date.fromisoformat(last) if sep else start
        except ValueError:
            raise UsageError(
                f"--nights: {part!r} is not a date or range (YYYY-MM-DD or YYYY-MM-DD..YYYY-MM-DD)"
            ) from None
        if end < start:
            raise UsageError(f"--nights: range {part!r} ends before it starts")
        nights += [
            (start + dt.timedelta(days=i)).isoformat() for i in range((end - start).days + 1)
        ]
    if not nights:
        raise UsageError("--nights: no night given")
    return sorted(set(nights))


def parse_shape(text: str) -> tuple[int, int]:
    """Parse ``WIDTHxHEIGHT`` (FITS NAXIS1 x NAXIS2), e.g. ``2048x4612``."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(
            f"--ccd-shape: expected WIDTHxHEIGHT like 2048x4612, got {text!r}"
        ) from None
    if width < 64 or height < 64:
        raise UsageError(f"--ccd-shape: each side must be >= 64 pixels, got {text!r}")
    return width, height


def add_runner_options(p: argparse.ArgumentParser) -> None:
    """``--workers`` and ``--runner``: the Beam runner of a batch command."""
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="local worker processes (Beam multi_processing); default 1",
    )
    p.add_argument(
        "--runner",
        default="FnApiRunner",
        help="Beam runner (FnApiRunner, DirectRunner, dask, FlinkRunner...; see "
        "docs/runners.md); default FnApiRunner",
    )


def add_backend_option(p: argparse.ArgumentParser, help: str) -> None:
    """``--backend``: one of the extraction module's
    :data:`~skygrade.transforms.extract.BACKENDS`."""
    p.add_argument("--backend", choices=tuple(BACKENDS), default=None, help=help)


def add_bundle_option(p: argparse.ArgumentParser) -> None:
    """``--bundle``: the model bundle directory."""
    p.add_argument(
        "--bundle",
        type=Path,
        default=None,
        help="model bundle directory (default: the shipped models/default)",
    )


def bundle_from_args(args: argparse.Namespace) -> Path:
    """The ``--bundle`` of ``args`` (default: the shipped bundle), its manifest read here."""
    # skygrade.models.bundle imports torch (seconds): only the commands that use a bundle pay for it
    from skygrade.models.bundle import DEFAULT_BUNDLE, read_manifest

    bundle = args.bundle or DEFAULT_BUNDLE
    read_manifest(bundle)  # a missing or mismatched bundle is a usage error, said up front
    return bundle


_BEAM_NOISE = (
    # Beam's import, about Google Cloud clients skygrade does not use.
    "apitools not found",
    # RunInference, on every model load and batch: Beam looks for `resource` only after an
    # import of scipy (which skygrade does not need) succeeded, and reports it missing.
    "Resource module is not available",
)


def not_beam_noise(record: logging.LogRecord) -> bool:
    """Logging filter: drop Beam warnings that say nothing about skygrade."""
    message = record.getMessage()
    return not any(text in message for text in _BEAM_NOISE)
