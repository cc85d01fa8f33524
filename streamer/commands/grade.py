"""``skygrade grade``: grade exposures once with a model bundle and print a table."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from skygrade.ops.config import Config, with_backend
from skygrade.ops.config_values import ConfigError
from skygrade.streamer.cli_common import (
    EXIT_OK,
    UsageError,
    add_backend_option,
    add_bundle_option,
    add_runner_options,
    bundle_from_args,
)
from skygrade.streamer.pipelines import pipeline_options, run_grade

EXAMPLES = (
    "examples:\n"
    "  skygrade grade /data/drop/2026-11-24/2817001o.fits --out grades\n"
    "  skygrade grade archive/*/*.fits --out grades --bundle bundles/2026-11 --workers 2"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare ``skygrade grade``'s arguments."""
    p.add_argument("files", nargs="+", type=Path, help="exposures (.fits, .fits.fz) or catalogs")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="grades dataset (exposures/ and ccds/ partitioned by night)",
    )
    add_backend_option(p, "extraction backend (default: extract.backend of the config)")
    p.add_argument(
        "--night",
        default=None,
        help="YYYY-MM-DD night of catalogs that carry no DATE-OBS and sit in no YYYY-MM-DD "
        "folder (default: extract.catalog_night, else 'unknown')",
    )
    add_bundle_option(p)
    add_runner_options(p)


def format_grade_table(rows: list[dict]) -> str:
    """A fixed-width table of exposure rows for the terminal."""
    lines = [f"{'exposure':>10}  {'night':10}  {'grade':8}  {'conf':>5}  {'CCDs':>5}  reason"]
    for r in rows:
        ccds = f"{r['n_ccd_graded']}/{r['n_ccd']}"
        grade = r["grade"] or "-"
        reason = (r["reason"] or "")[:70]
        lines.append(
            f"{r['exposure_id']:>10}  {r['night']:10}  {grade:8}  {r['confidence']:5.2f}  "
            f"{ccds:>5}  {reason}"
        )
    return "\n".join(lines)


def command(args: argparse.Namespace, cfg: Config) -> int:
    """Run ``skygrade grade``; returns the exit code."""
    missing = [str(f) for f in args.files if not f.exists()]
    if missing:
        raise UsageError(f"no such file: {', '.join(missing)}")
    bundle = bundle_from_args(args)
    cfg = with_backend(cfg, args.backend)
    if args.night is not None:
        try:
            extract = dataclasses.replace(cfg.extract, catalog_night=args.night)
        except ConfigError as exc:
            raise UsageError(f"--night: {exc}") from None
        cfg = dataclasses.replace(cfg, extract=extract)
    rows = run_grade(
        [str(f) for f in args.files],
        args.out,
        bundle,
        cfg,
        pipeline_options(args.runner, args.workers),
    )
    print(format_grade_table(rows))
    graded = sum(r["status"] == "graded" for r in rows)
    print(
        f"{graded} graded, {len(rows) - graded} quarantined; rows in {args.out}/exposures/ "
        f"and {args.out}/ccds/ (model {rows[0]['model_version'] if rows else '-'})"
    )
    return EXIT_OK
